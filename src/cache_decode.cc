// Decode on the bounded cache (include/covattn/cache.h, MATH.md section 4):
// exact attention over the sinks, the window and each head's retained and
// outlier slots, merged into one partial state; the summary's readout with
// its log-normaliser (summary.h); and the two merged row by row in
// log-sum-exp space. The entry point validates everything once; the parts run
// the kernels directly.

#include <algorithm>
#include <cmath>
#include <limits>

#include "cache.h"
#include "online_softmax.h"
#include "partial_state.h"
#include "summary.h"

namespace covattn {
namespace detail {
namespace {

// The validated query side of a decode call.
struct DecodeQuery {
  const float* q;  // [n_q_heads][head_dim]
  size_t n_q_heads;
  float scale;  // already defaulted
  float* out;
  float* diagnostics[3];  // summary_share, summary_ess, log_z; each may be null
};

// The caller's scratch: the attention kernel's, then the running exact
// state, one part's state, the summary's readout, log Z and ESS, and the
// summary's own work (the sizes of cache.cc's DecodeScratchBytes).
struct DecodeScratch {
  void* attention;
  covattn_partial exact, part;
  float *readout, *log_z, *ess, *summary_work;
};

DecodeScratch CarveScratch(void* scratch, size_t n_q_heads, size_t d) {
  DecodeScratch s;
  s.attention = scratch;
  float* f = reinterpret_cast<float*>(
      (reinterpret_cast<uintptr_t>(scratch) + AttentionScratchBytes(d) + 63) & ~uintptr_t{63});
  s.exact = covattn_partial{f, f + n_q_heads, f + 2 * n_q_heads};
  f += (2 + d) * n_q_heads;
  s.part = covattn_partial{f, f + n_q_heads, f + 2 * n_q_heads};
  f += (2 + d) * n_q_heads;
  s.readout = f;
  s.log_z = f + n_q_heads * d;
  s.ess = s.log_z + n_q_heads;
  s.summary_work = s.ess + n_q_heads;
  return s;
}

// Everything covattn_cache_decode checks after the cache and the pointers,
// in the order of its statuses.
covattn_status CheckDecode(const covattn_cache* cache, const DecodeQuery& dq, void* scratch,
                           size_t scratch_bytes) {
  ScratchNeeds needs;
  COVATTN_RETURN_IF_ERROR(CacheScratchBytes(cache->config, dq.n_q_heads, &needs));
  if (!std::isfinite(dq.scale)) return COVATTN_ERR_INVALID_SCALE;
  const size_t d = cache->Dim(), n = dq.n_q_heads;
  Extent q, outputs[5];  // out, the three diagnostics, scratch
  COVATTN_RETURN_IF_ERROR(CheckTensor(dq.q, sizeof(float), n, d, 1, 0, d, &q));
  COVATTN_RETURN_IF_ERROR(CheckTensor(dq.out, sizeof(float), n, d, 1, 0, d, &outputs[0]));
  for (int i = 0; i < 3; ++i) {
    if (dq.diagnostics[i] == nullptr) continue;
    COVATTN_RETURN_IF_ERROR(
        CheckTensor(dq.diagnostics[i], sizeof(float), n, 1, 1, 0, 1, &outputs[1 + i]));
  }
  COVATTN_RETURN_IF_ERROR(CheckScratch(scratch, scratch_bytes, needs.decode, &outputs[4]));
  const Extent cache_extent = CacheExtent(cache);
  for (int i = 0; i < 5; ++i) {
    if (outputs[i].Overlaps(q) || outputs[i].Overlaps(cache_extent)) return COVATTN_ERR_ALIASING;
    for (int j = i + 1; j < 5; ++j) {
      if (outputs[i].Overlaps(outputs[j])) return COVATTN_ERR_ALIASING;
    }
  }
  return COVATTN_OK;
}

// Stored tokens of the exact part: token t of KV head h at t * token_stride +
// h * head_stride elements. Every one precedes the query: no mask.
struct Segment {
  KvRows<const covattn_cache> rows;
  size_t n_tokens, n_kv_heads, token_stride, head_stride;
};

// Attention of query rows [first_row, first_row + n_rows) over a segment,
// merged into the running exact state. False if a score, the segment's
// result or the merged rows are not finite (the exact state then stays).
bool AddSegment(const covattn_cache* cache, const Segment& seg, const DecodeQuery& dq,
                size_t first_row, size_t n_rows, const DecodeScratch& s) {
  const size_t d = cache->Dim();
  const AttentionProblem pb{cache->config.dtype,
                            seg.rows.k,
                            seg.rows.v,
                            seg.token_stride,
                            seg.head_stride,
                            seg.token_stride,
                            seg.head_stride,
                            seg.n_kv_heads,
                            d,
                            dq.q + first_row * d,
                            1,
                            n_rows,
                            dq.n_q_heads * d,
                            d,
                            /*n_past=*/seg.n_tokens - 1,
                            dq.scale,
                            0,
                            0,
                            0,
                            seg.n_tokens};
  const covattn_partial part{s.part.m + first_row, s.part.l + first_row, s.part.o + first_row * d};
  const covattn_partial exact{s.exact.m + first_row, s.exact.l + first_row,
                              s.exact.o + first_row * d};
  AttentionOutcome outcome{false, false};
  RunAttention(pb, AttentionResultSink{nullptr, 0, 0, nullptr, part.m, part.l, part.o}, s.attention,
               &outcome);
  return !outcome.nonfinite && MergePartialRows(n_rows, d, exact, part);
}

// The exact part: sinks and window (all heads at once; softmax is
// indifferent to token order, so the ring needs no unrolling), then each
// head's retained and outlier slots. False if any part was not finite.
bool ExactPart(const covattn_cache* cache, const DecodeQuery& dq, const DecodeScratch& s) {
  const size_t d = cache->Dim(), row = cache->RowElems(), n = dq.n_q_heads;
  std::fill(s.exact.m, s.exact.m + n, kInitialMax);
  std::fill(s.exact.l, s.exact.l + n, 0.0f);
  std::fill(s.exact.o, s.exact.o + n * d, 0.0f);
  bool finite = true;
  if (cache->SinkCount() != 0) {
    const Segment sinks{Sinks(cache), cache->SinkCount(), cache->Heads(), row, d};
    finite &= AddSegment(cache, sinks, dq, 0, n, s);
  }
  if (cache->WindowCount() != 0) {
    const Segment window{Window(cache), cache->WindowCount(), cache->Heads(), row, d};
    finite &= AddSegment(cache, window, dq, 0, n, s);
  }
  const size_t group = n / cache->Heads();
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const HeadRegions<const covattn_cache> head = Head(cache, h);
    const size_t retained = cache->HasRetained() ? *head.retained_count : 0;
    if (retained != 0) {
      const Segment slots{Retained(cache, h, 0), retained, 1, d, 0};
      finite &= AddSegment(cache, slots, dq, h * group, group, s);
    }
    if (*head.count != 0) {
      const Segment outliers{Outliers(cache, h, 0), *head.count, 1, d, 0};
      finite &= AddSegment(cache, outliers, dq, h * group, group, s);
    }
  }
  return finite;
}

// The summary part: the readout and its log-normaliser (MATH.md sections 2
// and 6) for every query. False when there is none: no summary, nothing
// folded yet, or a readout that is not finite (*nonfinite is then set).
bool SummaryPart(const covattn_cache* cache, const DecodeQuery& dq, const DecodeScratch& s,
                 bool* nonfinite) {
  if (!cache->Summarizes() || cache->n_summarized == 0) return false;
  if (SummaryReadout(cache,
                     SummaryQueries{dq.q, dq.n_q_heads, dq.scale, s.readout, s.log_z,
                                    dq.diagnostics[1] != nullptr ? s.ess : nullptr},
                     s.summary_work)) {
    return true;
  }
  *nonfinite = true;
  return false;
}

// Merges row r of the exact part with the summary's (a row of its own with
// m = log Z_s, l = 1 and o = the readout; MATH.md section 4) into out and
// the diagnostics. A head whose summary is still empty reports log Z = -inf;
// a row with neither part is masked.
RowOutcome MergeRow(const DecodeScratch& s, size_t r, bool have_summary, size_t d, float* out,
                    float diagnostics[3]) {
  const float inf = std::numeric_limits<float>::infinity();
  const bool exact = s.exact.l[r] > 0.0f;
  const bool summary = have_summary && s.log_z[r] > -HUGE_VALF;
  if (!exact && !summary) {
    std::fill(out, out + d, 0.0f);
    diagnostics[0] = diagnostics[1] = 0.0f;
    diagnostics[2] = -inf;
    return RowOutcome::kMasked;
  }
  const SoftmaxMergeWeights w =
      MergeWeights(exact ? s.exact.m[r] : -inf, summary ? s.log_z[r] : -inf);
  const float* o_exact = s.exact.o + r * d;
  const float* o_summary = s.readout + r * d;
  for (size_t i = 0; i < d; ++i) {
    out[i] = w.w_a * o_exact[i] + (summary ? w.w_b * o_summary[i] : 0.0f);
  }
  const float l = w.w_a * s.exact.l[r] + w.w_b;
  diagnostics[0] = w.w_b * (1.0f / l);
  diagnostics[1] = summary ? s.ess[r] : 0.0f;
  return FinalizeRow(w.m, l, out, d, /*valid=*/true, out, &diagnostics[2]);
}

covattn_status Decode(const covattn_cache* cache, const DecodeQuery& dq, const DecodeScratch& s) {
  bool nonfinite = !ExactPart(cache, dq, s);
  const bool have_summary = SummaryPart(cache, dq, s, &nonfinite);
  bool masked = false;
  const size_t d = cache->Dim();
  for (size_t r = 0; r < dq.n_q_heads; ++r) {
    float diagnostics[3];
    const RowOutcome row = MergeRow(s, r, have_summary, d, dq.out + r * d, diagnostics);
    masked |= row == RowOutcome::kMasked;
    nonfinite |= row == RowOutcome::kNonfinite;
    for (int i = 0; i < 3; ++i) {
      if (dq.diagnostics[i] != nullptr) dq.diagnostics[i][r] = diagnostics[i];
    }
  }
  if (nonfinite) return COVATTN_ERR_NONFINITE;
  return masked ? COVATTN_FULLY_MASKED : COVATTN_OK;
}

}  // namespace
}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" {

covattn_status covattn_cache_decode(const covattn_cache* cache, const float* q, size_t n_q_heads,
                                    float scale, float* out,
                                    const covattn_cache_diagnostics* diagnostics, void* scratch,
                                    size_t scratch_bytes) {
  COVATTN_RETURN_IF_ERROR(CheckCache(cache));
  if (q == nullptr || out == nullptr) return COVATTN_ERR_NULL_POINTER;
  DecodeQuery dq{q,
                 n_q_heads,
                 scale,
                 out,
                 {diagnostics ? diagnostics->summary_share : nullptr,
                  diagnostics ? diagnostics->summary_ess : nullptr,
                  diagnostics ? diagnostics->log_z : nullptr}};
  COVATTN_RETURN_IF_ERROR(CheckDecode(cache, dq, scratch, scratch_bytes));
  if (dq.scale == 0.0f) dq.scale = 1.0f / std::sqrt(static_cast<float>(cache->Dim()));
  return Decode(cache, dq, CarveScratch(scratch, n_q_heads, cache->Dim()));
}

}  // extern "C"
