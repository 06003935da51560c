// The validated description of one attention call, shared by the C API
// (src/attention.cc) and the per-target kernels (src/attention_kernels-inl.h).
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

// The scratch memory of one call, in floats from its first 64-byte
// boundary: per row of a pass the scaled query a and the un-normalised output
// o (ld floats each), then the row's scores p (kChunkTokens floats).
struct AttentionScratchLayout {
  size_t ld;               // floats per row of a and o: head_dim rounded up to 16
  size_t a, o, p, floats;  // where a, o and p start, and the floats in all
};

constexpr size_t kAttentionScratchAlign = 64;

inline AttentionScratchLayout AttentionScratchFor(size_t head_dim) {
  AttentionScratchLayout layout;
  layout.ld = (head_dim + 15) & ~size_t{15};
  layout.a = 0;
  layout.o = layout.a + kPassRows * layout.ld;
  layout.p = layout.o + kPassRows * layout.ld;
  layout.floats = layout.p + kPassRows * kChunkTokens;
  return layout;
}

// Bytes of scratch for a head_dim, including slack to align it.
inline size_t AttentionScratchBytes(size_t head_dim) {
  return AttentionScratchFor(head_dim).floats * sizeof(float) + kAttentionScratchAlign;
}

inline float* AlignedAttentionScratch(void* scratch) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(scratch);
  return reinterpret_cast<float*>((p + kAttentionScratchAlign - 1) &
                                  ~uintptr_t{kAttentionScratchAlign - 1});
}

// The per-dtype kernels (attention_kernels_{f32,f16,bf16}.cc, each compiled
// for every target) and their entry for the C API, which picks one by
// problem.dtype (attention_kernels.cc).
void RunAttentionF32(const AttentionProblem& problem, const AttentionResultSink& sink,
                     void* scratch, AttentionOutcome* outcome);
void RunAttentionF16(const AttentionProblem& problem, const AttentionResultSink& sink,
                     void* scratch, AttentionOutcome* outcome);
void RunAttentionBF16(const AttentionProblem& problem, const AttentionResultSink& sink,
                      void* scratch, AttentionOutcome* outcome);
void RunAttention(const AttentionProblem& problem, const AttentionResultSink& sink, void* scratch,
                  AttentionOutcome* outcome);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_ATTENTION_H_
