// The bounded cache's memory layout and lifecycle (include/covattn/cache.h):
// size, scratch size, init, create, destroy, reset and info. The object is
// described in cache.h; configuration, appends, retention, decode and files
// have their own units.

#include "covattn/cache.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "attention.h"
#include "cache.h"
#include "cache_decode.h"
#include "covariance.h"
#include "half.h"
#include "object.h"
#include "quantize.h"
#include "retention.h"
#include "summary.h"
#include "validate.h"

namespace covattn {
namespace detail {
namespace {

bool AddBytes(size_t* offset, size_t count, size_t elem_bytes) {
  size_t bytes;
  if (MulOverflows(count, elem_bytes, &bytes) || AddOverflows(bytes, 63, &bytes)) return false;
  return !AddOverflows(*offset, bytes & ~size_t{63}, offset);
}

// Consecutive 64-byte aligned regions; remembers an overflow.
struct Regions {
  size_t at = 0;
  bool ok = true;
  void Add(size_t* field, size_t count, size_t elem_bytes) {
    *field = at;
    ok = ok && AddBytes(&at, count, elem_bytes);
  }
  // count = a * b elements
  void Add(size_t* field, size_t a, size_t b, size_t elem_bytes) {
    size_t count = 0;
    ok = ok && !MulOverflows(a, b, &count);
    Add(field, count, elem_bytes);
  }
};

// The persistent regions (the formula of covattn_cache_size).
covattn_status ComputeLayout(const covattn_cache_config& c, CacheLayout* layout) {
  const size_t vec = StoredVectorBytes(c.dtype, c.head_dim);
  const size_t d = c.head_dim, h = c.n_kv_heads;
  size_t row;  // elements of one token of all heads
  if (MulOverflows(h, d, &row)) return COVATTN_ERR_SIZE_OVERFLOW;
  const size_t retained = c.n_retained, outliers = c.n_outliers;
  CacheLayout l{};
  Regions r;
  // The exact regions hold (token, head) vectors of vec bytes.
  r.Add(&l.sink_k, c.n_sinks, h, vec);
  r.Add(&l.sink_v, c.n_sinks, h, vec);
  r.Add(&l.window_k, c.window, h, vec);
  r.Add(&l.window_v, c.window, h, vec);
  r.Add(&l.retained_k, retained, h, vec);
  r.Add(&l.retained_v, retained, h, vec);
  r.Add(&l.retained_score, retained, h, sizeof(float));
  r.Add(&l.retained_stamp, retained, h, sizeof(uint64_t));
  r.Add(&l.retained_count, retained != 0 ? h : 0, sizeof(uint32_t));
  r.Add(&l.window_score, retained != 0 ? c.window : 0, h, sizeof(float));
  r.Add(&l.outlier_k, outliers, h, vec);
  r.Add(&l.outlier_v, outliers, h, vec);
  r.Add(&l.outlier_score, outliers, h, sizeof(float));
  r.Add(&l.outlier_count, h, sizeof(uint32_t));
  const bool whiten = outliers != 0;
  // W^T as bf16 (only ranks keys: 8 bits of mantissa are plenty), full d x d
  // with zeros below the diagonal so the scoring kernel is a plain GEMM.
  r.Add(&l.whitening, whiten ? h : 0, d * d, sizeof(uint16_t));
  r.Add(&l.whitening_mean, whiten ? row : 0, sizeof(float));
  r.Add(&l.refresh, h, sizeof(RefreshState));
  if (!r.ok) return COVATTN_ERR_SIZE_OVERFLOW;
  COVATTN_RETURN_IF_ERROR(SummaryBytes(c, &l.summary_bytes));
  r.Add(&l.summary, l.summary_bytes, 1);
  if (!r.ok) return COVATTN_ERR_SIZE_OVERFLOW;
  l.total = r.at;
  *layout = l;
  return COVATTN_OK;
}

// The append's work arrays. Rows leave the window only when something keeps
// them (slots or a summary); a cache that drops everything needs none.
covattn_status ComputeAppendScratch(const covattn_cache_config& c, AppendScratchLayout* layout) {
  const size_t d = c.head_dim;
  const bool summarizes = c.summary != COVATTN_SUMMARY_NONE;
  const size_t batch = summarizes || c.n_retained != 0 ? kAppendBatch : 0;
  const bool whiten = c.n_outliers != 0;
  AppendScratchLayout l{};
  Regions r;
  r.Add(&l.evicted_k, batch, d, sizeof(float));
  r.Add(&l.evicted_v, batch, d, sizeof(float));
  r.Add(&l.evicted_score, batch, sizeof(float));
  r.Add(&l.evicted_stamp, batch, sizeof(uint64_t));
  r.Add(&l.passed_k, c.n_retained != 0 ? batch : 0, d, sizeof(float));
  r.Add(&l.passed_v, c.n_retained != 0 ? batch : 0, d, sizeof(float));
  r.Add(&l.fold_k, whiten ? batch : 0, d, sizeof(float));
  r.Add(&l.fold_v, whiten ? batch : 0, d, sizeof(float));
  r.Add(&l.distances, whiten ? batch : 0, sizeof(float));
  // Also the row-conversion buffer of every append (head_dim floats).
  r.Add(&l.mahalanobis, kMahalanobisRows, d, sizeof(float));
  r.Add(&l.refresh_cov, whiten ? d : 0, d, sizeof(float));
  r.Add(&l.refresh_mean, whiten ? d : 0, sizeof(float));
  r.Add(&l.refresh_factor, whiten ? d : 0, d, sizeof(double));
  r.Add(&l.summary_work, summarizes ? SummaryFoldWorkBytes(c) : 0, 1);
  if (!r.ok) return COVATTN_ERR_SIZE_OVERFLOW;
  l.total = r.at;
  *layout = l;
  return COVATTN_OK;
}

covattn_status CacheBytes(const covattn_cache_config& config, size_t* bytes) {
  covattn_cache_config c;
  COVATTN_RETURN_IF_ERROR(NormalizeConfig(config, &c));
  CacheLayout layout;
  COVATTN_RETURN_IF_ERROR(ComputeLayout(c, &layout));
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
    if (cache->HasRetained()) *head.retained_count = 0;
    // Unused until the first refresh, but serialized: zeros, not whatever
    // the memory held (which could be NaN and make the file unloadable).
    if (!cache->HasOutliers()) continue;
    std::fill(head.whitening, head.whitening + d * d, uint16_t{0});
    std::fill(head.whitening_mean, head.whitening_mean + d, 0.0f);
  }
  if (cache->Summarizes()) SummaryReset(cache);
}

// Makes a cache at the first 64-byte boundary of validated memory, for a
// normalized config.
covattn_cache* InitCache(void* memory, size_t bytes, const covattn_cache_config& config) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(memory);
  auto* c = reinterpret_cast<covattn_cache*>((begin + 63) & ~uintptr_t{63});
  new (c) covattn_cache();
  c->magic = kCacheMagic;
  c->allocation = nullptr;
  c->memory_begin = begin;
  c->memory_end = begin + bytes;
  c->config = config;
  ComputeLayout(c->config, &c->layout);
  ComputeAppendScratch(c->config, &c->append_scratch);
  c->elem = KvElementSize(config.dtype);
  c->vec_bytes = StoredVectorBytes(config.dtype, config.head_dim);
  // The summary region starts on a 64-byte boundary, where the summary's
  // units find it.
  if (c->Summarizes()) SummaryInit(c);
  ResetCache(c);
  return c;
}

}  // namespace

// The layout of CarveReadScratch (cache_decode.cc): the attention kernel's
// scratch and slack to align after it, two partial states of n_rows rows,
// the summary's readout, log Z and ESS of n_q_heads rows, the query copy,
// then the summary's own work.
covattn_status ReadScratchBytes(const covattn_cache_config& c, size_t n_rows, size_t n_q_heads,
                                bool query_copy, size_t* bytes) {
  const size_t d = c.head_dim;
  size_t states, rows, floats;
  if (MulOverflows(n_rows, 2 * d + 4, &states) ||
      MulOverflows(n_q_heads, (query_copy ? 2 * d : d) + 2, &rows) ||
      AddOverflows(states, rows, &floats) ||
      AddOverflows(floats, SummaryReadoutWorkFloats(c, n_q_heads) + 16, &floats) ||
      MulOverflows(floats, sizeof(float), &floats) ||
      AddOverflows(floats, AttentionScratchBytes(d) + 128, bytes)) {
    return COVATTN_ERR_SIZE_OVERFLOW;
  }
  return COVATTN_OK;
}

covattn_status CheckScratch(void* scratch, size_t bytes, size_t needed, Extent* extent) {
  if (scratch == nullptr || bytes < needed) return COVATTN_ERR_SCRATCH_TOO_SMALL;
  return MemoryExtent(scratch, bytes, extent);
}

covattn_status CacheScratchBytes(const covattn_cache_config& c, size_t n_q_heads,
                                 ScratchNeeds* needs) {
  if (n_q_heads == 0) return COVATTN_ERR_INVALID_HEAD_COUNT;
  if (n_q_heads % c.n_kv_heads != 0) return COVATTN_ERR_HEAD_MISMATCH;
  AppendScratchLayout append;
  COVATTN_RETURN_IF_ERROR(ComputeAppendScratch(c, &append));
  COVATTN_RETURN_IF_ERROR(
      ReadScratchBytes(c, n_q_heads, n_q_heads, /*query_copy=*/false, &needs->decode));
  COVATTN_RETURN_IF_ERROR(ObserveScratchBytes(c, n_q_heads, &needs->observe));
  if (AddOverflows(append.total, 64, &needs->append)) return COVATTN_ERR_SIZE_OVERFLOW;
  // Prefill reads a tile, then appends: one scratch serves both in turn.
  size_t tile_rows;
  if (MulOverflows(PrefillPositions(n_q_heads, c.n_kv_heads), n_q_heads, &tile_rows)) {
    return COVATTN_ERR_SIZE_OVERFLOW;
  }
  COVATTN_RETURN_IF_ERROR(
      ReadScratchBytes(c, tile_rows, n_q_heads, /*query_copy=*/true, &needs->prefill));
  needs->prefill = std::max(needs->prefill, needs->append);
  return COVATTN_OK;
}

covattn_status CacheScratchTotal(const covattn_cache_config& c, size_t n_q_heads, size_t* bytes) {
  ScratchNeeds needs;
  COVATTN_RETURN_IF_ERROR(CacheScratchBytes(c, n_q_heads, &needs));
  *bytes = std::max({needs.append, needs.decode, needs.observe, needs.prefill});
  return COVATTN_OK;
}

void StoreRow(const covattn_cache* cache, const float* src, unsigned char* dst) {
  const size_t n = cache->Dim();
  switch (cache->config.dtype) {
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
    case COVATTN_INT8: {
      float scale;
      QuantizeInt8Vector(src, n, reinterpret_cast<int8_t*>(dst), &scale);
      const size_t at = Int8ScaleOffset(n);
      std::memset(dst + n, 0, at - n);  // the padding, so files are the same bits
      std::memcpy(dst + at, &scale, sizeof(scale));
      break;
    }
  }
}

void StoredRowsToF32(const covattn_cache* cache, const unsigned char* src, size_t stride, size_t n,
                     float* dst, size_t ld) {
  CacheRowsToF32(cache->config.dtype, src, stride, n, cache->Dim(), dst, ld);
}

}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" {

covattn_status covattn_cache_size(const covattn_cache_config* config, size_t* bytes) {
  if (config == nullptr || bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  return CacheBytes(*config, bytes);
}

covattn_status covattn_cache_scratch_size(const covattn_cache_config* config, size_t n_q_heads,
                                          size_t* bytes) {
  if (config == nullptr || bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  size_t persistent;
  COVATTN_RETURN_IF_ERROR(CacheBytes(*config, &persistent));  // every rule of the config
  covattn_cache_config c;
  NormalizeConfig(*config, &c);
  return CacheScratchTotal(c, n_q_heads, bytes);
}

covattn_status covattn_cache_init(void* memory, size_t bytes, const covattn_cache_config* config,
                                  covattn_cache** cache) {
  if (memory == nullptr || config == nullptr || cache == nullptr) return COVATTN_ERR_NULL_POINTER;
  size_t needed;
  COVATTN_RETURN_IF_ERROR(CacheBytes(*config, &needed));
  if (bytes < needed) return COVATTN_ERR_BUFFER_TOO_SMALL;
  Extent extent;
  COVATTN_RETURN_IF_ERROR(MemoryExtent(memory, bytes, &extent));
  covattn_cache_config c;
  NormalizeConfig(*config, &c);
  *cache = InitCache(memory, bytes, c);
  return COVATTN_OK;
}

covattn_status covattn_cache_create(const covattn_cache_config* config, covattn_cache** cache) {
  if (config == nullptr || cache == nullptr) return COVATTN_ERR_NULL_POINTER;
  size_t bytes;
  COVATTN_RETURN_IF_ERROR(CacheBytes(*config, &bytes));
  covattn_cache_config c;
  NormalizeConfig(*config, &c);
  return CreateObject(
      bytes, [&](void* memory) { return InitCache(memory, bytes, c); }, cache);
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
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const HeadRegions<const covattn_cache> head = Head(cache, h);
    n_exact += *head.count;
    if (cache->HasRetained()) n_exact += *head.retained_count;
  }
  *info = covattn_cache_info{
      cache->config,    cache->n_tokens, cache->n_summarized,
      cache->n_dropped, n_exact,         cache->memory_end - cache->memory_begin};
  return COVATTN_OK;
}

}  // extern "C"
