/* covattn: a bounded-memory attention cache.
 *
 * What an engine keeps per layer instead of an ever-growing KV cache: a fixed
 * budget of exact tokens (the first n_sinks tokens, the last `window` tokens
 * in a ring, and per KV head up to n_outliers keys that a Gaussian summary
 * would misrepresent) plus the covariance summary (covattn/covariance.h) of
 * every other token. Decode merges the exact part and the summary exactly in
 * log-sum-exp space (MATH.md section 4). Memory is fixed at creation however
 * long the context; until the first token is evicted, decode is exact
 * attention.
 *
 * A token leaving the window is offered to the outlier slots of each head:
 * the key's squared Mahalanobis distance under the running key covariance
 * (whitened with a Cholesky factor of the summary's C_kk, refreshed as the
 * summary grows) decides; when the slots are full the least outlying key
 * (the newcomer or a resident) is folded into the summary instead.
 *
 * Budgets that fall out of the knobs:
 *   window = n_sinks = n_outliers = 0   the pure covariance readout;
 *   COVATTN_CACHE_DROP_EVICTED           no summary: evicted tokens are
 *                                        dropped (StreamingLLM-style sinks
 *                                        + window baseline).
 *
 * Conventions are those of covattn.h. Concurrency: decode and serialize take
 * a const cache and may run at the same time on one cache; append, reset and
 * load need exclusive access. */
#ifndef COVATTN_CACHE_H_
#define COVATTN_CACHE_H_

#include "covattn/covariance.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct covattn_cache covattn_cache;

/* Flags of covattn_cache_config. */
#define COVATTN_CACHE_DROP_EVICTED 1u /* no summary: tokens leaving the budget are dropped */

typedef struct covattn_cache_config {
  size_t n_kv_heads;
  size_t head_dim;   /* 1 .. COVATTN_MAX_HEAD_DIM */
  uint32_t dtype;    /* covattn_dtype of the stored exact K and V */
  size_t n_sinks;    /* first tokens, always kept exact */
  size_t window;     /* most recent tokens kept exact */
  size_t n_outliers; /* outlier key slots per KV head */
  float forgetting;  /* summary forgetting factor, (0, 1]; ignored with DROP_EVICTED */
  uint32_t flags;
} covattn_cache_config;

/* Bytes a cache with this configuration needs (exact slots, summary, outlier
 * scoring, append workspace); a fixed formula documented in README.md. */
COVATTN_API covattn_status covattn_cache_size(const covattn_cache_config* config, size_t* bytes);

/* Creates a cache in caller memory (any alignment) or allocating once. */
COVATTN_API covattn_status covattn_cache_init(void* memory, size_t bytes,
                                              const covattn_cache_config* config,
                                              covattn_cache** cache);
COVATTN_API covattn_status covattn_cache_create(const covattn_cache_config* config,
                                                covattn_cache** cache);
/* Frees a created cache; does nothing for one made with init. NULL is fine. */
COVATTN_API void covattn_cache_destroy(covattn_cache* cache);

/* Empties the cache, keeping its configuration. */
COVATTN_API covattn_status covattn_cache_reset(covattn_cache* cache);

typedef struct covattn_cache_info {
  covattn_cache_config config;
  uint64_t n_tokens;      /* tokens appended since creation or reset */
  uint64_t n_summarized;  /* token rows folded into the summary, summed over KV heads */
  uint64_t n_dropped;     /* token rows dropped (DROP_EVICTED), summed over KV heads */
  size_t n_exact;         /* exact tokens held now, summed over KV heads */
  size_t bytes;           /* the memory the cache occupies */
} covattn_cache_info;

COVATTN_API covattn_status covattn_cache_info_get(const covattn_cache* cache,
                                                  covattn_cache_info* info);

/* Appends block->n_tokens tokens (K and V of every KV head, any supported
 * dtype and strides; n_heads and head_dim must match). Never fails for lack of
 * room: tokens beyond the budget are evicted into the summary (or dropped).
 * Long blocks (prefill) are processed in batches of 64 tokens: eviction,
 * outlier selection and the summary update each run once per batch and KV
 * head, not once per token. A block containing NaN or infinity, a magnitude
 * above 2^40, or, for a cache storing f16, a value that f16 cannot hold
 * (|x| >= 65520) is refused with COVATTN_ERR_NONFINITE before anything
 * changes. */
COVATTN_API covattn_status covattn_cache_append(covattn_cache* cache,
                                                const covattn_kv_cache* block);

/* Optional per-query diagnostics of covattn_cache_decode, [n_q_heads] each. */
typedef struct covattn_cache_diagnostics {
  float* summary_share; /* share of the softmax mass the summary carries */
  float* summary_ess;   /* effective sample size of the summary, n e^(-a^T C_kk a) */
  float* log_z;         /* log of the total softmax normaliser */
} covattn_cache_diagnostics;

/* Bytes of scratch covattn_cache_decode needs for this cache and n_q_heads. */
COVATTN_API covattn_status covattn_cache_decode_scratch_size(const covattn_cache* cache,
                                                             size_t n_q_heads, size_t* bytes);

/* Decode for n_q_heads queries (a multiple of n_kv_heads), q and out
 * [n_q_heads][head_dim] contiguous, scale 0 for 1/sqrt(head_dim). The exact
 * part (sinks, window, outliers) runs the exact attention kernel, the summary
 * part the covariance readout and its log-normaliser; the two merge exactly.
 * diagnostics may be NULL, as may any of its arrays. An empty cache gives
 * zeros and COVATTN_FULLY_MASKED. */
COVATTN_API covattn_status covattn_cache_decode(const covattn_cache* cache, const float* q,
                                                size_t n_q_heads, float scale, float* out,
                                                const covattn_cache_diagnostics* diagnostics,
                                                void* scratch, size_t scratch_bytes);

/* Serialization of the whole cache, with the header, checksum and
 * refuse-before-write rules of covattn_cov_state_load. The destination must
 * have the same configuration. */
COVATTN_API covattn_status covattn_cache_serialized_size(const covattn_cache* cache,
                                                         size_t* bytes);
COVATTN_API covattn_status covattn_cache_serialize(const covattn_cache* cache, void* buffer,
                                                   size_t capacity, size_t* written);
COVATTN_API covattn_status covattn_cache_load(covattn_cache* cache, const void* buffer,
                                              size_t size);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* COVATTN_CACHE_H_ */
