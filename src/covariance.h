// The covariance state's operations behind its C entry points
// (include/covattn/covariance.h), for the library's own callers (the bounded
// cache's summary): the entry points in covariance.cc validate, then run
// these; a caller inside the library runs them on arguments it has already
// validated, and keeps the statuses they return.
#ifndef COVATTN_SRC_COVARIANCE_H_
#define COVATTN_SRC_COVARIANCE_H_

#include <cstddef>
#include <cstdint>

#include "covariance_kernels.h"
#include "covariance_state.h"
#include "covattn/covariance.h"

namespace covattn {
namespace detail {

// Bytes of a state: alignment slack, header, heads, workspace.
covattn_status CovStateBytes(size_t n_heads, size_t head_dim, size_t* bytes);

// Makes an empty state at the first 64-byte boundary of `memory`, which holds
// CovStateBytes() bytes (shape and forgetting factor already checked).
covattn_cov_state* CovStateInit(void* memory, size_t bytes, size_t n_heads, size_t head_dim,
                                float forgetting, uint32_t flags);

// Forgets every token.
void CovStateReset(covattn_cov_state* state);

// One head's statistics of a non-empty state; any output may be null.
struct CovExportOutputs {
  double* weight;
  float *mean_k, *mean_v, *cov_kk, *cov_vk;
};
void CovExport(const covattn_cov_state* state, size_t head, const CovExportOutputs& out);

// The serialized form: its size, writing it (SerializedBytes(state) bytes at
// p), and loading one: every check of covattn_cov_state_load on `size` bytes
// at p, then the copy; a refused file leaves the state as it was.
size_t CovSerializedBytes(const covattn_cov_state* state);
void CovSerialize(const covattn_cov_state* state, unsigned char* p);
covattn_status CovLoad(covattn_cov_state* state, const unsigned char* p, size_t size);

// The kernels' view of a validated block.
inline CovBlock CovBlockOf(const covattn_kv_cache& kv) {
  return CovBlock{kv.dtype,
                  kv.k,
                  kv.v,
                  kv.n_tokens,
                  kv.k_token_stride,
                  kv.k_head_stride,
                  kv.v_token_stride,
                  kv.v_head_stride,
                  kv.dtype == COVATTN_INT8 ? kv.int8_scales : nullptr};
}

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_COVARIANCE_H_
