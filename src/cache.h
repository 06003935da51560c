// The bounded cache object (include/covattn/cache.h, MATH.md section 4): the
// layout of its memory, the struct at the start of that memory and its
// accessors, and what the cache's units share:
//
//   cache.cc            layout, init / create / destroy / reset / info
//   cache_append.cc     appends: sinks, the window ring, eviction, folding
//   cache_outliers.cc   the outlier slots of each head and their whitening
//   cache_decode.cc     decode: the exact part, the summary, their merge
//   cache_serialize.cc  the file format
//
// Everything here runs on validated arguments; the C entry points validate.
#ifndef COVATTN_SRC_CACHE_H_
#define COVATTN_SRC_CACHE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cache_kernels.h"
#include "covariance_state.h"
#include "covattn/cache.h"
#include "object.h"
#include "validate.h"

namespace covattn {
namespace detail {

constexpr uint64_t kCacheMagic = 0x4548434143564f43ull;  // "COVCACHE"
// Tokens handled together by an append: eviction, outlier selection and the
// summary update run once per batch, not once per token.
constexpr size_t kAppendBatch = 64;

// Byte offsets of the regions of a cache's memory, from the aligned start.
struct CacheLayout {
  size_t sink_k, sink_v, window_k, window_v, outlier_k, outlier_v;
  size_t outlier_score, outlier_count, whitening, whitening_mean, refresh;
  size_t summary, summary_bytes;
  // The append work area: evicted rows and fold rows (K and V, f32; up to two
  // fold rows per evicted token: the token or the resident it displaces),
  // distances, Mahalanobis work, and the whitening refresh (C_kk and mu_k as
  // f32, the Cholesky factor as f64).
  size_t evicted_k, evicted_v, fold_k, fold_v, distances, mahalanobis, refresh_cov, refresh_mean,
      refresh_factor;
  size_t total;
};

// Per-head bookkeeping of the summary and its whitening.
struct RefreshState {
  uint64_t folded;             // tokens folded into this head's summary
  uint64_t folded_at_refresh;  // 0: no whitening yet
};

// Sinks and window tokens held after n_tokens appends.
inline size_t SinkCount(const covattn_cache_config& c, uint64_t n_tokens) {
  return static_cast<size_t>(std::min<uint64_t>(n_tokens, c.n_sinks));
}
inline size_t WindowCount(const covattn_cache_config& c, uint64_t n_tokens) {
  const uint64_t after_sinks = n_tokens > c.n_sinks ? n_tokens - c.n_sinks : 0;
  return static_cast<size_t>(std::min<uint64_t>(after_sinks, c.window));
}

}  // namespace detail
}  // namespace covattn

struct covattn_cache {
  uint64_t magic;
  void* allocation;                    // what create allocated, else nullptr
  uintptr_t memory_begin, memory_end;  // the whole block, for aliasing checks
  covattn_cache_config config;
  covattn::detail::CacheLayout layout;
  size_t elem;  // bytes of one stored element
  uint64_t n_tokens, n_summarized, n_dropped;

  // The regions start this far into the (64-byte aligned) object.
  static constexpr size_t kHeaderBytes = 512;

  template <typename T>
  T* At(size_t offset) {
    return reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(this) + kHeaderBytes + offset);
  }
  template <typename T>
  const T* At(size_t offset) const {
    return reinterpret_cast<const T*>(reinterpret_cast<const unsigned char*>(this) + kHeaderBytes +
                                      offset);
  }

  size_t Dim() const { return config.head_dim; }
  size_t Heads() const { return config.n_kv_heads; }
  size_t RowElems() const { return config.n_kv_heads * config.head_dim; }
  bool Summarizes() const { return (config.flags & COVATTN_CACHE_DROP_EVICTED) == 0; }
  bool HasOutliers() const { return config.n_outliers != 0; }
  size_t SinkCount() const { return covattn::detail::SinkCount(config, n_tokens); }
  size_t WindowCount() const { return covattn::detail::WindowCount(config, n_tokens); }
  // Byte offset of head h's outlier slot `slot` in the outlier K (or V) region.
  size_t OutlierRow(size_t h, size_t slot) const {
    return (h * config.n_outliers + slot) * Dim() * elem;
  }
};

namespace covattn {
namespace detail {

static_assert(sizeof(covattn_cache) <= covattn_cache::kHeaderBytes, "cache header");

inline covattn_status CheckCache(const covattn_cache* cache) {
  return CheckObject(cache, kCacheMagic);
}

inline Extent CacheExtent(const covattn_cache* cache) {
  return Extent{cache->memory_begin, cache->memory_end};
}

// The regions, for a cache or a const cache (Cache is covattn_cache or
// const covattn_cache): the pointers are as const as the cache, one accessor
// serves both, and nothing casts constness away.
template <class Cache, typename T>
using Like = std::conditional_t<std::is_const_v<Cache>, const T, T>;

// K and V rows of an exact region, at the same byte offset in each.
template <class Cache>
struct KvRows {
  Like<Cache, unsigned char>* k;
  Like<Cache, unsigned char>* v;
};
template <class Cache>
KvRows<Cache> ExactRows(Cache* c, size_t k_region, size_t v_region, size_t offset) {
  return {c->template At<unsigned char>(k_region) + offset,
          c->template At<unsigned char>(v_region) + offset};
}
// The sinks, token-major: token t at t * RowElems() elements.
template <class Cache>
KvRows<Cache> Sinks(Cache* c) {
  return ExactRows(c, c->layout.sink_k, c->layout.sink_v, 0);
}
// The window ring, token-major: slot s holds token n_sinks + s (mod window).
template <class Cache>
KvRows<Cache> Window(Cache* c) {
  return ExactRows(c, c->layout.window_k, c->layout.window_v, 0);
}
// Head h's outlier slots from `slot` on, head_dim elements apart.
template <class Cache>
KvRows<Cache> Outliers(Cache* c, size_t h, size_t slot) {
  return ExactRows(c, c->layout.outlier_k, c->layout.outlier_v, c->OutlierRow(h, slot));
}

// Head h's outlier bookkeeping and whitening.
template <class Cache>
struct HeadRegions {
  Like<Cache, uint32_t>* count;        // residents; the heads' counts are contiguous
  Like<Cache, float>* scores;          // their squared Mahalanobis distances
  Like<Cache, uint16_t>* whitening;    // W^T, d x d bf16 bits, zero below the diagonal
  Like<Cache, float>* whitening_mean;  // the key mean W centres on
  Like<Cache, RefreshState>* refresh;
};
template <class Cache>
HeadRegions<Cache> Head(Cache* c, size_t h) {
  const size_t d = c->Dim();
  return {c->template At<uint32_t>(c->layout.outlier_count) + h,
          c->template At<float>(c->layout.outlier_score) + h * c->config.n_outliers,
          c->template At<uint16_t>(c->layout.whitening) + h * d * d,
          c->template At<float>(c->layout.whitening_mean) + h * d,
          c->template At<RefreshState>(c->layout.refresh) + h};
}

// The summary's covariance state; null without one (DROP_EVICTED).
template <class Cache>
auto* Summary(Cache* c) {
  return c->Summarizes() ? c->template At<covattn_cov_state>(c->layout.summary) : nullptr;
}
// An f32 array of the append work area.
inline float* Work(covattn_cache* c, size_t offset) { return c->At<float>(offset); }

// Stores n f32 values as the cache's dtype (cache.cc).
void StoreRow(uint32_t dtype, const float* src, size_t n, unsigned char* dst);

// Rows bound for the summary, f32, in the append work area.
struct FoldRows {
  float* k;
  float* v;
  size_t dim;
  size_t n;

  void Add(const float* k_row, const float* v_row) {
    std::memcpy(k + n * dim, k_row, dim * sizeof(float));
    std::memcpy(v + n * dim, v_row, dim * sizeof(float));
    ++n;
  }
  // A stored row (the cache's dtype), converted.
  void AddStored(uint32_t dtype, const unsigned char* k_row, const unsigned char* v_row) {
    CacheRowsToF32(dtype, k_row, 0, 1, dim, k + n * dim, dim);
    CacheRowsToF32(dtype, v_row, 0, 1, dim, v + n * dim, dim);
    ++n;
  }
};

// The outlier slots (cache_outliers.cc). Offers head h's n evicted rows (f32,
// oldest first, in the evicted work arrays): the most outlying of the
// residents and the newcomers keep a slot, every other row (a newcomer, or a
// resident it displaces) goes to `fold`.
void OfferToOutliers(covattn_cache* cache, size_t h, const float* k, const float* v, size_t n,
                     FoldRows* fold);
// After rows were folded into head h's summary: rebuilds the whitening when
// the summary has grown enough since the last one.
void RefreshWhiteningIfDue(covattn_cache* cache, size_t h);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_CACHE_H_
