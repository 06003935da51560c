// Exact attention over the caller's thread pool. When a call has few
// passes (attention.h: up to kPassRows query rows walking the cache
// together), each pass is cut into ranges of the cache, so that every thread
// streams contiguous memory whatever the layout, and the ranges' partial
// states are merged afterwards, in order, on the calling thread (MATH.md
// section 1). Otherwise (prefill, or a short cache) the rows are shared out
// in units of whole tiles. The split depends on the problem and n_threads
// only, so the results do not depend on how the pool schedules the tasks.
#include "attention_threads.h"

#include <algorithm>
#include <atomic>
#include <new>

#include "online_softmax.h"
#include "partial_state.h"
#include "pool_tasks.h"
#include "validate.h"

namespace covattn {
namespace detail {
namespace {

// Tasks per thread wanted (passes, cache ranges or runs of tiles): a late
// thread then delays the call by about half a thread's share at most.
constexpr size_t kUnitsPerThread = 2;
// Caps on units and splits, so that u * (n % units) and s * (n % splits)
// below fit in 32 bits.
constexpr size_t kMaxParts = size_t{1} << 16;
// Tiles are shared out in at most kMaxParts units; passes (fewer than
// 2 * PlannedThreads) are cut into fewer than 4 * PlannedThreads ranges.
static_assert(kMaxParts <= kMaxPoolTasks && 4 * kMaxPlannedThreads <= kMaxPoolTasks,
              "a call's tasks must fit the pool ledger");
// Split states per thread: fewer than 2 * n_threads passes are cut into at
// most ceil(2 * n_threads / passes) ranges each, so fewer than 4 * n_threads.
constexpr size_t kSplitStatesPerThread = 4;

static_assert(sizeof(AttentionOutcome) == 2, "the scratch formula in covattn.h counts 2 bytes");

size_t RoundUp16(size_t n) { return (n + 15) & ~size_t{15}; }

// Floats of one split state: m and l of up to kPassRows rows, then their o
// ([row][head_dim], as MergePartialRows reads it).
size_t SplitStateFloats(size_t head_dim) { return RoundUp16(kPassRows * (head_dim + 2)); }

// Where things are in the scratch, in floats from its first 64-byte
// boundary: each worker's attention scratch, the split states, then one
// AttentionOutcome per worker.
struct ThreadedLayout {
  size_t worker_floats, state_floats, states, outcomes;
};

ThreadedLayout LayoutFor(size_t head_dim, size_t n_threads) {
  ThreadedLayout layout;
  layout.worker_floats = AttentionScratchFor(head_dim).floats;  // a multiple of 16
  layout.state_floats = SplitStateFloats(head_dim);
  layout.states = n_threads * layout.worker_floats;
  layout.outcomes = layout.states + kSplitStatesPerThread * n_threads * layout.state_floats;
  return layout;
}

size_t CeilDiv(size_t a, size_t b) { return a / b + (a % b != 0); }

struct Plan {
  size_t per_kv_head, tiles_per_kv_head, n_tiles, n_rows;
  size_t n_units;   // passes (n_splits > 1), or near-equal runs of whole tiles
  size_t n_splits;  // cache ranges per unit
};

// First row of tile w (w == n_tiles: the number of rows).
size_t TileBegin(const Plan& plan, size_t w) {
  return w / plan.tiles_per_kv_head * plan.per_kv_head + w % plan.tiles_per_kv_head * kTileRows;
}

// Unit `unit`: pass `unit` when the passes are cut into ranges (fewer than
// 2 * n_threads of them, so walking to it is short), else a run of tiles.
AttentionRows UnitRows(const AttentionProblem& pb, const Plan& plan, size_t unit) {
  if (plan.n_splits > 1) {
    size_t begin = 0;
    for (size_t u = 0; u < unit; ++u) begin = PassEnd(pb, begin, plan.n_rows);
    return AttentionRows{begin, PassEnd(pb, begin, plan.n_rows), false};
  }
  return AttentionRows{TileBegin(plan, Cut(unit, plan.n_tiles, plan.n_units)),
                       TileBegin(plan, Cut(unit + 1, plan.n_tiles, plan.n_units)), false};
}

// The tokens any row of a pass may see (as the kernel's pass walks them).
VisibleTokens PassTokens(const AttentionProblem& pb, const AttentionRows& rows) {
  size_t first = RowAt(pb, rows.begin).q_token, last = first;
  for (size_t r = rows.begin + 1; r < rows.end; ++r) {
    first = std::min(first, RowAt(pb, r).q_token);
    last = std::max(last, RowAt(pb, r).q_token);
  }
  return VisibleTokensOf(pb, pb.n_past + first, pb.n_past + last);
}

size_t Count(const VisibleTokens& v) {
  return (v.sink_end - v.sink_begin) + (v.window_end - v.window_begin);
}

Plan MakePlan(const AttentionProblem& pb, size_t n_threads) {
  Plan plan;
  plan.per_kv_head = RowsPerKvHead(pb);
  plan.tiles_per_kv_head = CeilDiv(plan.per_kv_head, kTileRows);
  plan.n_tiles = pb.n_kv_heads * plan.tiles_per_kv_head;
  plan.n_rows = pb.n_kv_heads * plan.per_kv_head;
  const size_t wanted = kUnitsPerThread * n_threads;
  // Count the passes, up to `wanted`, and the tokens the longest one sees.
  size_t n_passes = 0, longest = 0;
  for (size_t begin = 0; begin < plan.n_rows && n_passes < wanted; ++n_passes) {
    const AttentionRows rows{begin, PassEnd(pb, begin, plan.n_rows), false};
    longest = std::max(longest, Count(PassTokens(pb, rows)));
    begin = rows.end;
  }
  if (n_passes < wanted) {
    plan.n_units = n_passes;
    plan.n_splits = std::min(
        {CeilDiv(wanted, n_passes), std::max<size_t>(1, longest / kMinSplitTokens), kMaxParts});
    if (plan.n_splits > 1) return plan;
  }
  // Tiles shared out, at least `wanted` units when there are tiles enough.
  plan.n_units =
      std::min({std::max(wanted, CeilDiv(plan.n_rows, kPassRows)), plan.n_tiles, kMaxParts});
  plan.n_splits = 1;
  return plan;
}

// Cache range s of `splits` of a unit's visible tokens (counted sinks first),
// cut into near-equal runs at chunk boundaries from the first visible token.
void SplitRange(const VisibleTokens& v, size_t s, size_t splits, size_t* begin, size_t* end) {
  const size_t n_sink = v.sink_end - v.sink_begin, n = Count(v);
  auto offset = [&](size_t k) { return RangeBegin(k, n, splits, kChunkTokens); };
  auto token = [&](size_t off) {
    return off < n_sink || v.window_begin == v.window_end ? v.sink_begin + off
                                                          : v.window_begin + (off - n_sink);
  };
  *begin = token(offset(s));
  *end = token(offset(s + 1));
}

struct ThreadedCall {
  const AttentionProblem* pb;
  const AttentionResultSink* sink;
  Plan plan;
  ThreadedLayout layout;
  float* base;
  AttentionOutcome* outcomes;  // one per worker
  PoolTasks* tasks;

  size_t Tasks() const { return plan.n_units * plan.n_splits; }
  covattn_partial SplitState(size_t task) const {
    float* s = base + layout.states + task * layout.state_floats;
    return covattn_partial{s, s + kPassRows, s + 2 * kPassRows};
  }
};

// Task `task` is split task % n_splits of unit task / n_splits.
void RunTask(void* context, size_t thread, size_t task) {
  ThreadedCall& call = *static_cast<ThreadedCall*>(context);
  if (!call.tasks->Start(thread, task)) return;
  void* scratch = call.base + thread * call.layout.worker_floats;
  AttentionOutcome* outcome = &call.outcomes[thread];
  AttentionRows rows = UnitRows(*call.pb, call.plan, task / call.plan.n_splits);
  if (call.plan.n_splits == 1) {
    RunAttentionRows(*call.pb, rows, *call.sink, scratch, outcome);
  } else {
    AttentionProblem pb = *call.pb;
    SplitRange(PassTokens(pb, rows), task % call.plan.n_splits, call.plan.n_splits, &pb.token_begin,
               &pb.token_end);
    const covattn_partial state = call.SplitState(task);
    rows.run_indexed = true;
    RunAttentionRows(pb, rows,
                     AttentionResultSink{nullptr, 0, 0, nullptr, state.m, state.l, state.o},
                     scratch, outcome);
  }
}

// Merges each unit's split states in order and writes the rows to the sink.
void MergeSplits(const ThreadedCall& call, AttentionOutcome* outcome) {
  const AttentionProblem& pb = *call.pb;
  const AttentionResultSink& sink = *call.sink;
  const size_t dim = pb.head_dim, splits = call.plan.n_splits;
  for (size_t u = 0; u < call.plan.n_units; ++u) {
    const AttentionRows rows = UnitRows(pb, call.plan, u);
    const size_t n = rows.end - rows.begin;
    const covattn_partial into = call.SplitState(u * splits);
    bool finite = true;
    for (size_t s = 1; s < splits && finite; ++s) {
      finite = MergePartialRows(n, dim, into, call.SplitState(u * splits + s));
    }
    if (!finite) {
      outcome->nonfinite = true;
      continue;
    }
    for (size_t r = 0; r < n; ++r) {
      const RowCoordinates at = RowAt(pb, rows.begin + r);
      const size_t row = at.q_token * pb.n_q_heads + at.q_head;
      const float* o = into.o + r * dim;
      if (sink.out == nullptr) {
        sink.m[row] = into.m[r];
        sink.l[row] = into.l[r];
        std::copy(o, o + dim, sink.o + row * dim);
        continue;
      }
      float* out = sink.out + at.q_token * sink.out_token_stride + at.q_head * sink.out_head_stride;
      const RowOutcome result = FinalizeRow(into.m[r], into.l[r], o, dim, /*valid=*/true, out,
                                            sink.log_z != nullptr ? sink.log_z + row : nullptr);
      outcome->fully_masked |= result == RowOutcome::kMasked;
      outcome->nonfinite |= result == RowOutcome::kNonfinite;
    }
  }
}

}  // namespace

bool ThreadedScratchBytes(size_t head_dim, size_t n_threads, size_t* bytes) {
  // 64 + n_threads * (4 * worker floats + 16 * state floats + 2), as covattn.h says.
  const size_t per_thread_floats =
      AttentionScratchFor(head_dim).floats + kSplitStatesPerThread * SplitStateFloats(head_dim);
  size_t per_thread, all;
  return !MulOverflows(per_thread_floats, sizeof(float), &per_thread) &&
         !AddOverflows(per_thread, sizeof(AttentionOutcome), &per_thread) &&
         !MulOverflows(per_thread, n_threads, &all) &&
         !AddOverflows(all, kAttentionScratchAlign, bytes);
}

bool RunAttentionThreaded(const AttentionProblem& problem, const AttentionResultSink& sink,
                          const covattn_thread_pool& pool, void* scratch,
                          AttentionOutcome* outcome) {
  ThreadedCall call;
  call.pb = &problem;
  call.sink = &sink;
  call.plan = MakePlan(problem, PlannedThreads(pool.n_threads));
  call.layout = LayoutFor(problem.head_dim, pool.n_threads);
  call.base = AlignedAttentionScratch(scratch);
  call.outcomes = reinterpret_cast<AttentionOutcome*>(call.base + call.layout.outcomes);
  for (size_t t = 0; t < pool.n_threads; ++t)
    new (&call.outcomes[t]) AttentionOutcome{false, false};
  PoolTasks tasks(call.Tasks(), pool.n_threads);
  call.tasks = &tasks;
  pool.parallel_for(pool.pool_context, call.Tasks(), RunTask, &call);
  if (!tasks.AllRanOnce()) return false;
  for (size_t t = 0; t < pool.n_threads; ++t) {
    outcome->fully_masked |= call.outcomes[t].fully_masked;
    outcome->nonfinite |= call.outcomes[t].nonfinite;
  }
  if (call.plan.n_splits > 1) MergeSplits(call, outcome);
  return true;
}

}  // namespace detail
}  // namespace covattn
