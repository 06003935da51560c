// The validated description of one attention call, shared by the C API
// (src/attention.cc) and the per-target kernels (src/attention_kernels-inl.h).
#ifndef COVATTN_SRC_ATTENTION_H_
#define COVATTN_SRC_ATTENTION_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "covattn/covattn.h"
#include "online_softmax.h"

namespace covattn {
namespace detail {

// Rows of one tile (query positions x query heads of one KV head), rows of
// one pass over the cache (several tiles), and tokens of one chunk; they size
// the scratch memory.
constexpr size_t kTileRows = 8;
constexpr size_t kPassRows = 32;
constexpr size_t kChunkTokens = 64;

// Tokens per chunk for K and V vectors of row_bytes bytes: kChunkTokens,
// halved (to 16 at least) while one head's chunk of K and V exceeds 32 KiB.
// A pass prefetches the next chunk while it works on this one: at 64
// tokens a layer pass (8 heads of f32 K and V at d 128, 512 KiB a chunk) and
// its successor filled Zen 5's 1 MiB L2 and prefetched lines were evicted
// before use; 32 KiB per head keeps both in half of it (docs/results.md,
// "Chunks that fit"). Only the row size decides, never how heads are grouped
// into passes or tasks, so threaded runs round exactly as one thread does.
constexpr size_t kChunkBytesPerHead = 32 * 1024;
inline size_t ChunkTokensFor(size_t row_bytes) {
  size_t tokens = kChunkTokens;
  while (tokens > 16 && tokens * 2 * row_bytes > kChunkBytesPerHead) tokens /= 2;
  return tokens;
}

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
  size_t token_begin, token_end;           // cache range considered
  const covattn_int8_scales* int8_scales;  // COVATTN_INT8 only, else nullptr
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

// Chunks of kChunkTokens tokens whose weighted values a pass sums apart
// before adding them to the running output (MATH.md section 1, "rounding over
// long contexts"); a block of smaller chunks spans as many tokens.
constexpr size_t kChunksPerBlock = 16;

// The scratch memory of one call, in floats from its first 64-byte
// boundary: per row of a pass the scaled query a, the un-normalised output o
// and the current block's part of it, o_block (ld floats each), then the
// row's scores p (kChunkTokens floats).
struct AttentionScratchLayout {
  size_t ld;  // floats per row of a, o and o_block: head_dim rounded up to 16
  // where each starts, and the floats in all; then, for passes with their
  // rows in the lanes, a transposed ([ld][kPassRows]), a chunk's scores
  // ([kChunkTokens][kPassRows]) and keys as f32 ([kChunkTokens][ld])
  size_t a, o, o_block, p, a_t, s_t, k_f32, floats;
};

constexpr size_t kAttentionScratchAlign = 64;

inline AttentionScratchLayout AttentionScratchFor(size_t head_dim) {
  AttentionScratchLayout layout;
  layout.ld = (head_dim + 15) & ~size_t{15};
  layout.a = 0;
  layout.o = layout.a + kPassRows * layout.ld;
  layout.o_block = layout.o + kPassRows * layout.ld;
  layout.p = layout.o_block + kPassRows * layout.ld;
  layout.a_t = layout.p + kPassRows * kChunkTokens;
  layout.s_t = layout.a_t + kPassRows * layout.ld;
  layout.k_f32 = layout.s_t + kChunkTokens * kPassRows;
  layout.floats = layout.k_f32 + kChunkTokens * layout.ld;
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

// The query rows of a call are numbered KV head by KV head: row i is row
// i % R of KV head i / R, R = n_q_tokens * group; within a KV head t-major,
// so local row k is query token k / group, query head kv * group + k % group.
// Tiles are the runs of up to kTileRows rows of one KV head from its first
// row on; a pass is whole tiles, up to kPassRows rows.
inline size_t RowsPerKvHead(const AttentionProblem& pb) {
  return pb.n_q_tokens * (pb.n_q_heads / pb.n_kv_heads);
}

struct RowCoordinates {
  size_t q_token, q_head;
};

inline RowCoordinates RowAt(const AttentionProblem& pb, size_t row) {
  const size_t group = pb.n_q_heads / pb.n_kv_heads, per_kv_head = RowsPerKvHead(pb);
  const size_t kv_head = row / per_kv_head, local = row % per_kv_head;
  return {local / group, kv_head * group + local % group};
}

// The end of the pass that starts at row `begin` (a tile boundary): whole
// tiles up to kPassRows rows, at least one, never beyond `end`.
inline size_t PassEnd(const AttentionProblem& pb, size_t begin, size_t end) {
  const size_t per_kv_head = RowsPerKvHead(pb);
  size_t e = begin;
  while (e < end) {
    const size_t n = std::min(kTileRows, per_kv_head - e % per_kv_head);
    if (e > begin && e - begin + n > kPassRows) break;
    e += n;
  }
  return e;
}

// The tokens rows at positions [pos_first, pos_last] may see, clipped to the
// problem's range: the sinks [sink_begin, sink_end), then the window
// [window_begin, window_end) (either may be empty).
struct VisibleTokens {
  size_t sink_begin, sink_end, window_begin, window_end;
};

inline VisibleTokens VisibleTokensOf(const AttentionProblem& pb, size_t pos_first,
                                     size_t pos_last) {
  size_t window_begin = 0, sink_end = 0;
  if (pb.window != 0) {
    sink_end = std::min(pb.n_sinks, pos_last + 1);
    window_begin = pos_first + 1 > pb.window ? pos_first + 1 - pb.window : 0;
    window_begin = std::max(window_begin, sink_end);
  }
  VisibleTokens v;
  v.sink_begin = pb.token_begin;
  v.sink_end = std::max(v.sink_begin, std::min(sink_end, pb.token_end));
  v.window_begin = std::max(window_begin, pb.token_begin);
  v.window_end = std::max(v.window_begin, std::min(pos_last + 1, pb.token_end));
  return v;
}

// The rows one kernel run computes (whole tiles), and where partial states
// go: at row t * n_q_heads + h of the sink, or (run_indexed) at the row's
// index within the run, for the split states of src/attention_threads.cc.
struct AttentionRows {
  size_t begin, end;
  bool run_indexed;
};

// The per-dtype kernels (attention_kernels_{f32,f16,bf16,int8}.cc, each compiled
// for every target) and their entry for the C API, which picks one by
// problem.dtype (attention_kernels.cc). RunAttention runs every row.
void RunAttentionF32(const AttentionProblem& problem, const AttentionRows& rows,
                     const AttentionResultSink& sink, void* scratch, AttentionOutcome* outcome);
void RunAttentionF16(const AttentionProblem& problem, const AttentionRows& rows,
                     const AttentionResultSink& sink, void* scratch, AttentionOutcome* outcome);
void RunAttentionBF16(const AttentionProblem& problem, const AttentionRows& rows,
                      const AttentionResultSink& sink, void* scratch, AttentionOutcome* outcome);
void RunAttentionInt8(const AttentionProblem& problem, const AttentionRows& rows,
                      const AttentionResultSink& sink, void* scratch, AttentionOutcome* outcome);
void RunAttentionRows(const AttentionProblem& problem, const AttentionRows& rows,
                      const AttentionResultSink& sink, void* scratch, AttentionOutcome* outcome);
void RunAttention(const AttentionProblem& problem, const AttentionResultSink& sink, void* scratch,
                  AttentionOutcome* outcome);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_ATTENTION_H_
