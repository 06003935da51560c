// Decode on the bounded cache (include/covattn/cache.h, MATH.md section 4),
// and the read side it shares with prefill (cache_decode.h): exact attention
// over the sinks, the window and each head's retained and outlier slots,
// merged into one partial state; the summary's readout with its
// log-normaliser (summary.h); and the two merged row by row in log-sum-exp
// space. The entry point validates everything once; the parts run the
// kernels directly.

#include "cache_decode.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "online_softmax.h"
#include "partial_state.h"
#include "summary.h"

namespace covattn {
namespace detail {

ReadScratch CarveReadScratch(void* scratch, size_t n_rows, size_t n_q_heads, size_t d,
                             bool query_copy) {
  ReadScratch s;
  s.attention = scratch;
  float* f = reinterpret_cast<float*>(
      (reinterpret_cast<uintptr_t>(scratch) + AttentionScratchBytes(d) + 63) & ~uintptr_t{63});
  s.exact = covattn_partial{f, f + n_rows, f + 2 * n_rows};
  f += (2 + d) * n_rows;
  s.part = covattn_partial{f, f + n_rows, f + 2 * n_rows};
  f += (2 + d) * n_rows;
  s.readout = f;
  s.log_z = f + n_q_heads * d;
  s.ess = s.log_z + n_q_heads;
  s.query = query_copy ? s.ess + n_q_heads : nullptr;
  s.summary_work = s.ess + n_q_heads + (query_copy ? n_q_heads * d : 0);
  return s;
}

bool AddSegment(const covattn_cache* cache, const Segment& seg, const CacheQueries& cq,
                size_t first_head, size_t n_heads, const ReadScratch& s, bool* empty) {
  const size_t d = cache->Dim();
  const AttentionProblem pb{seg.dtype,
                            seg.k,
                            seg.v,
                            seg.k_token_stride,
                            seg.k_head_stride,
                            seg.v_token_stride,
                            seg.v_head_stride,
                            seg.n_kv_heads,
                            d,
                            cq.q + first_head * cq.head_stride,
                            cq.n_positions,
                            n_heads,
                            cq.token_stride,
                            cq.head_stride,
                            seg.first_position,
                            cq.scale,
                            0,
                            0,
                            0,
                            seg.n_tokens,
                            nullptr};  // the cache stores float dtypes only
  // Into an empty exact state, a segment of every head is the state itself.
  const bool direct = empty != nullptr && *empty && first_head == 0 && n_heads == cq.n_q_heads;
  if (empty != nullptr) *empty = false;
  const covattn_partial& into = direct ? s.exact : s.part;
  AttentionOutcome outcome{false, false};
  RunAttention(pb, AttentionResultSink{nullptr, 0, 0, nullptr, into.m, into.l, into.o}, s.attention,
               &outcome);
  bool finite = !outcome.nonfinite;
  // Otherwise merge: the part's rows are t * n_heads + h, the exact state's
  // t * n_q_heads + h.
  for (size_t t = 0; t < cq.n_positions && finite && !direct; ++t) {
    const size_t e = t * cq.n_q_heads + first_head, p = t * n_heads;
    finite = MergePartialRows(n_heads, d,
                              covattn_partial{s.exact.m + e, s.exact.l + e, s.exact.o + e * d},
                              covattn_partial{s.part.m + p, s.part.l + p, s.part.o + p * d});
  }
  return finite;
}

namespace {

// Stored tokens of the cache (the cache's dtype, seen by every query).
Segment StoredSegment(const covattn_cache* cache, KvRows<const covattn_cache> rows, size_t n_tokens,
                      size_t n_kv_heads, size_t token_stride, size_t head_stride) {
  return Segment{cache->config.dtype, rows.k,      rows.v,   token_stride, head_stride,
                 token_stride,        head_stride, n_tokens, n_kv_heads,   n_tokens - 1};
}

}  // namespace

bool ExactPart(const covattn_cache* cache, const CacheQueries& cq, const ReadScratch& s,
               bool* empty) {
  const size_t d = cache->Dim(), row = cache->RowElems(), n = cq.n_q_heads;
  const size_t n_rows = cq.n_positions * n;
  std::fill(s.exact.m, s.exact.m + n_rows, kInitialMax);
  std::fill(s.exact.l, s.exact.l + n_rows, 0.0f);
  std::fill(s.exact.o, s.exact.o + n_rows * d, 0.0f);
  bool finite = true;
  *empty = true;
  // Sinks and window for all heads at once: softmax is indifferent to token
  // order, so the ring needs no unrolling.
  if (cache->SinkCount() != 0) {
    const Segment sinks =
        StoredSegment(cache, Sinks(cache), cache->SinkCount(), cache->Heads(), row, d);
    finite &= AddSegment(cache, sinks, cq, 0, n, s, empty);
  }
  if (cache->WindowCount() != 0) {
    const Segment window =
        StoredSegment(cache, Window(cache), cache->WindowCount(), cache->Heads(), row, d);
    finite &= AddSegment(cache, window, cq, 0, n, s, empty);
  }
  const size_t group = n / cache->Heads();
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const HeadRegions<const covattn_cache> head = Head(cache, h);
    const size_t retained = cache->HasRetained() ? *head.retained_count : 0;
    if (retained != 0) {
      finite &= AddSegment(cache, StoredSegment(cache, Retained(cache, h, 0), retained, 1, d, 0),
                           cq, h * group, group, s, empty);
    }
    if (*head.count != 0) {
      finite &= AddSegment(cache, StoredSegment(cache, Outliers(cache, h, 0), *head.count, 1, d, 0),
                           cq, h * group, group, s, empty);
    }
  }
  return finite;
}

bool SummaryPart(const covattn_cache* cache, const float* q, size_t n_q_heads, float scale,
                 bool want_ess, const ReadScratch& s, bool* nonfinite) {
  if (!cache->Summarizes() || cache->n_summarized == 0) return false;
  if (SummaryReadout(
          cache,
          SummaryQueries{q, n_q_heads, scale, s.readout, s.log_z, want_ess ? s.ess : nullptr},
          s.summary_work)) {
    return true;
  }
  *nonfinite = true;
  return false;
}

// The summary's row is one of its own with m = log Z_s, l = 1 and o = the
// readout. A head whose summary is still empty reports log Z = -inf.
RowOutcome MergeRow(const ReadScratch& s, size_t exact_row, size_t summary_row, bool have_summary,
                    size_t d, float* out, float diagnostics[3]) {
  const float inf = std::numeric_limits<float>::infinity();
  const bool exact = s.exact.l[exact_row] > 0.0f;
  const bool summary = have_summary && s.log_z[summary_row] > -HUGE_VALF;
  if (!exact && !summary) {
    std::fill(out, out + d, 0.0f);
    diagnostics[0] = diagnostics[1] = 0.0f;
    diagnostics[2] = -inf;
    return RowOutcome::kMasked;
  }
  const SoftmaxMergeWeights w =
      MergeWeights(exact ? s.exact.m[exact_row] : -inf, summary ? s.log_z[summary_row] : -inf);
  const float* o_exact = s.exact.o + exact_row * d;
  const float* o_summary = s.readout + summary_row * d;
  for (size_t i = 0; i < d; ++i) {
    out[i] = w.w_a * o_exact[i] + (summary ? w.w_b * o_summary[i] : 0.0f);
  }
  const float l = w.w_a * s.exact.l[exact_row] + w.w_b;
  diagnostics[0] = w.w_b * (1.0f / l);
  diagnostics[1] = summary ? s.ess[summary_row] : 0.0f;
  return FinalizeRow(w.m, l, out, d, /*valid=*/true, out, &diagnostics[2]);
}

namespace {

// The validated query side of a decode call.
struct DecodeQuery {
  const float* q;  // [n_q_heads][head_dim]
  size_t n_q_heads;
  float scale;  // already defaulted
  float* out;
  float* diagnostics[3];  // summary_share, summary_ess, log_z; each may be null
};

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

covattn_status Decode(const covattn_cache* cache, const DecodeQuery& dq, const ReadScratch& s) {
  const size_t d = cache->Dim(), n = dq.n_q_heads;
  bool empty;
  bool nonfinite = !ExactPart(cache, CacheQueries{dq.q, 1, n, n * d, d, dq.scale}, s, &empty);
  const bool have_summary =
      SummaryPart(cache, dq.q, n, dq.scale, dq.diagnostics[1] != nullptr, s, &nonfinite);
  bool masked = false;
  for (size_t r = 0; r < n; ++r) {
    float diagnostics[3];
    const RowOutcome row = MergeRow(s, r, r, have_summary, d, dq.out + r * d, diagnostics);
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
  return Decode(
      cache, dq,
      CarveReadScratch(scratch, n_q_heads, n_q_heads, cache->Dim(), /*query_copy=*/false));
}

}  // extern "C"
