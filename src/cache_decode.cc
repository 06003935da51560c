// Decode on the bounded cache (include/covattn/cache.h, MATH.md section 4),
// and the read side it shares with prefill (cache_decode.h): exact attention
// over the sinks, the window and each head's retained and outlier slots,
// merged into one partial state; the summary's readout with its
// log-normaliser (summary.h); and the two merged row by row in log-sum-exp
// space. The entry point validates everything once; the parts run the
// kernels directly. Over a pool, each task reads a run of whole KV heads with
// the same code, into staged outputs the caller gets once every task ran; or,
// when the heads are too few to keep the workers busy, a range of one head's
// exact tokens, merged on the calling thread afterwards (split-KV).

#include "cache_decode.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>

#include "online_softmax.h"
#include "partial_state.h"
#include "pool_tasks.h"
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
                            seg.dtype == COVATTN_INT8 ? &seg.int8_scales : nullptr};
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

// Stored tokens of the cache (the cache's dtype, seen by every query),
// strides in elements. An int8 vector's scale follows its elements
// (StoredVectorBytes), so the scales are floats at the same strides / 4.
Segment StoredSegment(const covattn_cache* cache, KvRows<const covattn_cache> rows, size_t n_tokens,
                      size_t n_kv_heads, size_t token_stride, size_t head_stride) {
  Segment seg{cache->config.dtype, rows.k,   rows.v,     token_stride, head_stride, token_stride,
              head_stride,         n_tokens, n_kv_heads, n_tokens - 1, {}};
  if (seg.dtype == COVATTN_INT8) {
    const size_t at = Int8ScaleOffset(cache->Dim()), f = sizeof(float);
    seg.int8_scales = covattn_int8_scales{reinterpret_cast<const float*>(rows.k + at),
                                          reinterpret_cast<const float*>(rows.v + at),
                                          token_stride / f,
                                          head_stride / f,
                                          token_stride / f,
                                          head_stride / f};
  }
  return seg;
}

// Token-major rows (sinks, window) from KV head `first` on.
KvRows<const covattn_cache> FromHead(const covattn_cache* cache, KvRows<const covattn_cache> rows,
                                     size_t first) {
  const size_t offset = first * cache->vec_bytes;
  return KvRows<const covattn_cache>{rows.k + offset, rows.v + offset};
}

// The sinks and the window of KV heads `heads` (token-major), and KV head h's
// retained and outlier slots; each may hold no token.
Segment SinkSegment(const covattn_cache* cache, KvHeadRange heads) {
  return StoredSegment(cache, FromHead(cache, Sinks(cache), heads.first), cache->SinkCount(),
                       heads.count, cache->RowStride(), cache->VecStride());
}
Segment WindowSegment(const covattn_cache* cache, KvHeadRange heads) {
  return StoredSegment(cache, FromHead(cache, Window(cache), heads.first), cache->WindowCount(),
                       heads.count, cache->RowStride(), cache->VecStride());
}
Segment RetainedSegment(const covattn_cache* cache, size_t h) {
  const size_t n = cache->HasRetained() ? *Head(cache, h).retained_count : 0;
  return StoredSegment(cache, Retained(cache, h, 0), n, 1, cache->VecStride(), 0);
}
Segment OutlierSegment(const covattn_cache* cache, size_t h) {
  return StoredSegment(cache, Outliers(cache, h, 0), *Head(cache, h).count, 1, cache->VecStride(),
                       0);
}

void ClearState(const covattn_partial& state, size_t n_rows, size_t d) {
  std::fill(state.m, state.m + n_rows, kInitialMax);
  std::fill(state.l, state.l + n_rows, 0.0f);
  std::fill(state.o, state.o + n_rows * d, 0.0f);
}

}  // namespace

bool ExactPart(const covattn_cache* cache, KvHeadRange heads, const CacheQueries& cq,
               const ReadScratch& s, bool* empty) {
  const size_t n = cq.n_q_heads;
  ClearState(s.exact, cq.n_positions * n, cache->Dim());
  bool finite = true;
  *empty = true;
  // Sinks and window for all the range's heads at once: softmax is
  // indifferent to token order, so the ring needs no unrolling.
  for (const Segment& all_heads : {SinkSegment(cache, heads), WindowSegment(cache, heads)}) {
    if (all_heads.n_tokens != 0) finite &= AddSegment(cache, all_heads, cq, 0, n, s, empty);
  }
  const size_t group = n / heads.count;
  for (size_t i = 0; i < heads.count; ++i) {
    const size_t h = heads.first + i;
    for (const Segment& slots : {RetainedSegment(cache, h), OutlierSegment(cache, h)}) {
      if (slots.n_tokens != 0) finite &= AddSegment(cache, slots, cq, i * group, group, s, empty);
    }
  }
  return finite;
}

bool SummaryPart(const covattn_cache* cache, KvHeadRange heads, const float* q, size_t n_q_heads,
                 float scale, bool want_ess, const ReadScratch& s, bool* nonfinite) {
  if (!cache->Summarizes() || cache->n_summarized == 0) return false;
  if (SummaryReadout(cache,
                     SummaryQueries{q, n_q_heads, scale, s.readout, s.log_z,
                                    want_ess ? s.ess : nullptr, heads.first, heads.count},
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

// Tasks per worker wanted of a decode over a pool: a late worker then delays
// the call by about half a worker's share.
constexpr size_t kTasksPerThread = 2;
// Runs of whole heads are at most kTasksPerThread * planned threads tasks.
// A split has fewer KV heads H than that, W: H ceil(W / H) < 2 W range
// tasks and H < W summary tasks.
static_assert(3 * kTasksPerThread * kMaxPlannedThreads <= kMaxPoolTasks,
              "a call's tasks must fit the pool ledger");

// Ranges each KV head's exact tokens are cut into over a pool (1: tasks are
// runs of whole heads): only when whole heads would leave workers short of
// kTasksPerThread tasks each, and at most one range per kMinSplitTokens of
// `most_tokens`, the exact tokens of the fullest head. One worker never
// splits (nothing to balance), so its results are covattn_cache_decode's.
size_t RangesPerHead(size_t n_kv_heads, size_t most_tokens, size_t planned_threads) {
  const size_t wanted = kTasksPerThread * planned_threads;
  if (planned_threads < 2 || n_kv_heads >= wanted) return 1;
  return std::max<size_t>(
      1, std::min((wanted + n_kv_heads - 1) / n_kv_heads, most_tokens / kMinSplitTokens));
}

// The most exact tokens a head of this configuration can hold.
size_t MostExactTokens(const covattn_cache_config& c) {
  return c.n_sinks + c.window + c.n_retained + c.n_outliers;  // fits: the cache's size did
}

// n rounded up to a multiple of 64; false on overflow.
bool RoundUp64(size_t n, size_t* out) {
  if (AddOverflows(n, 63, out)) return false;
  *out &= ~size_t{63};
  return true;
}

// The scratch of a decode over a pool, from its first 64-byte boundary: the
// staged outputs and diagnostics ([n_q_heads][head_dim] floats, then three
// [n_q_heads] arrays), which reach the caller only once the pool has run
// every task; one covattn_cache_scratch_size scratch per worker; then, when
// the configuration may split (RangesPerHead(H, MostExactTokens) = N > 1),
// H N range states of a head's query rows (m, l, o: state_bytes each) and
// the summary's readout, log Z and ESS of every query head.
struct ThreadedLayout {
  size_t stage_bytes, worker_bytes, states, state_bytes, summary, total;
};

// The layout for workers of `one_thread` bytes (the formula in cache.h);
// false if it does not fit in a size_t.
bool ThreadedLayoutFor(size_t one_thread, const covattn_cache_config& c, size_t n_q_heads,
                       size_t n_threads, ThreadedLayout* layout) {
  const size_t d = c.head_dim, heads = c.n_kv_heads;
  const size_t ranges = RangesPerHead(heads, MostExactTokens(c), PlannedThreads(n_threads));
  size_t stage_floats, workers, all_states = 0, summary_bytes = 0;
  if (MulOverflows(n_q_heads, d + 3, &stage_floats) ||
      MulOverflows(stage_floats, sizeof(float), &layout->stage_bytes) ||
      !RoundUp64(layout->stage_bytes, &layout->stage_bytes) ||
      !RoundUp64(one_thread, &layout->worker_bytes) ||
      MulOverflows(layout->worker_bytes, n_threads, &workers) ||
      AddOverflows(layout->stage_bytes, workers, &layout->states)) {
    return false;
  }
  // Query rows of a head and of all heads, (2 + head_dim) floats each; a
  // stage that fitted bounds both.
  layout->state_bytes = 0;
  if (ranges > 1) {
    layout->state_bytes = n_q_heads / heads * (d + 2) * sizeof(float);
    summary_bytes = n_q_heads * (d + 2) * sizeof(float);
    if (!RoundUp64(layout->state_bytes, &layout->state_bytes) ||
        MulOverflows(layout->state_bytes, heads * ranges, &all_states) ||
        !RoundUp64(summary_bytes, &summary_bytes)) {
      return false;
    }
  }
  return !AddOverflows(layout->states, all_states, &layout->summary) &&
         !AddOverflows(layout->summary, summary_bytes, &layout->total) &&
         !AddOverflows(layout->total, 64, &layout->total);
}

// Everything covattn_cache_decode_threads checks after the cache, the
// pointers and the pool's fields, in the order of its statuses; with a pool,
// also the layout of its scratch.
covattn_status CheckDecode(const covattn_cache* cache, const DecodeQuery& dq,
                           const covattn_thread_pool* pool, void* scratch, size_t scratch_bytes,
                           ThreadedLayout* layout) {
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
  size_t needed = needs.decode;
  if (pool != nullptr) {
    COVATTN_RETURN_IF_ERROR(CacheScratchTotal(cache->config, n, &needed));
    if (!ThreadedLayoutFor(needed, cache->config, n, pool->n_threads, layout)) {
      return COVATTN_ERR_SCRATCH_TOO_SMALL;  // no memory is that large
    }
    needed = layout->total;
  }
  COVATTN_RETURN_IF_ERROR(CheckScratch(scratch, scratch_bytes, needed, &outputs[4]));
  const Extent cache_extent = CacheExtent(cache);
  for (int i = 0; i < 5; ++i) {
    if (outputs[i].Overlaps(q) || outputs[i].Overlaps(cache_extent)) return COVATTN_ERR_ALIASING;
    for (int j = i + 1; j < 5; ++j) {
      if (outputs[i].Overlaps(outputs[j])) return COVATTN_ERR_ALIASING;
    }
  }
  return COVATTN_OK;
}

struct DecodeOutcome {
  bool masked, nonfinite;
};

// Decodes the query heads of KV heads `heads` with a one-thread scratch s:
// out and diagnostics receive those heads' rows from their row 0. The same
// code serves one thread (all heads) and each task of a pool split by whole
// heads, so a row's bits do not depend on that split.
DecodeOutcome DecodeHeads(const covattn_cache* cache, const DecodeQuery& dq, KvHeadRange heads,
                          const ReadScratch& s, float* out, float* const diagnostics[3]) {
  const size_t d = cache->Dim(), group = dq.n_q_heads / cache->Heads(), n = heads.count * group;
  const float* q = dq.q + heads.first * group * d;
  bool empty;
  DecodeOutcome outcome{
      false, !ExactPart(cache, heads, CacheQueries{q, 1, n, n * d, d, dq.scale}, s, &empty)};
  const bool have_summary =
      SummaryPart(cache, heads, q, n, dq.scale, diagnostics[1] != nullptr, s, &outcome.nonfinite);
  for (size_t r = 0; r < n; ++r) {
    float row[3];
    const RowOutcome result = MergeRow(s, r, r, have_summary, d, out + r * d, row);
    outcome.masked |= result == RowOutcome::kMasked;
    outcome.nonfinite |= result == RowOutcome::kNonfinite;
    for (int i = 0; i < 3; ++i) {
      if (diagnostics[i] != nullptr) diagnostics[i][r] = row[i];
    }
  }
  return outcome;
}

covattn_status StatusOf(const DecodeOutcome& outcome) {
  if (outcome.nonfinite) return COVATTN_ERR_NONFINITE;
  return outcome.masked ? COVATTN_FULLY_MASKED : COVATTN_OK;
}

// Tokens [begin, end) of a segment as a segment of its own: K and V (and an
// int8 segment's scales) moved on by `begin` tokens, positions counted from
// there (begin <= first_position, so the first query still sees the range's
// first token).
Segment SegmentTokens(const Segment& seg, size_t begin, size_t end) {
  const size_t elem = KvElementSize(seg.dtype);
  Segment range = seg;
  range.k = static_cast<const unsigned char*>(seg.k) + begin * seg.k_token_stride * elem;
  range.v = static_cast<const unsigned char*>(seg.v) + begin * seg.v_token_stride * elem;
  if (seg.dtype == COVATTN_INT8) {
    range.int8_scales.k_scale += begin * seg.int8_scales.k_token_stride;
    range.int8_scales.v_scale += begin * seg.int8_scales.v_token_stride;
  }
  range.n_tokens = end - begin;
  range.first_position = seg.first_position - begin;
  return range;
}

// KV head h's exact tokens, in the order a split counts them.
using HeadSegments = std::array<Segment, 4>;
HeadSegments ExactSegments(const covattn_cache* cache, size_t h) {
  const KvHeadRange head{h, 1};
  return {SinkSegment(cache, head), WindowSegment(cache, head), RetainedSegment(cache, h),
          OutlierSegment(cache, h)};
}
size_t TokenCount(const HeadSegments& segments) {
  size_t n = 0;
  for (const Segment& seg : segments) n += seg.n_tokens;
  return n;
}

// Tokens [begin, end) of one KV head's exact tokens for its queries cq (one
// position) into s.exact. False if anything was not finite.
bool ExactRange(const covattn_cache* cache, const HeadSegments& segments, size_t begin, size_t end,
                const CacheQueries& cq, const ReadScratch& s) {
  ClearState(s.exact, cq.n_q_heads, cache->Dim());
  bool finite = true, empty = true;
  size_t first = 0;  // the segment's first token, in the head's count
  for (const Segment& seg : segments) {
    const size_t b = std::max(begin, first), e = std::min(end, first + seg.n_tokens);
    if (b < e) {
      finite &= AddSegment(cache, SegmentTokens(seg, b - first, e - first), cq, 0, cq.n_q_heads, s,
                           &empty);
    }
    first += seg.n_tokens;
  }
  return finite;
}

// A decode over a pool, either of runs of whole heads (ranges == 1): task k
// reads KV heads [FirstHead(k), FirstHead(k + 1)), one of n_tasks near-equal
// runs, into the staged outputs; or split: task h * ranges + r reads range r
// of KV head h's exact tokens into its own state, task H * ranges + h (when
// there is a summary to read) head h's summary, and the calling thread
// merges them. Each task runs on the scratch of the worker running it. The
// plan depends on the cache's counts and n_threads only.
struct ThreadedDecode {
  const covattn_cache* cache;
  const DecodeQuery* dq;
  size_t ranges, n_tasks;
  bool summary;  // split: whether tasks read the summary
  unsigned char* workers;
  size_t worker_bytes;
  float* out;             // staged, [n_q_heads][head_dim]
  float* diagnostics[3];  // staged, [n_q_heads] each, null where the caller wants none
  unsigned char* states;  // split: one state per range task
  size_t state_bytes;
  float *summary_readout, *summary_log_z, *summary_ess;  // split: [n_q_heads] rows
  PoolTasks* tasks;
  std::atomic<bool> masked{false}, nonfinite{false};

  size_t Group() const { return dq->n_q_heads / cache->Heads(); }
  size_t FirstHead(size_t task) const { return task * cache->Heads() / n_tasks; }
  size_t RangeTasks() const { return cache->Heads() * ranges; }
  ReadScratch Worker(size_t thread) const {
    return CarveReadScratch(workers + thread * worker_bytes, dq->n_q_heads, dq->n_q_heads,
                            cache->Dim(), /*query_copy=*/false);
  }
  covattn_partial State(size_t task) const {
    float* f = reinterpret_cast<float*>(states + task * state_bytes);
    return covattn_partial{f, f + Group(), f + 2 * Group()};
  }
  // The queries of KV head h, one position.
  CacheQueries HeadQueries(size_t h) const {
    const size_t d = cache->Dim(), group = Group();
    return CacheQueries{dq->q + h * group * d, 1, group, group * d, d, dq->scale};
  }
};

void RunHeadsTask(ThreadedDecode& call, size_t thread, size_t task) {
  const size_t d = call.cache->Dim();
  const KvHeadRange heads{call.FirstHead(task), call.FirstHead(task + 1) - call.FirstHead(task)};
  const size_t row = heads.first * call.Group();
  float* diagnostics[3];
  for (int i = 0; i < 3; ++i) {
    diagnostics[i] = call.diagnostics[i] != nullptr ? call.diagnostics[i] + row : nullptr;
  }
  const DecodeOutcome outcome = DecodeHeads(call.cache, *call.dq, heads, call.Worker(thread),
                                            call.out + row * d, diagnostics);
  if (outcome.masked) call.masked.store(true);
  if (outcome.nonfinite) call.nonfinite.store(true);
}

// Range r of KV head h's exact tokens, cut at chunk boundaries of the head's
// count, into the task's state.
void RunRangeTask(ThreadedDecode& call, size_t thread, size_t task) {
  const size_t h = task / call.ranges, r = task % call.ranges;
  const HeadSegments segments = ExactSegments(call.cache, h);
  const size_t n = TokenCount(segments);
  auto begin = [&](size_t k) { return RangeBegin(k, n, call.ranges, kChunkTokens); };
  ReadScratch s = call.Worker(thread);
  s.exact = call.State(task);
  if (!ExactRange(call.cache, segments, begin(r), begin(r + 1), call.HeadQueries(h), s)) {
    call.nonfinite.store(true);
  }
}

// KV head h's summary readout into its rows of the summary arrays. A readout
// that is not finite counts as none (log Z -inf), as in DecodeHeads.
void RunSummaryTask(ThreadedDecode& call, size_t thread, size_t h) {
  const size_t d = call.cache->Dim(), group = call.Group(), row = h * group;
  ReadScratch s = call.Worker(thread);
  s.readout = call.summary_readout + row * d;
  s.log_z = call.summary_log_z + row;
  s.ess = call.summary_ess + row;
  bool nonfinite = false;
  const CacheQueries cq = call.HeadQueries(h);
  if (!SummaryPart(call.cache, KvHeadRange{h, 1}, cq.q, group, cq.scale,
                   call.dq->diagnostics[1] != nullptr, s, &nonfinite)) {
    std::fill(s.log_z, s.log_z + group, -std::numeric_limits<float>::infinity());
  }
  if (nonfinite) call.nonfinite.store(true);
}

void RunDecodeTask(void* context, size_t thread, size_t task) {
  ThreadedDecode& call = *static_cast<ThreadedDecode*>(context);
  if (!call.tasks->Start(thread, task)) return;
  if (call.ranges == 1) {
    RunHeadsTask(call, thread, task);
  } else if (task < call.RangeTasks()) {
    RunRangeTask(call, thread, task);
  } else {
    RunSummaryTask(call, thread, task - call.RangeTasks());
  }
}

// After a split's tasks: each head's range states merged in range order,
// then with its summary, into the caller's outputs.
DecodeOutcome MergeRanges(const ThreadedDecode& call) {
  const DecodeQuery& dq = *call.dq;
  const size_t d = call.cache->Dim(), group = call.Group();
  DecodeOutcome outcome{false, call.nonfinite.load()};
  ReadScratch s{};
  s.readout = call.summary_readout;
  s.log_z = call.summary_log_z;
  s.ess = call.summary_ess;
  for (size_t h = 0; h < call.cache->Heads(); ++h) {
    s.exact = call.State(h * call.ranges);
    for (size_t r = 1; r < call.ranges; ++r) {
      outcome.nonfinite |= !MergePartialRows(group, d, s.exact, call.State(h * call.ranges + r));
    }
    for (size_t i = 0; i < group; ++i) {
      const size_t row = h * group + i;
      float diagnostics[3];
      const RowOutcome result = MergeRow(s, i, row, call.summary, d, dq.out + row * d, diagnostics);
      outcome.masked |= result == RowOutcome::kMasked;
      outcome.nonfinite |= result == RowOutcome::kNonfinite;
      for (int k = 0; k < 3; ++k) {
        if (dq.diagnostics[k] != nullptr) dq.diagnostics[k][row] = diagnostics[k];
      }
    }
  }
  return outcome;
}

covattn_status DecodeThreaded(const covattn_cache* cache, const DecodeQuery& dq,
                              const covattn_thread_pool& pool, const ThreadedLayout& layout,
                              void* scratch) {
  const size_t d = cache->Dim(), n = dq.n_q_heads, heads = cache->Heads();
  const size_t planned = PlannedThreads(pool.n_threads);
  ThreadedDecode call;
  call.cache = cache;
  call.dq = &dq;
  size_t most_tokens = 0;  // counted only when the heads are few enough to split
  for (size_t h = 0; h < heads && heads < kTasksPerThread * planned; ++h) {
    most_tokens = std::max(most_tokens, TokenCount(ExactSegments(cache, h)));
  }
  call.ranges = RangesPerHead(heads, most_tokens, planned);
  call.summary = call.ranges > 1 && cache->Summarizes() && cache->n_summarized != 0;
  call.n_tasks = call.ranges == 1 ? std::min(heads, kTasksPerThread * planned)
                                  : call.RangeTasks() + (call.summary ? heads : 0);
  unsigned char* base = AlignedScratch(scratch);
  float* stage = reinterpret_cast<float*>(base);
  call.workers = base + layout.stage_bytes;
  call.worker_bytes = layout.worker_bytes;
  call.out = stage;
  for (int i = 0; i < 3; ++i) {
    call.diagnostics[i] = dq.diagnostics[i] != nullptr ? stage + n * d + i * n : nullptr;
  }
  call.states = base + layout.states;
  call.state_bytes = layout.state_bytes;
  call.summary_readout = reinterpret_cast<float*>(base + layout.summary);
  call.summary_log_z = call.summary_readout + n * d;
  call.summary_ess = call.summary_log_z + n;
  PoolTasks tasks(call.n_tasks, pool.n_threads);
  call.tasks = &tasks;
  pool.parallel_for(pool.pool_context, call.n_tasks, RunDecodeTask, &call);
  if (!tasks.AllRanOnce()) {
    return COVATTN_ERR_INVALID_THREAD_POOL;  // nothing reached the caller
  }
  if (call.ranges > 1) return StatusOf(MergeRanges(call));
  std::copy(call.out, call.out + n * d, dq.out);
  for (int i = 0; i < 3; ++i) {
    if (dq.diagnostics[i] != nullptr) {
      std::copy(call.diagnostics[i], call.diagnostics[i] + n, dq.diagnostics[i]);
    }
  }
  return StatusOf(DecodeOutcome{call.masked.load(), call.nonfinite.load()});
}

}  // namespace
}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" {

covattn_status covattn_cache_scratch_size_threads(const covattn_cache_config* config,
                                                  size_t n_q_heads, size_t n_threads,
                                                  size_t* bytes) {
  if (config == nullptr || bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  if (n_threads == 0) return COVATTN_ERR_INVALID_THREAD_POOL;
  size_t one_thread;
  COVATTN_RETURN_IF_ERROR(covattn_cache_scratch_size(config, n_q_heads, &one_thread));
  covattn_cache_config c;
  NormalizeConfig(*config, &c);  // valid: the size above checked it
  ThreadedLayout layout;
  if (!ThreadedLayoutFor(one_thread, c, n_q_heads, n_threads, &layout)) {
    return COVATTN_ERR_SIZE_OVERFLOW;
  }
  *bytes = layout.total;
  return COVATTN_OK;
}

covattn_status covattn_cache_decode_threads(const covattn_cache* cache, const float* q,
                                            size_t n_q_heads, float scale,
                                            const covattn_thread_pool* threads, float* out,
                                            const covattn_cache_diagnostics* diagnostics,
                                            void* scratch, size_t scratch_bytes) {
  COVATTN_RETURN_IF_ERROR(CheckCache(cache));
  if (q == nullptr || out == nullptr) return COVATTN_ERR_NULL_POINTER;
  if (threads != nullptr && (threads->parallel_for == nullptr || threads->n_threads == 0)) {
    return COVATTN_ERR_INVALID_THREAD_POOL;
  }
  DecodeQuery dq{q,
                 n_q_heads,
                 scale,
                 out,
                 {diagnostics ? diagnostics->summary_share : nullptr,
                  diagnostics ? diagnostics->summary_ess : nullptr,
                  diagnostics ? diagnostics->log_z : nullptr}};
  ThreadedLayout layout{0, 0, 0, 0, 0, 0};  // set by CheckDecode when there is a pool
  COVATTN_RETURN_IF_ERROR(CheckDecode(cache, dq, threads, scratch, scratch_bytes, &layout));
  if (dq.scale == 0.0f) dq.scale = 1.0f / std::sqrt(static_cast<float>(cache->Dim()));
  if (threads != nullptr) return DecodeThreaded(cache, dq, *threads, layout, scratch);
  return StatusOf(DecodeHeads(
      cache, dq, KvHeadRange{0, cache->Heads()},
      CarveReadScratch(scratch, n_q_heads, n_q_heads, cache->Dim(), /*query_copy=*/false), out,
      dq.diagnostics));
}

covattn_status covattn_cache_decode(const covattn_cache* cache, const float* q, size_t n_q_heads,
                                    float scale, float* out,
                                    const covattn_cache_diagnostics* diagnostics, void* scratch,
                                    size_t scratch_bytes) {
  return covattn_cache_decode_threads(cache, q, n_q_heads, scale, nullptr, out, diagnostics,
                                      scratch, scratch_bytes);
}

}  // extern "C"
