/* covattn: the online covariance state and the covariance readout.
 *
 * Per KV head the state holds the total weight W, the means mu_k, mu_v and
 * the centred co-moments M_kk (symmetric) and M_vk of the keys and values it
 * has seen (MATH.md sections 2 and 3). Its memory is fixed by head_dim,
 * however many tokens it absorbs, and a readout costs O(n_q * d^2):
 *
 *     out   = mu_v + C_vk a,                   a = scale * q, C = M / W
 *     log Z = log W + a.mu_k + 1/2 a^T C_kk a  (the softmax normaliser)
 *     ess   = W exp(-a^T C_kk a)               (effective sample size)
 *
 * Conventions are those of covattn.h: statuses, no printing, validation
 * before any write, and a failed call leaves the state exactly as it was.
 * Concurrency: calls that take a const state (readout, export, serialize)
 * may run at the same time on one state; anything that modifies a state
 * needs exclusive access to it. Work memory is the caller's scratch, so a
 * state is only its statistics, and a merge may read `other` while other
 * threads read it too. */
#ifndef COVATTN_COVARIANCE_H_
#define COVATTN_COVARIANCE_H_

#include "covattn/covattn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct covattn_cov_state covattn_cov_state;

/* Persistent bytes of a state of n_heads KV heads of head_dim: the
 * statistics and alignment slack, nothing else. With R(x) = x rounded up to a
 * multiple of 64: 191 + n_heads (R(8 (1 + 2 head_dim)) + R(8 head_dim^2 + 256)),
 * 130 KiB per head at head_dim 128 (docs/covariance.md). */
COVATTN_API covattn_status covattn_cov_state_size(size_t n_heads, size_t head_dim, size_t* bytes);

/* Bytes of scratch that update and merge need for states of head_dim (the
 * block update's workspace, about 1 KiB * head_dim + 68 KiB; any alignment).
 * One buffer serves every state of that head_dim, one per thread. Its
 * contents do not matter between calls. */
COVATTN_API covattn_status covattn_cov_state_scratch_size(size_t head_dim, size_t* bytes);

/* Creates a state in caller memory of at least covattn_cov_state_size()
 * bytes (any alignment). The memory must outlive the state; nothing is
 * allocated. forgetting is lambda in (0, 1]: 1 is a plain average, below 1
 * older tokens weigh lambda^age. */
COVATTN_API covattn_status covattn_cov_state_init(void* memory, size_t bytes, size_t n_heads,
                                                  size_t head_dim, float forgetting,
                                                  covattn_cov_state** state);

/* Same, allocating the memory once; release with covattn_cov_state_destroy. */
COVATTN_API covattn_status covattn_cov_state_create(size_t n_heads, size_t head_dim,
                                                    float forgetting, covattn_cov_state** state);

/* Frees a state from covattn_cov_state_create; for one made with
 * covattn_cov_state_init it does nothing (the caller owns the memory).
 * NULL is allowed. */
COVATTN_API void covattn_cov_state_destroy(covattn_cov_state* state);

/* Forgets every token (weight 0), keeping shape and forgetting factor. */
COVATTN_API covattn_status covattn_cov_state_reset(covattn_cov_state* state);

typedef struct covattn_cov_info {
  size_t n_heads;
  size_t head_dim;
  float forgetting;
  uint64_t n_tokens; /* tokens absorbed since creation or reset */
} covattn_cov_info;

COVATTN_API covattn_status covattn_cov_state_info(const covattn_cov_state* state,
                                                  covattn_cov_info* info);

/* Absorbs block->n_tokens tokens of K and V (any dtype and strides, as for
 * attention, COVATTN_INT8 with its scales too: each vector is its scale
 * times its elements; n_heads and head_dim must match the state, else
 * COVATTN_ERR_SHAPE_MISMATCH) into every head, in token order. Blocks are
 * centred on their own mean, their co-moments formed by a SIMD GEMM-style
 * kernel and merged in (Chan et al.); a single token takes a rank-1 path.
 * A block containing NaN, infinity or a value of magnitude above 2^40 (whose
 * square could overflow the f32 co-moments; for int8, a scale that is not
 * finite or above 2^33) is refused with
 * COVATTN_ERR_NONFINITE and the state is unchanged. K and V may be the same
 * memory; neither may overlap the state's. scratch holds at least
 * covattn_cov_state_scratch_size(head_dim) bytes (else, or when NULL,
 * COVATTN_ERR_SCRATCH_TOO_SMALL) and overlaps neither the state nor the
 * block (COVATTN_ERR_ALIASING). */
COVATTN_API covattn_status covattn_cov_state_update(covattn_cov_state* state,
                                                    const covattn_kv_cache* block, void* scratch,
                                                    size_t scratch_bytes);

/* into <- the state of both token streams, as if `other`'s tokens had come
 * after `into`'s (with forgetting, `into`'s weight is first decayed by
 * lambda^(tokens in other)). Shapes and forgetting factors must match.
 * Scratch as for update, overlapping neither state. */
COVATTN_API covattn_status covattn_cov_state_merge(covattn_cov_state* into,
                                                   const covattn_cov_state* other, void* scratch,
                                                   size_t scratch_bytes);

/* The covariance readout for n_q_heads query heads (a multiple of the
 * state's n_heads; GQA groups share one KV head, read once per group). q and
 * out are [n_q_heads][head_dim] contiguous; scale 0 selects 1/sqrt(head_dim).
 * log_z and ess are optional ([n_q_heads] each, NULL to skip). An empty state
 * gives COVATTN_ERR_EMPTY_STATE and writes nothing. */
COVATTN_API covattn_status covattn_cov_readout(const covattn_cov_state* state, const float* q,
                                               size_t n_q_heads, float scale, float* out,
                                               float* log_z, float* ess);

/* Copies one head's statistics out: weight W, means [head_dim] each, and the
 * covariances C_kk, C_vk = M / W as full [head_dim][head_dim] row-major
 * matrices (C_vk[i][j] = Cov(v_i, k_j)). Any output may be NULL. A head
 * beyond the state's gives COVATTN_ERR_INVALID_RANGE, an empty state
 * COVATTN_ERR_EMPTY_STATE (nothing written). */
COVATTN_API covattn_status covattn_cov_state_export(const covattn_cov_state* state, size_t head,
                                                    double* weight, float* mean_k, float* mean_v,
                                                    float* cov_kk, float* cov_vk);

/* Serialization: a versioned little-endian header (magic, format version,
 * n_heads, head_dim, forgetting, token count, payload element count), the
 * payload, and a checksum. Loading checks everything before writing: any
 * truncated, foreign, other-version, mis-sized, corrupt or non-finite input
 * returns its status and leaves `state` untouched. The destination must have
 * the same n_heads, head_dim and forgetting factor. */
/* `written` may be NULL. The format is specified in docs/covariance.md. */
COVATTN_API covattn_status covattn_cov_state_serialized_size(const covattn_cov_state* state,
                                                             size_t* bytes);
COVATTN_API covattn_status covattn_cov_state_serialize(const covattn_cov_state* state, void* buffer,
                                                       size_t capacity, size_t* written);
COVATTN_API covattn_status covattn_cov_state_load(covattn_cov_state* state, const void* buffer,
                                                  size_t size);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* COVATTN_COVARIANCE_H_ */
