// Appends to the bounded cache (include/covattn/cache.h): the first tokens
// become sinks, the rest enter the window ring, and what leaves the window
// passes through the eviction pipeline: the retained slots (retention.h),
// the outlier slots (cache_outliers.cc), then the summary (summary.h) or
// nowhere. Batches of kAppendBatch tokens bound the work arrays, which live
// in the caller's scratch.

#include <algorithm>
#include <cstring>

#include "cache.h"
#include "covariance.h"
#include "retention.h"
#include "summary.h"

namespace covattn {
namespace detail {
namespace {

// A validated block of tokens to append.
struct Block {
  const covattn_kv_cache& kv;
  size_t elem;  // bytes of one of its elements

  // Token t's row of head h.
  const unsigned char* K(size_t t, size_t h) const {
    return static_cast<const unsigned char*>(kv.k) +
           (t * kv.k_token_stride + h * kv.k_head_stride) * elem;
  }
  const unsigned char* V(size_t t, size_t h) const {
    return static_cast<const unsigned char*>(kv.v) +
           (t * kv.v_token_stride + h * kv.v_head_stride) * elem;
  }
};

// Copies token t (all heads) of a validated block into a token-major slot of
// the cache, converting the element type through tmp (head_dim floats).
void StoreToken(covattn_cache* cache, const Block& block, size_t t, unsigned char* k_slot,
                unsigned char* v_slot, float* tmp) {
  const size_t d = cache->Dim(), vec = cache->vec_bytes;
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const unsigned char* k = block.K(t, h);
    const unsigned char* v = block.V(t, h);
    if (block.kv.dtype == cache->config.dtype) {  // a float dtype: blocks are never int8
      std::memcpy(k_slot + h * vec, k, vec);
      std::memcpy(v_slot + h * vec, v, vec);
    } else {
      CacheRowsToF32(block.kv.dtype, k, 0, 1, d, tmp, d);
      StoreRow(cache, tmp, k_slot + h * vec);
      CacheRowsToF32(block.kv.dtype, v, 0, 1, d, tmp, d);
      StoreRow(cache, tmp, v_slot + h * vec);
    }
  }
}

// The window ring's slot for global token t (not a sink).
size_t WindowSlot(const covattn_cache* cache, uint64_t t) {
  return static_cast<size_t>((t - cache->config.n_sinks) % cache->config.window);
}

// What a batch of m tokens evicts: the oldest window tokens first, then
// batch tokens that never enter the window.
struct Eviction {
  size_t count, from_window, from_batch;
  uint64_t oldest;  // global index of the oldest window token
};

Eviction PlanEviction(const covattn_cache* cache, size_t m) {
  const size_t window = cache->config.window, window_count = cache->WindowCount();
  Eviction e;
  e.count = window_count + m > window ? window_count + m - window : 0;
  e.from_window = std::min(e.count, window_count);
  e.from_batch = e.count - e.from_window;
  e.oldest = cache->n_tokens - window_count;
  return e;
}

// Head h's evicted rows, oldest first, as f32 with their retention scores
// (what they earned in the window; 0 for batch tokens that never entered it)
// and token numbers; the batch starts at token b0 of the block.
StageRows GatherEvicted(covattn_cache* cache, const Block& block, size_t b0, const Eviction& e,
                        size_t h, const AppendScratch& scratch) {
  const AppendScratchLayout& l = cache->append_scratch;
  StageRows rows{scratch.At<float>(l.evicted_k),
                 scratch.At<float>(l.evicted_v),
                 scratch.At<float>(l.evicted_score),
                 scratch.At<uint64_t>(l.evicted_stamp),
                 cache->Dim(),
                 e.count};
  const size_t d = cache->Dim(), head = h * cache->vec_bytes, row = cache->RowBytes();
  const float* window_scores = Head(cache, h).window_scores;
  for (size_t i = 0; i < e.from_window; ++i) {
    const size_t slot = WindowSlot(cache, e.oldest + i);
    StoredRowsToF32(cache, Window(cache).k + slot * row + head, 0, 1, rows.k + i * d, d);
    StoredRowsToF32(cache, Window(cache).v + slot * row + head, 0, 1, rows.v + i * d, d);
    rows.score[i] = window_scores != nullptr ? window_scores[slot] : 0.0f;
    rows.stamp[i] = e.oldest + i;
  }
  if (e.from_batch != 0) {
    CacheRowsToF32(block.kv.dtype, block.K(b0, h), block.kv.k_token_stride, e.from_batch, d,
                   rows.k + e.from_window * d, d);
    CacheRowsToF32(block.kv.dtype, block.V(b0, h), block.kv.v_token_stride, e.from_batch, d,
                   rows.v + e.from_window * d, d);
    for (size_t i = 0; i < e.from_batch; ++i) {
      rows.score[e.from_window + i] = 0.0f;
      rows.stamp[e.from_window + i] = cache->n_tokens + i;
    }
  }
  return rows;
}

// Folds rows into head h's summary and counts them.
void FoldIntoSummary(covattn_cache* cache, size_t h, const StageRows& rows,
                     const AppendScratch& scratch) {
  if (rows.n == 0) return;
  cache->n_summarized += rows.n;
  Head(cache, h).refresh->folded += rows.n;
  SummaryFold(cache, h, rows.k, rows.v, rows.n,
              scratch.At<unsigned char>(cache->append_scratch.summary_work));
  if (cache->HasOutliers()) RefreshWhiteningIfDue(cache, h, scratch);
}

// Head h's evicted rows through the pipeline: retained slots, outlier
// slots, summary (or dropped).
void EvictHead(covattn_cache* cache, const Block& block, size_t b0, const Eviction& e, size_t h,
               const AppendScratch& scratch) {
  const AppendScratchLayout& l = cache->append_scratch;
  const size_t d = cache->Dim();
  StageRows rows = GatherEvicted(cache, block, b0, e, h, scratch);
  if (cache->HasRetained()) {
    StageRows passed{
        scratch.At<float>(l.passed_k), scratch.At<float>(l.passed_v), nullptr, nullptr, d, 0};
    OfferToRetained(cache, h, rows, &passed);
    rows = passed;
  }
  if (!cache->Summarizes()) {
    cache->n_dropped += rows.n;
    return;
  }
  if (cache->HasOutliers()) {
    StageRows fold{
        scratch.At<float>(l.fold_k), scratch.At<float>(l.fold_v), nullptr, nullptr, d, 0};
    OfferToOutliers(cache, h, rows, &fold, scratch);
    rows = fold;
  }
  FoldIntoSummary(cache, h, rows, scratch);
}

// One batch of tokens [b0, b1) of a validated block, none of them sinks:
// evicts what leaves the window, then moves the batch into the window (their
// retention scores start at 0).
void AppendBatch(covattn_cache* cache, const Block& block, size_t b0, size_t b1,
                 const AppendScratch& scratch) {
  const size_t m = b1 - b0;
  const Eviction e = PlanEviction(cache, m);
  if (e.count != 0) {
    if (!cache->Summarizes() && !cache->HasRetained()) {
      cache->n_dropped += e.count * cache->Heads();  // nothing keeps them: no staging
    } else {
      for (size_t h = 0; h < cache->Heads(); ++h) EvictHead(cache, block, b0, e, h, scratch);
    }
  }
  float* tmp = scratch.At<float>(cache->append_scratch.mahalanobis);
  const size_t row = cache->RowBytes();
  for (size_t i = e.from_batch; i < m; ++i) {
    const size_t slot = WindowSlot(cache, cache->n_tokens + i);
    StoreToken(cache, block, b0 + i, Window(cache).k + slot * row, Window(cache).v + slot * row,
               tmp);
    for (size_t h = 0; h < cache->Heads() && cache->HasRetained(); ++h) {
      Head(cache, h).window_scores[slot] = 0.0f;
    }
  }
  cache->n_tokens += m;
}

}  // namespace

covattn_status CheckAppendBlock(const covattn_cache* cache, const covattn_kv_cache* block,
                                Extent* k, Extent* v) {
  KvExtents extents;
  COVATTN_RETURN_IF_ERROR(
      CheckKvBlock(block, cache->Heads(), cache->Dim(), CacheExtent(cache), &extents));
  *k = extents.k, *v = extents.v;
  return COVATTN_OK;
}

covattn_status CheckAppendCount(const covattn_cache* cache, const covattn_kv_cache& block) {
  return block.n_tokens > UINT64_MAX / 2 - cache->n_tokens ? COVATTN_ERR_SIZE_OVERFLOW : COVATTN_OK;
}

bool AppendBlockInRange(const covattn_cache* cache, const covattn_kv_cache& block) {
  return CovBlockInRange(CovBlockOf(block), cache->Heads(), cache->Dim(),
                         cache->config.dtype == COVATTN_F16);
}

void AppendTokens(covattn_cache* cache, const covattn_kv_cache& block, void* scratch) {
  const Block tokens{block, DtypeSize(block.dtype)};
  const AppendScratch work_area{AlignedScratch(scratch)};
  float* tmp = work_area.At<float>(cache->append_scratch.mahalanobis);
  size_t b = 0;
  for (; b < block.n_tokens && cache->n_tokens < cache->config.n_sinks; ++b, ++cache->n_tokens) {
    const size_t offset = static_cast<size_t>(cache->n_tokens) * cache->RowBytes();
    StoreToken(cache, tokens, b, Sinks(cache).k + offset, Sinks(cache).v + offset, tmp);
  }
  // Batches bound the work area; with no window every token is evicted at once.
  for (; b < block.n_tokens; b += kAppendBatch) {
    AppendBatch(cache, tokens, b, std::min(block.n_tokens, b + kAppendBatch), work_area);
  }
}

}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" {

covattn_status covattn_cache_append(covattn_cache* cache, const covattn_kv_cache* block,
                                    void* scratch, size_t scratch_bytes) {
  COVATTN_RETURN_IF_ERROR(CheckCache(cache));
  Extent work, k, v;
  COVATTN_RETURN_IF_ERROR(CheckAppendBlock(cache, block, &k, &v));
  COVATTN_RETURN_IF_ERROR(
      CheckScratch(scratch, scratch_bytes, cache->append_scratch.total + 64, &work));
  if (work.Overlaps(CacheExtent(cache)) || work.Overlaps(k) || work.Overlaps(v)) {
    return COVATTN_ERR_ALIASING;
  }
  COVATTN_RETURN_IF_ERROR(CheckAppendCount(cache, *block));
  if (block->n_tokens == 0) return COVATTN_OK;
  // Refuse bad values before anything changes (the summary would refuse them
  // too, but only after the window had moved).
  if (!AppendBlockInRange(cache, *block)) return COVATTN_ERR_NONFINITE;
  AppendTokens(cache, *block, scratch);
  return COVATTN_OK;
}

}  // extern "C"
