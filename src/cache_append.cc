// Appends to the bounded cache (include/covattn/cache.h): the first tokens
// become sinks, the rest enter the window ring, and what leaves the window
// goes to the outlier slots (cache_outliers.cc), the summary, or nowhere
// (DROP_EVICTED). Batches of kAppendBatch tokens bound the work area.

#include <algorithm>
#include <cstring>

#include "cache.h"
#include "covariance.h"

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
  const size_t d = cache->Dim(), bytes = d * cache->elem;
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const unsigned char* k = block.K(t, h);
    const unsigned char* v = block.V(t, h);
    if (block.kv.dtype == cache->config.dtype) {
      std::memcpy(k_slot + h * bytes, k, bytes);
      std::memcpy(v_slot + h * bytes, v, bytes);
    } else {
      CacheRowsToF32(block.kv.dtype, k, 0, 1, d, tmp, d);
      StoreRow(cache->config.dtype, tmp, d, k_slot + h * bytes);
      CacheRowsToF32(block.kv.dtype, v, 0, 1, d, tmp, d);
      StoreRow(cache->config.dtype, tmp, d, v_slot + h * bytes);
    }
  }
}

// Byte offset of the window ring's slot for global token t (not a sink).
size_t WindowSlot(const covattn_cache* cache, uint64_t t) {
  const size_t slot = static_cast<size_t>((t - cache->config.n_sinks) % cache->config.window);
  return slot * cache->RowElems() * cache->elem;
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

// Head h's evicted rows as f32 into the evicted work arrays, oldest first;
// the batch starts at token b0 of the block.
void GatherEvicted(covattn_cache* cache, const Block& block, size_t b0, const Eviction& e, size_t h,
                   float* k, float* v) {
  const size_t d = cache->Dim(), head = h * d * cache->elem;
  const uint32_t dtype = cache->config.dtype;
  for (size_t i = 0; i < e.from_window; ++i) {
    const size_t offset = WindowSlot(cache, e.oldest + i) + head;
    CacheRowsToF32(dtype, Window(cache).k + offset, 0, 1, d, k + i * d, d);
    CacheRowsToF32(dtype, Window(cache).v + offset, 0, 1, d, v + i * d, d);
  }
  if (e.from_batch != 0) {
    CacheRowsToF32(block.kv.dtype, block.K(b0, h), block.kv.k_token_stride, e.from_batch, d,
                   k + e.from_window * d, d);
    CacheRowsToF32(block.kv.dtype, block.V(b0, h), block.kv.v_token_stride, e.from_batch, d,
                   v + e.from_window * d, d);
  }
}

// Folds rows into head h's summary and counts them.
void FoldIntoSummary(covattn_cache* cache, size_t h, const FoldRows& rows) {
  if (rows.n == 0) return;
  const size_t d = cache->Dim();
  covattn_cov_state* summary = Summary(cache);
  CovUpdateHeads(summary, CovBlock{COVATTN_F32, rows.k, rows.v, rows.n, d, 0, d, 0}, h, 1);
  cache->n_summarized += rows.n;
  RefreshState* refresh = Head(cache, h).refresh;
  refresh->folded += rows.n;
  // The state counts the tokens of its busiest head, which bounds every
  // head's weight.
  summary->n_tokens = std::max(summary->n_tokens, refresh->folded);
  if (cache->HasOutliers()) RefreshWhiteningIfDue(cache, h);
}

// One batch of tokens [b0, b1) of a validated block, none of them sinks:
// evicts what leaves the window (outlier slots or summary), then moves the
// batch into the window.
void AppendBatch(covattn_cache* cache, const Block& block, size_t b0, size_t b1) {
  const size_t d = cache->Dim(), m = b1 - b0;
  const Eviction e = PlanEviction(cache, m);
  if (!cache->Summarizes()) cache->n_dropped += e.count * cache->Heads();
  float* ev_k = Work(cache, cache->layout.evicted_k);
  float* ev_v = Work(cache, cache->layout.evicted_v);
  for (size_t h = 0; e.count != 0 && cache->Summarizes() && h < cache->Heads(); ++h) {
    GatherEvicted(cache, block, b0, e, h, ev_k, ev_v);
    FoldRows fold{Work(cache, cache->layout.fold_k), Work(cache, cache->layout.fold_v), d, 0};
    if (cache->HasOutliers()) {
      OfferToOutliers(cache, h, ev_k, ev_v, e.count, &fold);
    } else {
      for (size_t i = 0; i < e.count; ++i) fold.Add(ev_k + i * d, ev_v + i * d);
    }
    FoldIntoSummary(cache, h, fold);
  }
  // The batch tokens that stay enter the window ring.
  float* tmp = Work(cache, cache->layout.mahalanobis);
  for (size_t i = e.from_batch; i < m; ++i) {
    const size_t offset = WindowSlot(cache, cache->n_tokens + i);
    StoreToken(cache, block, b0 + i, Window(cache).k + offset, Window(cache).v + offset, tmp);
  }
  cache->n_tokens += m;
}

}  // namespace
}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" {

covattn_status covattn_cache_append(covattn_cache* cache, const covattn_kv_cache* block) {
  COVATTN_RETURN_IF_ERROR(CheckCache(cache));
  COVATTN_RETURN_IF_ERROR(CheckKvBlock(block, cache->Heads(), cache->Dim(), CacheExtent(cache)));
  if (block->n_tokens > UINT64_MAX / 2 - cache->n_tokens) return COVATTN_ERR_SIZE_OVERFLOW;
  if (block->n_tokens == 0) return COVATTN_OK;
  // Refuse bad values before anything changes (the summary would refuse them
  // too, but only after the window had moved).
  if (!CovBlockInRange(CovBlockOf(*block), cache->Heads(), cache->Dim(),
                       cache->config.dtype == COVATTN_F16)) {
    return COVATTN_ERR_NONFINITE;
  }
  const Block tokens{*block, DtypeSize(block->dtype)};
  size_t b = 0;
  float* tmp = Work(cache, cache->layout.mahalanobis);
  for (; b < block->n_tokens && cache->n_tokens < cache->config.n_sinks; ++b, ++cache->n_tokens) {
    const size_t offset = static_cast<size_t>(cache->n_tokens) * cache->RowElems() * cache->elem;
    StoreToken(cache, tokens, b, Sinks(cache).k + offset, Sinks(cache).v + offset, tmp);
  }
  // Batches bound the work area; with no window every token is evicted at once.
  for (; b < block->n_tokens; b += kAppendBatch) {
    AppendBatch(cache, tokens, b, std::min(block->n_tokens, b + kAppendBatch));
  }
  return COVATTN_OK;
}

}  // extern "C"
