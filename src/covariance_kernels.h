// What the C API of the covariance state (covariance.cc) hands to the
// per-target kernels (covariance_kernels.cc and covariance_kernels-inl.h),
// after validating it.
#ifndef COVATTN_SRC_COVARIANCE_KERNELS_H_
#define COVATTN_SRC_COVARIANCE_KERNELS_H_

#include <cstddef>
#include <cstdint>

#include "covariance_state.h"
#include "covattn/covattn.h"

namespace covattn {
namespace detail {

// A block of tokens for every head of a state (layout as covattn_kv_cache).
struct CovBlock {
  uint32_t dtype;
  const void* k;
  const void* v;
  size_t n_tokens;
  size_t k_token_stride, k_head_stride, v_token_stride, v_head_stride;
  const covattn_int8_scales* int8_scales;  // COVATTN_INT8 only, else nullptr
};

struct CovReadoutProblem {
  const float* q;  // [n_q_heads][dim]
  size_t n_q_heads;
  float scale;
  float* out;    // [n_q_heads][dim]
  float* log_z;  // [n_q_heads] or nullptr
  float* ess;    // [n_q_heads] or nullptr
  // The bounded cache's ring correction (MATH.md section 6): queries for the
  // value part ([n_q_heads][dim], scaled like q) when they differ from q, or
  // nullptr; and a^T C_kk a per query, or nullptr.
  const float* value_q;
  double* sigma2;
  // The KV heads read, the state's [first_head, first_head + n_heads); the
  // queries are theirs (n_q_heads a multiple of n_heads).
  size_t first_head, n_heads;
};

// True when every element of the block is finite and at most
// kMaxInputMagnitude in magnitude; with f16_storage (a bounded cache that
// stores f16) also when every element rounds to a finite f16.
bool CovBlockInRange(const CovBlock& block, size_t n_heads, size_t dim, bool f16_storage = false);

// Absorbs a validated, in-range block into every head (MATH.md section 3).
// work: the caller's scratch, 64-byte aligned, WorkspaceBytes(dim) bytes.
void CovUpdate(covattn_cov_state* state, const CovBlock& block, float* work);

// Only heads [first_head, first_head + n_heads) absorb the block, whose
// head 0 is the state's head first_head: for states with
// covattn_cov_state::kIndependentHeads (the bounded cache folds different
// tokens into different heads). The state's token count is not changed.
void CovUpdateHeads(covattn_cov_state* state, const CovBlock& block, size_t first_head,
                    size_t n_heads, float* work);

// CovUpdateHeads for one element type of the block (covariance_kernels_
// {f32,f16,bf16,int8}.cc, each compiled for every target).
void CovUpdateHeadsF32(covattn_cov_state* state, const CovBlock& block, size_t first_head,
                       size_t n_heads, float* work);
void CovUpdateHeadsF16(covattn_cov_state* state, const CovBlock& block, size_t first_head,
                       size_t n_heads, float* work);
void CovUpdateHeadsBF16(covattn_cov_state* state, const CovBlock& block, size_t first_head,
                        size_t n_heads, float* work);
void CovUpdateHeadsInt8(covattn_cov_state* state, const CovBlock& block, size_t first_head,
                        size_t n_heads, float* work);

// into <- into followed by other (same shape and forgetting; may be the same
// object); work as for CovUpdate.
void CovMerge(covattn_cov_state* into, const covattn_cov_state* other, float* work);

// The readout of a non-empty state; false if a result is not finite.
bool CovReadout(const covattn_cov_state* state, const CovReadoutProblem& problem);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_COVARIANCE_KERNELS_H_
