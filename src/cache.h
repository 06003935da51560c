// The bounded cache object (include/covattn/cache.h, MATH.md section 4): the
// layout of its memory (persistent state only), the layout of the caller's
// scratch, the struct at the start of the memory and its accessors, and what
// the cache's units share:
//
//   cache.cc              layout, size, scratch size, init / create / destroy /
//                         reset / info
//   cache_config.cc       defaults and the budget rules
//   cache_append.cc       appends: sinks, the window ring, the eviction pipeline
//   retention.h/.cc       the retention unit: slots that keep the best-scored
//                         tokens, the query-aware policies, the retained slots
//   cache_outliers.cc     the outlier policy and its whitening
//   cache_observe.cc      observe: the exact tokens' weights into their scores
//   cache_decode.cc       decode: the exact part, the summary, their merge
//   summary.h             the summary unit (covariance, compact)
//   cache_serialize.cc    the file format
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
// Tokens handled together by an append: eviction, slot selection and the
// summary update run once per batch, not once per token.
constexpr size_t kAppendBatch = 64;

// Byte offsets of the regions of a cache's memory, from the aligned start.
// Each region starts on a 64-byte boundary; absent regions are empty.
struct CacheLayout {
  size_t sink_k, sink_v, window_k, window_v;
  size_t retained_k, retained_v, retained_score, retained_stamp, retained_count, window_score;
  size_t outlier_k, outlier_v, outlier_score, outlier_count, whitening, whitening_mean;
  size_t refresh, summary, summary_bytes;
  size_t total;
};

// Byte offsets of an append's work arrays in the caller's scratch (from its
// first 64-byte boundary), all f32 unless said: the rows leaving the window
// with their scores and token numbers (u64), what the retained slots pass on,
// what the outlier slots pass on (exactly one row per row offered, at most),
// distances, Mahalanobis work, the whitening refresh (C_kk and mu_k, the
// Cholesky factor as f64), and the summary's own workspace.
struct AppendScratchLayout {
  size_t evicted_k, evicted_v, evicted_score, evicted_stamp;
  size_t passed_k, passed_v, fold_k, fold_v;
  size_t distances, mahalanobis, refresh_cov, refresh_mean, refresh_factor, summary_work;
  size_t total;
};

// Per-head bookkeeping of the summary and its whitening.
struct RefreshState {
  uint64_t folded;             // tokens folded into this head's summary
  uint64_t folded_at_refresh;  // 0: no whitening yet
};

// Bytes of one stored (token, head) vector of a cache's dtype: head_dim
// elements; for int8 they are padded to 4 bytes and followed by their f32
// scale (Int8ScaleOffset, cache_kernels.h), so a stored int8 region is an int8 KV cache whose
// scales sit inside it (StoredSegment in cache_decode.cc) and moves with its rows.
inline size_t StoredVectorBytes(uint32_t dtype, size_t head_dim) {
  return dtype == COVATTN_INT8 ? Int8ScaleOffset(head_dim) + sizeof(float)
                               : head_dim * DtypeSize(dtype);
}

// Sinks and window tokens held after n_tokens appends.
inline size_t SinkCount(const covattn_cache_config& c, uint64_t n_tokens) {
  return static_cast<size_t>(std::min<uint64_t>(n_tokens, c.n_sinks));
}
inline size_t WindowCount(const covattn_cache_config& c, uint64_t n_tokens) {
  const uint64_t after_sinks = n_tokens > c.n_sinks ? n_tokens - c.n_sinks : 0;
  return static_cast<size_t>(std::min<uint64_t>(after_sinks, c.window));
}

// The configuration a cache runs with: defaults filled in, the flag and the
// summary kind agreeing (cache_config.cc). A config that breaks a rule gives
// its status and, when `detail` is not null, the rule.
covattn_status NormalizeConfig(const covattn_cache_config& in, covattn_cache_config* out,
                               const char** detail = nullptr);

}  // namespace detail
}  // namespace covattn

struct covattn_cache {
  uint64_t magic;
  void* allocation;                    // what create allocated, else nullptr
  uintptr_t memory_begin, memory_end;  // the whole block, for aliasing checks
  covattn_cache_config config;         // normalized
  covattn::detail::CacheLayout layout;
  covattn::detail::AppendScratchLayout append_scratch;
  size_t elem;       // bytes of one stored element (int8: 1)
  size_t vec_bytes;  // bytes of one stored (token, head) vector (StoredVectorBytes)
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
  // A token of every head (the sinks' and the window's rows), in bytes; and
  // the strides between stored vectors in elements, as the kernels take them.
  size_t RowBytes() const { return config.n_kv_heads * vec_bytes; }
  size_t RowStride() const { return RowBytes() / elem; }
  size_t VecStride() const { return vec_bytes / elem; }
  bool Summarizes() const { return config.summary != COVATTN_SUMMARY_NONE; }
  bool HasOutliers() const { return config.n_outliers != 0; }
  bool HasRetained() const { return config.n_retained != 0; }
  size_t SinkCount() const { return covattn::detail::SinkCount(config, n_tokens); }
  size_t WindowCount() const { return covattn::detail::WindowCount(config, n_tokens); }
  // Byte offset of head h's slot `slot` in a head-major slot region of
  // `slots` slots per head (outliers, retained).
  size_t SlotRow(size_t h, size_t slots, size_t slot) const {
    return (h * slots + slot) * vec_bytes;
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

// What each call needs of the caller's scratch, for n_q_heads queries
// (cache.cc; the observe part from cache_observe.cc).
struct ScratchNeeds {
  size_t append, decode, observe, prefill;
};
covattn_status CacheScratchBytes(const covattn_cache_config& c, size_t n_q_heads,
                                 ScratchNeeds* needs);
covattn_status ObserveScratchBytes(const covattn_cache_config& c, size_t n_q_heads, size_t* bytes);
// The largest of them: covattn_cache_scratch_size's bytes (c normalized).
covattn_status CacheScratchTotal(const covattn_cache_config& c, size_t n_q_heads, size_t* bytes);

// The caller's scratch: COVATTN_ERR_SCRATCH_TOO_SMALL when null or short of
// `needed`, else its extent.
covattn_status CheckScratch(void* scratch, size_t bytes, size_t needed, Extent* extent);
// The first 64-byte boundary of the scratch.
inline unsigned char* AlignedScratch(void* scratch) {
  return reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(scratch) + 63) &
                                          ~uintptr_t{63});
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
// The sinks, token-major: token t at t * RowBytes() bytes.
template <class Cache>
KvRows<Cache> Sinks(Cache* c) {
  return ExactRows(c, c->layout.sink_k, c->layout.sink_v, 0);
}
// The window ring, token-major: slot s holds token n_sinks + s (mod window).
template <class Cache>
KvRows<Cache> Window(Cache* c) {
  return ExactRows(c, c->layout.window_k, c->layout.window_v, 0);
}
// Head h's outlier slots from `slot` on, vec_bytes apart.
template <class Cache>
KvRows<Cache> Outliers(Cache* c, size_t h, size_t slot) {
  return ExactRows(c, c->layout.outlier_k, c->layout.outlier_v,
                   c->SlotRow(h, c->config.n_outliers, slot));
}
// Head h's retained slots from `slot` on, vec_bytes apart.
template <class Cache>
KvRows<Cache> Retained(Cache* c, size_t h, size_t slot) {
  return ExactRows(c, c->layout.retained_k, c->layout.retained_v,
                   c->SlotRow(h, c->config.n_retained, slot));
}

// Head h's slot bookkeeping and whitening.
template <class Cache>
struct HeadRegions {
  Like<Cache, uint32_t>* count;        // outlier residents; the heads' counts are contiguous
  Like<Cache, float>* scores;          // their squared Mahalanobis distances
  Like<Cache, uint16_t>* whitening;    // W^T, d x d bf16 bits, zero below the diagonal
  Like<Cache, float>* whitening_mean;  // the key mean W centres on
  Like<Cache, RefreshState>* refresh;
  Like<Cache, uint32_t>* retained_count;   // retained residents (null without the slots)
  Like<Cache, float>* retained_scores;     // their retention scores
  Like<Cache, uint64_t>* retained_stamps;  // their token numbers (0-based, since reset)
  Like<Cache, float>* window_scores;       // per window slot, the token's retention score
};
template <class Cache>
HeadRegions<Cache> Head(Cache* c, size_t h) {
  const size_t d = c->Dim(), retained = c->config.n_retained;
  const bool scored = c->HasRetained();
  return {c->template At<uint32_t>(c->layout.outlier_count) + h,
          c->template At<float>(c->layout.outlier_score) + h * c->config.n_outliers,
          c->template At<uint16_t>(c->layout.whitening) + h * d * d,
          c->template At<float>(c->layout.whitening_mean) + h * d,
          c->template At<RefreshState>(c->layout.refresh) + h,
          scored ? c->template At<uint32_t>(c->layout.retained_count) + h : nullptr,
          scored ? c->template At<float>(c->layout.retained_score) + h * retained : nullptr,
          scored ? c->template At<uint64_t>(c->layout.retained_stamp) + h * retained : nullptr,
          scored ? c->template At<float>(c->layout.window_score) + h * c->config.window : nullptr};
}

// The append's checks of a block (cache_append.cc), in the order of its
// statuses, shared with prefill: present, of the cache's shape, valid K and
// V tensors (their extents) that do not overlap the cache; a token count that
// keeps the cache's count far from overflow; values the cache accepts
// (finite, |x| <= 2^40, f16-representable for an f16 cache).
covattn_status CheckAppendBlock(const covattn_cache* cache, const covattn_kv_cache* block,
                                Extent* k, Extent* v);
covattn_status CheckAppendCount(const covattn_cache* cache, const covattn_kv_cache& block);
bool AppendBlockInRange(const covattn_cache* cache, const covattn_kv_cache& block);
// Appends a block that passed every check; scratch holds append_scratch.total
// + 64 bytes.
void AppendTokens(covattn_cache* cache, const covattn_kv_cache& block, void* scratch);

// Stores a vector of head_dim f32 values as the cache's dtype (cache.cc):
// vec_bytes at dst, for int8 its scale and zero padding too.
void StoreRow(const covattn_cache* cache, const float* src, unsigned char* dst);
// n stored vectors, `stride` elements apart, as f32 rows ld apart.
void StoredRowsToF32(const covattn_cache* cache, const unsigned char* src, size_t stride, size_t n,
                     float* dst, size_t ld);

// Rows bound for the next stage of an eviction (f32, in the append scratch):
// K and V, and for the retained slots each row's score and token number.
struct StageRows {
  float* k;
  float* v;
  float* score;     // null when the next stage does not need scores
  uint64_t* stamp;  // likewise
  size_t dim;
  size_t n;

  void Add(const float* k_row, const float* v_row, float s, uint64_t t) {
    std::memcpy(k + n * dim, k_row, dim * sizeof(float));
    std::memcpy(v + n * dim, v_row, dim * sizeof(float));
    if (score != nullptr) score[n] = s, stamp[n] = t;
    ++n;
  }
  // A stored row (the cache's dtype), converted.
  void AddStored(const covattn_cache* cache, const unsigned char* k_row, const unsigned char* v_row,
                 float s, uint64_t t) {
    StoredRowsToF32(cache, k_row, 0, 1, k + n * dim, dim);
    StoredRowsToF32(cache, v_row, 0, 1, v + n * dim, dim);
    if (score != nullptr) score[n] = s, stamp[n] = t;
    ++n;
  }
};

// An append's work arrays, carved from the caller's scratch.
struct AppendScratch {
  unsigned char* base;  // 64-byte aligned
  template <typename T>
  T* At(size_t offset) const {
    return reinterpret_cast<T*>(base + offset);
  }
};

// The outlier slots (cache_outliers.cc). Offers head h's rows `in`: the most
// outlying of the residents and the newcomers keep a slot, every other row
// (a newcomer, or a resident it displaces) goes to `out`.
void OfferToOutliers(covattn_cache* cache, size_t h, const StageRows& in, StageRows* out,
                     const AppendScratch& scratch);
// After rows were folded into head h's summary: rebuilds the whitening when
// the summary has grown enough since the last one.
void RefreshWhiteningIfDue(covattn_cache* cache, size_t h, const AppendScratch& scratch);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_CACHE_H_
