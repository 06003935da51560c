// The bounded cache's memory layout and lifecycle (include/covattn/cache.h):
// size, init, create, destroy, reset and info. The object is described in
// cache.h; appends, decode and files have their own units.

#include "covattn/cache.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "cache.h"
#include "covariance.h"
#include "half.h"
#include "object.h"
#include "validate.h"

namespace covattn {
namespace detail {
namespace {

constexpr uint32_t kKnownFlags = COVATTN_CACHE_DROP_EVICTED;

// The budget rules of cache.h, and the shape.
covattn_status CheckConfig(const covattn_cache_config& c) {
  if (DtypeSize(c.dtype) == 0) return COVATTN_ERR_UNSUPPORTED_DTYPE;
  if (c.head_dim == 0 || c.head_dim > COVATTN_MAX_HEAD_DIM) return COVATTN_ERR_INVALID_HEAD_DIM;
  if (c.n_kv_heads == 0) return COVATTN_ERR_INVALID_HEAD_COUNT;
  if ((c.flags & ~kKnownFlags) != 0) return COVATTN_ERR_INVALID_BUDGET;
  const bool drop = (c.flags & COVATTN_CACHE_DROP_EVICTED) != 0;
  if (!drop && !(c.forgetting > 0.0f && c.forgetting <= 1.0f)) {
    return COVATTN_ERR_INVALID_FORGETTING;
  }
  // Without a summary nothing would hold evicted tokens' statistics, and the
  // outlier score needs the summary's covariance.
  if (drop && (c.n_outliers != 0 || (c.n_sinks == 0 && c.window == 0))) {
    return COVATTN_ERR_INVALID_BUDGET;
  }
  return COVATTN_OK;
}

bool AddBytes(size_t* offset, size_t count, size_t elem_bytes) {
  size_t bytes;
  if (MulOverflows(count, elem_bytes, &bytes) || AddOverflows(bytes, 63, &bytes)) return false;
  return !AddOverflows(*offset, bytes & ~size_t{63}, offset);
}

covattn_status ComputeLayout(const covattn_cache_config& c, CacheLayout* layout) {
  COVATTN_RETURN_IF_ERROR(CheckConfig(c));
  const size_t elem = DtypeSize(c.dtype);
  const bool drop = (c.flags & COVATTN_CACHE_DROP_EVICTED) != 0;
  const size_t d = c.head_dim, h = c.n_kv_heads;
  size_t row;  // elements of one token of all heads
  if (MulOverflows(h, d, &row)) return COVATTN_ERR_SIZE_OVERFLOW;
  CacheLayout l{};
  size_t at = 0, n = 0;
  bool ok = true;
  auto region = [&](size_t* field, size_t count, size_t elem_bytes) {
    *field = at;
    ok = ok && AddBytes(&at, count, elem_bytes);
  };
  ok = ok && !MulOverflows(c.n_sinks, row, &n);
  region(&l.sink_k, n, elem);
  region(&l.sink_v, n, elem);
  ok = ok && !MulOverflows(c.window, row, &n);
  region(&l.window_k, n, elem);
  region(&l.window_v, n, elem);
  ok = ok && !MulOverflows(c.n_outliers, row, &n);
  region(&l.outlier_k, n, elem);
  region(&l.outlier_v, n, elem);
  ok = ok && !MulOverflows(c.n_outliers, h, &n);
  region(&l.outlier_score, n, sizeof(float));
  region(&l.outlier_count, h, sizeof(uint32_t));
  const bool whiten = c.n_outliers != 0;
  // W^T as bf16 (only ranks keys: 8 bits of mantissa are plenty), full d x d
  // with zeros below the diagonal so the scoring kernel is a plain GEMM.
  region(&l.whitening, whiten ? h * d * d : 0, sizeof(uint16_t));
  region(&l.whitening_mean, whiten ? row : 0, sizeof(float));
  region(&l.refresh, h, sizeof(RefreshState));
  if (!ok) return COVATTN_ERR_SIZE_OVERFLOW;
  l.summary_bytes = 0;
  if (!drop) COVATTN_RETURN_IF_ERROR(CovStateBytes(h, d, &l.summary_bytes));
  region(&l.summary, l.summary_bytes, 1);
  const size_t batch = drop ? 0 : kAppendBatch;  // dropped tokens need no staging
  region(&l.evicted_k, batch * d, sizeof(float));
  region(&l.evicted_v, batch * d, sizeof(float));
  region(&l.fold_k, 2 * batch * d, sizeof(float));
  region(&l.fold_v, 2 * batch * d, sizeof(float));
  region(&l.distances, batch, sizeof(float));
  region(&l.mahalanobis, kMahalanobisRows * d, sizeof(float));
  region(&l.refresh_cov, whiten ? d * d : 0, sizeof(float));
  region(&l.refresh_mean, whiten ? d : 0, sizeof(float));
  region(&l.refresh_factor, whiten ? d * d : 0, sizeof(double));
  if (!ok) return COVATTN_ERR_SIZE_OVERFLOW;
  l.total = at;
  *layout = l;
  return COVATTN_OK;
}

covattn_status CacheBytes(const covattn_cache_config& config, size_t* bytes) {
  CacheLayout layout;
  COVATTN_RETURN_IF_ERROR(ComputeLayout(config, &layout));
  if (AddOverflows(layout.total, covattn_cache::kHeaderBytes + 64, bytes)) {
    return COVATTN_ERR_SIZE_OVERFLOW;
  }
  return COVATTN_OK;
}

void ResetCache(covattn_cache* cache) {
  cache->n_tokens = cache->n_summarized = cache->n_dropped = 0;
  const size_t d = cache->Dim();
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const HeadRegions<covattn_cache> head = Head(cache, h);
    *head.count = 0;
    *head.refresh = RefreshState{0, 0};
    // Unused until the first refresh, but serialized: zeros, not whatever
    // the memory held (which could be NaN and make the file unloadable).
    if (!cache->HasOutliers()) continue;
    std::fill(head.whitening, head.whitening + d * d, uint16_t{0});
    std::fill(head.whitening_mean, head.whitening_mean + d, 0.0f);
  }
  if (cache->Summarizes()) CovStateReset(Summary(cache));
}

// Makes a cache at the first 64-byte boundary of validated memory.
covattn_cache* InitCache(void* memory, size_t bytes, const covattn_cache_config& config) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(memory);
  auto* c = reinterpret_cast<covattn_cache*>((begin + 63) & ~uintptr_t{63});
  new (c) covattn_cache();
  c->magic = kCacheMagic;
  c->allocation = nullptr;
  c->memory_begin = begin;
  c->memory_end = begin + bytes;
  c->config = config;
  if (c->config.flags & COVATTN_CACHE_DROP_EVICTED) c->config.forgetting = 1.0f;
  ComputeLayout(c->config, &c->layout);
  c->elem = DtypeSize(config.dtype);
  if (c->Summarizes()) {
    // The summary region starts on a 64-byte boundary: the state sits at its
    // start, where Summary() finds it. Heads fold different tokens.
    CovStateInit(c->At<unsigned char>(c->layout.summary), c->layout.summary_bytes,
                 config.n_kv_heads, config.head_dim, config.forgetting,
                 covattn_cov_state::kIndependentHeads);
  }
  ResetCache(c);
  return c;
}

}  // namespace

void StoreRow(uint32_t dtype, const float* src, size_t n, unsigned char* dst) {
  switch (dtype) {
    case COVATTN_F32:
      std::memcpy(dst, src, n * sizeof(float));
      break;
    case COVATTN_F16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t bits = F16BitsFromF32(src[i]);
        std::memcpy(dst + 2 * i, &bits, 2);
      }
      break;
    case COVATTN_BF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t bits = BF16BitsFromF32(src[i]);
        std::memcpy(dst + 2 * i, &bits, 2);
      }
      break;
  }
}

}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" {

covattn_status covattn_cache_size(const covattn_cache_config* config, size_t* bytes) {
  if (config == nullptr || bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  return CacheBytes(*config, bytes);
}

covattn_status covattn_cache_init(void* memory, size_t bytes, const covattn_cache_config* config,
                                  covattn_cache** cache) {
  if (memory == nullptr || config == nullptr || cache == nullptr) return COVATTN_ERR_NULL_POINTER;
  size_t needed;
  COVATTN_RETURN_IF_ERROR(CacheBytes(*config, &needed));
  if (bytes < needed) return COVATTN_ERR_BUFFER_TOO_SMALL;
  Extent extent;
  COVATTN_RETURN_IF_ERROR(MemoryExtent(memory, bytes, &extent));
  *cache = InitCache(memory, bytes, *config);
  return COVATTN_OK;
}

covattn_status covattn_cache_create(const covattn_cache_config* config, covattn_cache** cache) {
  if (config == nullptr || cache == nullptr) return COVATTN_ERR_NULL_POINTER;
  size_t bytes;
  COVATTN_RETURN_IF_ERROR(CacheBytes(*config, &bytes));
  return CreateObject(
      bytes, [&](void* memory) { return InitCache(memory, bytes, *config); }, cache);
}

void covattn_cache_destroy(covattn_cache* cache) { DestroyObject(cache, kCacheMagic); }

covattn_status covattn_cache_reset(covattn_cache* cache) {
  COVATTN_RETURN_IF_ERROR(CheckCache(cache));
  ResetCache(cache);
  return COVATTN_OK;
}

covattn_status covattn_cache_info_get(const covattn_cache* cache, covattn_cache_info* info) {
  COVATTN_RETURN_IF_ERROR(CheckCache(cache));
  if (info == nullptr) return COVATTN_ERR_NULL_POINTER;
  size_t n_exact = (cache->SinkCount() + cache->WindowCount()) * cache->Heads();
  for (size_t h = 0; h < cache->Heads(); ++h) n_exact += *Head(cache, h).count;
  *info = covattn_cache_info{
      cache->config,    cache->n_tokens, cache->n_summarized,
      cache->n_dropped, n_exact,         cache->memory_end - cache->memory_begin};
  return COVATTN_OK;
}

}  // extern "C"
