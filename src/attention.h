// The validated description of one attention call, shared by the C API
// (src/attention.cc) and the per-target kernels (src/attention_kernels.cc).
#ifndef COVATTN_SRC_ATTENTION_H_
#define COVATTN_SRC_ATTENTION_H_

#include <cstddef>
#include <cstdint>
#include <limits>

#include "online_softmax.h"

namespace covattn {
namespace detail {

// Rows of one tile (query positions x query heads of one KV head), rows of
// one pass over the cache (several tiles), and tokens of one chunk; they size
// the scratch memory.
constexpr size_t kTileRows = 8;
constexpr size_t kPassRows = 32;
constexpr size_t kChunkTokens = 64;

struct AttentionProblem {
  uint32_t dtype;  // covattn_dtype of K and V
  const void* k;
  const void* v;
  size_t k_token_stride, k_head_stride, v_token_stride, v_head_stride;
  size_t n_kv_heads, head_dim;

  const float* q;
  size_t n_q_tokens, n_q_heads, q_token_stride, q_head_stride;
  size_t n_past;  // position of the first query

  float scale;
  size_t window, n_sinks;
  size_t token_begin, token_end;  // cache range considered
};

// Where results go: normalised outputs (out != nullptr), or a partial state.
struct AttentionResultSink {
  float* out;
  size_t out_token_stride, out_head_stride;
  float* log_z;  // optional, [token][q head]

  float* m;  // partial state, rows [token][q head]
  float* l;
  float* o;  // [row][head_dim]
};

struct AttentionOutcome {
  bool fully_masked;  // some row saw no visible token
  bool nonfinite;     // some result is NaN or infinite
};

// Bytes of scratch for a head_dim, including slack to align it.
size_t AttentionScratchBytes(size_t head_dim);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_ATTENTION_H_
