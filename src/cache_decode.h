// The read side of the bounded cache (MATH.md section 4), shared by decode
// (cache_decode.cc: one position) and prefill (cache_prefill.cc: tiles of
// positions): the exact part over the stored tokens, the summary part, and
// their merge row by row. Everything runs on validated arguments.
#ifndef COVATTN_SRC_CACHE_DECODE_H_
#define COVATTN_SRC_CACHE_DECODE_H_

#include <cstddef>
#include <cstdint>

#include "attention.h"
#include "cache.h"
#include "covattn/covattn.h"
#include "online_softmax.h"

namespace covattn {
namespace detail {

// Queries of one read: n_positions positions of n_q_heads heads, element
// (t, h, i) at q[t * token_stride + h * head_stride + i]. State rows are
// numbered r = t * n_q_heads + h.
struct CacheQueries {
  const float* q;
  size_t n_positions, n_q_heads, token_stride, head_stride;
  float scale;  // already defaulted
};

// KV heads [first, first + count) of a read, with all their query heads:
// decode over a pool reads each range on its own (the exact part and the
// summary are independent per KV head).
struct KvHeadRange {
  size_t first, count;
};

// Query rows per prefill tile (about): enough for full passes of the
// attention kernel (kPassRows) with rows to spare.
constexpr size_t kPrefillRows = 64;

// Positions per prefill tile: kPrefillRows rows, and at least full tiles of
// the attention kernel (kTileRows rows) per KV head.
inline size_t PrefillPositions(size_t n_q_heads, size_t n_kv_heads) {
  const size_t group = n_q_heads / n_kv_heads;
  const size_t for_rows = (kPrefillRows + n_q_heads - 1) / n_q_heads;
  const size_t for_tiles = (kTileRows + group - 1) / group;
  return for_rows > for_tiles ? for_rows : for_tiles;
}

// The caller's scratch of a read of n_rows state rows (n_q_heads per
// position): the attention kernel's, the running exact state and one part's
// state ([n_rows] rows each), the summary's readout, log Z and ESS of one
// position ([n_q_heads]), with `query_copy` one position's queries made
// contiguous for the summary, then the summary's own work.
struct ReadScratch {
  void* attention;
  covattn_partial exact, part;
  float *readout, *log_z, *ess, *query, *summary_work;
};
ReadScratch CarveReadScratch(void* scratch, size_t n_rows, size_t n_q_heads, size_t d,
                             bool query_copy);
// Its bytes (cache.cc).
covattn_status ReadScratchBytes(const covattn_cache_config& c, size_t n_rows, size_t n_q_heads,
                                bool query_copy, size_t* bytes);

// Tokens of an exact part: token j of KV head h at j * token_stride + h *
// head_stride elements of k and v. A query at position p (relative to the
// segment's first token, p = first_position + t for the t-th position of the
// read) sees tokens 0 .. p: first_position n_tokens - 1 for stored tokens,
// which every query sees; the first position of a tile for the block of a
// prefill (causal).
struct Segment {
  uint32_t dtype;
  const void* k;
  const void* v;
  size_t k_token_stride, k_head_stride, v_token_stride, v_head_stride;
  size_t n_tokens, n_kv_heads, first_position;
  covattn_int8_scales int8_scales;  // COVATTN_INT8 only
};

// Attention of query heads [first_head, first_head + n_heads) of every
// position over a segment (of n_heads / group KV heads), merged into the
// running exact state; when *empty (the state holds nothing yet: empty may be
// null) and the segment serves every head, written as the state instead of
// merged. Clears *empty. False if a score, the segment's result or the
// merged rows are not finite.
bool AddSegment(const covattn_cache* cache, const Segment& seg, const CacheQueries& cq,
                size_t first_head, size_t n_heads, const ReadScratch& s, bool* empty);

// The exact part over the stored tokens of KV heads `heads` (sinks, window,
// each head's retained and outlier slots) into s.exact, rows [0, n_positions
// * n_q_heads); cq holds those heads' queries only (n_q_heads a multiple of
// heads.count). *empty says whether it held none. False if any part was not
// finite.
bool ExactPart(const covattn_cache* cache, KvHeadRange heads, const CacheQueries& cq,
               const ReadScratch& s, bool* empty);

// The summary part of one position for KV heads `heads`: the readout and
// log-normaliser of their queries q ([n_q_heads][head_dim], contiguous) into
// s.readout, s.log_z (and s.ess when want_ess). False when there is none: no
// summary, nothing folded yet, or a readout that is not finite (*nonfinite is
// then set).
bool SummaryPart(const covattn_cache* cache, KvHeadRange heads, const float* q, size_t n_q_heads,
                 float scale, bool want_ess, const ReadScratch& s, bool* nonfinite);

// Merges exact row `exact_row` with the summary's row `summary_row` (MATH.md
// section 4) into out (head_dim) and diagnostics: summary_share,
// summary_ess, log_z. A row with neither part is masked.
RowOutcome MergeRow(const ReadScratch& s, size_t exact_row, size_t summary_row, bool have_summary,
                    size_t d, float* out, float diagnostics[3]);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_CACHE_DECODE_H_
