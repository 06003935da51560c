// The bounded-memory attention cache (include/covattn/cache.h, MATH.md
// section 4): exact sinks, a recent window and per-head outlier keys, plus the
// covariance summary of everything else.

#include "covattn/cache.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "bytes.h"
#include "cache_kernels.h"
#include "covariance_kernels.h"
#include "covariance_state.h"
#include "half.h"
#include "validate.h"

namespace covattn {
namespace detail {
namespace {

constexpr uint64_t kCacheMagic = 0x4548434143564f43ull;  // "COVCACHE"
// Tokens handled together by an append: eviction, outlier selection and the
// summary update run once per batch, not once per token.
constexpr size_t kAppendBatch = 64;
// Outlier scores need a covariance estimate: the whitening is first built once
// a head's summary holds this many tokens (at least 2 per dimension).
constexpr uint64_t kMinTokensForWhitening = 32;
// After that it is rebuilt when the summary has doubled, and at least every
// kMaxRefreshInterval folded tokens (forgetting keeps the weight bounded).
constexpr uint64_t kMaxRefreshInterval = 8192;
constexpr uint32_t kKnownFlags = COVATTN_CACHE_DROP_EVICTED;

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

bool AddBytes(size_t* offset, size_t count, size_t elem_bytes) {
  size_t bytes;
  if (MulOverflows(count, elem_bytes, &bytes) || AddOverflows(bytes, 63, &bytes)) return false;
  return !AddOverflows(*offset, bytes & ~size_t{63}, offset);
}

covattn_status ComputeLayout(const covattn_cache_config& c, CacheLayout* layout) {
  const size_t elem = DtypeSize(c.dtype);
  if (elem == 0) return COVATTN_ERR_UNSUPPORTED_DTYPE;
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
  if (!drop) {
    const covattn_status s = covattn_cov_state_size(h, d, &l.summary_bytes);
    if (s != COVATTN_OK) return s;
  }
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

}  // namespace
}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points and the object

struct covattn_cache {
  uint64_t magic;
  void* allocation;                    // what create allocated, else nullptr
  uintptr_t memory_begin, memory_end;  // the whole block, for aliasing checks
  covattn_cache_config config;
  CacheLayout layout;
  size_t elem;
  uint64_t n_tokens, n_summarized, n_dropped;

  static constexpr size_t kHeaderBytes = 512;

  unsigned char* Base() { return reinterpret_cast<unsigned char*>(this) + kHeaderBytes; }
  const unsigned char* Base() const { return const_cast<covattn_cache*>(this)->Base(); }
  template <typename T>
  T* At(size_t offset) {
    return reinterpret_cast<T*>(Base() + offset);
  }
  template <typename T>
  const T* At(size_t offset) const {
    return reinterpret_cast<const T*>(Base() + offset);
  }

  size_t Dim() const { return config.head_dim; }
  size_t Heads() const { return config.n_kv_heads; }
  size_t RowElems() const { return config.n_kv_heads * config.head_dim; }
  bool Summarizes() const { return (config.flags & COVATTN_CACHE_DROP_EVICTED) == 0; }
  bool HasOutliers() const { return config.n_outliers != 0; }

  covattn_cov_state* Summary() {
    return Summarizes() ? At<covattn_cov_state>(layout.summary) : nullptr;
  }
  const covattn_cov_state* Summary() const { return const_cast<covattn_cache*>(this)->Summary(); }
  size_t SinkCount() const {
    return static_cast<size_t>(std::min<uint64_t>(n_tokens, config.n_sinks));
  }
  size_t WindowCount() const {
    const uint64_t after_sinks = n_tokens > config.n_sinks ? n_tokens - config.n_sinks : 0;
    return static_cast<size_t>(std::min<uint64_t>(after_sinks, config.window));
  }
  uint32_t* OutlierCount() { return At<uint32_t>(layout.outlier_count); }
  const uint32_t* OutlierCount() const { return At<uint32_t>(layout.outlier_count); }
  float* OutlierScore(size_t h) { return At<float>(layout.outlier_score) + h * config.n_outliers; }
  unsigned char* OutlierK(size_t h, size_t slot) {
    return At<unsigned char>(layout.outlier_k) + ((h * config.n_outliers + slot) * Dim()) * elem;
  }
  unsigned char* OutlierV(size_t h, size_t slot) {
    return At<unsigned char>(layout.outlier_v) + ((h * config.n_outliers + slot) * Dim()) * elem;
  }
  uint16_t* Whitening(size_t h) { return At<uint16_t>(layout.whitening) + h * Dim() * Dim(); }
  float* WhiteningMean(size_t h) { return At<float>(layout.whitening_mean) + h * Dim(); }
  RefreshState* Refresh(size_t h) { return At<RefreshState>(layout.refresh) + h; }
  float* Work(size_t offset) { return At<float>(offset); }
};

namespace covattn {
namespace detail {
namespace {

static_assert(sizeof(covattn_cache) <= covattn_cache::kHeaderBytes, "cache header");

// Stores n f32 values as the cache's dtype.
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
    default:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t bits = BF16BitsFromF32(src[i]);
        std::memcpy(dst + 2 * i, &bits, 2);
      }
      break;
  }
}

// Copies token `t` (all heads) of a validated block into a token-major slot
// of the cache, converting the element type.
void StoreToken(covattn_cache* cache, const covattn_kv_cache& block, size_t t,
                unsigned char* k_slot, unsigned char* v_slot, float* tmp) {
  const size_t d = cache->Dim(), elem_in = DtypeSize(block.dtype);
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const auto* k = static_cast<const unsigned char*>(block.k) +
                    (t * block.k_token_stride + h * block.k_head_stride) * elem_in;
    const auto* v = static_cast<const unsigned char*>(block.v) +
                    (t * block.v_token_stride + h * block.v_head_stride) * elem_in;
    if (block.dtype == cache->config.dtype) {
      std::memcpy(k_slot + h * d * cache->elem, k, d * cache->elem);
      std::memcpy(v_slot + h * d * cache->elem, v, d * cache->elem);
    } else {
      CacheRowsToF32(block.dtype, k, 0, 1, d, tmp, d);
      StoreRow(cache->config.dtype, tmp, d, k_slot + h * d * cache->elem);
      CacheRowsToF32(block.dtype, v, 0, 1, d, tmp, d);
      StoreRow(cache->config.dtype, tmp, d, v_slot + h * d * cache->elem);
    }
  }
}

// Rebuilds head h's whitening W = L^-1 from the summary's key covariance
// (C_kk = L L^T, regularised so that rank-deficient keys still factor), then
// rescores the resident outliers under it.
void RefreshWhitening(covattn_cache* cache, size_t h) {
  const size_t d = cache->Dim();
  float* cov = cache->Work(cache->layout.refresh_cov);
  float* mean = cache->Work(cache->layout.refresh_mean);
  double* chol = cache->At<double>(cache->layout.refresh_factor);
  double weight = 0.0;
  covattn_cov_state_export(cache->Summary(), h, &weight, mean, nullptr, cov, nullptr);
  double trace = 0.0;
  for (size_t i = 0; i < d; ++i) trace += std::max(0.0, double{cov[i * d + i]});
  // Jitter relative to the average variance keeps the factorisation defined
  // for keys confined to a subspace; it grows until the factor exists.
  double jitter = std::max(1e-6 * trace / d, 1e-12);
  for (int attempt = 0; attempt < 12; ++attempt, jitter *= 10.0) {
    bool ok = true;
    for (size_t i = 0; i < d && ok; ++i) {
      for (size_t j = 0; j <= i; ++j) {
        double sum = double{cov[i * d + j]} + (i == j ? jitter : 0.0);
        for (size_t p = 0; p < j; ++p) sum -= chol[i * d + p] * chol[j * d + p];
        if (i == j) {
          if (!(sum > 0.0)) {
            ok = false;
            break;
          }
          chol[i * d + i] = std::sqrt(sum);
        } else {
          chol[i * d + j] = sum / chol[j * d + j];
        }
      }
    }
    if (ok) break;
  }
  // W = L^-1, lower triangular, in place, column by column:
  // W[j][j] = 1 / L[j][j];  W[i][j] = -(sum_{p=j}^{i-1} L[i][p] W[p][j]) / L[i][i].
  // Column j needs only columns >= j of L, which are still intact.
  for (size_t j = 0; j < d; ++j) {
    chol[j * d + j] = 1.0 / chol[j * d + j];
    for (size_t i = j + 1; i < d; ++i) {
      double sum = 0.0;
      for (size_t p = j; p < i; ++p) sum += chol[i * d + p] * chol[p * d + j];
      chol[i * d + j] = -sum / chol[i * d + i];
    }
  }
  // W^T[j][i] = W[i][j], zero below the diagonal, as bf16.
  uint16_t* wt = cache->Whitening(h);
  for (size_t j = 0; j < d; ++j) {
    for (size_t i = 0; i < d; ++i) {
      wt[j * d + i] = i < j ? 0 : BF16BitsFromF32(static_cast<float>(chol[i * d + j]));
    }
  }
  std::memcpy(cache->WhiteningMean(h), mean, d * sizeof(float));
  RefreshState* refresh = cache->Refresh(h);
  refresh->folded_at_refresh = refresh->folded;
  // Rescore residents under the new whitening.
  const size_t count = cache->OutlierCount()[h];
  float* rows = cache->Work(cache->layout.evicted_k);  // free between batches
  float* work = cache->Work(cache->layout.mahalanobis);
  for (size_t s0 = 0; s0 < count; s0 += kAppendBatch) {
    const size_t n = std::min(kAppendBatch, count - s0);
    CacheRowsToF32(cache->config.dtype, cache->OutlierK(h, s0), d, n, d, rows, d);
    CacheMahalanobis(cache->Whitening(h), cache->WhiteningMean(h), rows, d, n, d, work,
                     cache->OutlierScore(h) + s0);
  }
}

bool WhiteningDue(const covattn_cache* cache, size_t h) {
  const RefreshState* r = const_cast<covattn_cache*>(cache)->Refresh(h);
  if (r->folded < std::max<uint64_t>(kMinTokensForWhitening, 2 * cache->Dim())) return false;
  if (r->folded_at_refresh == 0) return true;
  const uint64_t since = r->folded - r->folded_at_refresh;
  return since >= std::min<uint64_t>(kMaxRefreshInterval, r->folded_at_refresh);
}

// One batch of tokens [b0, b1) of a validated block, none of them sinks:
// evicts what leaves the window (outlier slots or summary), then moves the
// batch into the window.
void AppendBatch(covattn_cache* cache, const covattn_kv_cache& block, size_t b0, size_t b1) {
  const covattn_cache_config& c = cache->config;
  const size_t d = cache->Dim(), m = b1 - b0, window_count = cache->WindowCount();
  const size_t evict = window_count + m > c.window ? window_count + m - c.window : 0;
  const size_t from_window = std::min(evict, window_count);  // the oldest window tokens
  const size_t from_batch = evict - from_window;             // batch tokens never windowed
  const uint64_t oldest = cache->n_tokens - window_count;    // global index of the oldest
  const size_t elem_in = DtypeSize(block.dtype);
  float* ev_k = cache->Work(cache->layout.evicted_k);
  float* ev_v = cache->Work(cache->layout.evicted_v);
  float* fold_k = cache->Work(cache->layout.fold_k);
  float* fold_v = cache->Work(cache->layout.fold_v);
  float* dist = cache->Work(cache->layout.distances);
  float* work = cache->Work(cache->layout.mahalanobis);

  if (!cache->Summarizes()) {
    cache->n_dropped += evict * c.n_kv_heads;
  }
  for (size_t h = 0; evict != 0 && cache->Summarizes() && h < c.n_kv_heads; ++h) {
    // Evicted rows of head h as f32, oldest first.
    for (size_t e = 0; e < from_window; ++e) {
      const size_t slot = static_cast<size_t>((oldest + e - c.n_sinks) % c.window);
      const size_t offset = (slot * cache->RowElems() + h * d) * cache->elem;
      CacheRowsToF32(c.dtype, cache->At<unsigned char>(cache->layout.window_k) + offset, 0, 1, d,
                     ev_k + e * d, d);
      CacheRowsToF32(c.dtype, cache->At<unsigned char>(cache->layout.window_v) + offset, 0, 1, d,
                     ev_v + e * d, d);
    }
    if (from_batch != 0) {
      const auto* k = static_cast<const unsigned char*>(block.k) +
                      (b0 * block.k_token_stride + h * block.k_head_stride) * elem_in;
      const auto* v = static_cast<const unsigned char*>(block.v) +
                      (b0 * block.v_token_stride + h * block.v_head_stride) * elem_in;
      CacheRowsToF32(block.dtype, k, block.k_token_stride, from_batch, d, ev_k + from_window * d,
                     d);
      CacheRowsToF32(block.dtype, v, block.v_token_stride, from_batch, d, ev_v + from_window * d,
                     d);
    }
    // Outlier selection: keep the n_outliers most outlying of residents and
    // evicted keys; fold the rest.
    size_t n_fold = 0;
    auto fold = [&](const float* k, const float* v) {
      std::memcpy(fold_k + n_fold * d, k, d * sizeof(float));
      std::memcpy(fold_v + n_fold * d, v, d * sizeof(float));
      ++n_fold;
    };
    if (cache->HasOutliers()) {
      RefreshState* refresh = cache->Refresh(h);
      if (refresh->folded_at_refresh != 0) {
        CacheMahalanobis(cache->Whitening(h), cache->WhiteningMean(h), ev_k, d, evict, d, work,
                         dist);
      } else {
        std::fill(dist, dist + evict, 0.0f);  // no covariance yet: first come, first kept
      }
      uint32_t& count = cache->OutlierCount()[h];
      float* score = cache->OutlierScore(h);
      for (size_t e = 0; e < evict; ++e) {
        size_t slot;
        if (count < c.n_outliers) {
          slot = count++;
        } else {
          slot = static_cast<size_t>(std::min_element(score, score + count) - score);
          if (!(dist[e] > score[slot])) {
            fold(ev_k + e * d, ev_v + e * d);
            continue;
          }
          // The resident goes to the summary; the newcomer takes its slot.
          CacheRowsToF32(c.dtype, cache->OutlierK(h, slot), 0, 1, d, fold_k + n_fold * d, d);
          CacheRowsToF32(c.dtype, cache->OutlierV(h, slot), 0, 1, d, fold_v + n_fold * d, d);
          ++n_fold;
        }
        StoreRow(c.dtype, ev_k + e * d, d, cache->OutlierK(h, slot));
        StoreRow(c.dtype, ev_v + e * d, d, cache->OutlierV(h, slot));
        score[slot] = dist[e];
      }
    } else {
      for (size_t e = 0; e < evict; ++e) fold(ev_k + e * d, ev_v + e * d);
    }
    if (n_fold != 0) {
      const CovBlock rows{COVATTN_F32, fold_k, fold_v, n_fold, d, 0, d, 0};
      covattn_cov_state* summary = cache->Summary();
      CovUpdateHeads(summary, rows, h, 1);
      cache->n_summarized += n_fold;
      RefreshState* refresh = cache->Refresh(h);
      refresh->folded += n_fold;
      // The state counts the tokens of its busiest head, which bounds every
      // head's weight.
      summary->n_tokens = std::max(summary->n_tokens, refresh->folded);
      if (cache->HasOutliers() && WhiteningDue(cache, h)) RefreshWhitening(cache, h);
    }
  }
  // The batch tokens that stay enter the window ring.
  for (size_t i = from_batch; i < m; ++i) {
    const uint64_t t = cache->n_tokens + i;
    const size_t slot = static_cast<size_t>((t - c.n_sinks) % c.window);
    const size_t offset = slot * cache->RowElems() * cache->elem;
    StoreToken(cache, block, b0 + i, cache->At<unsigned char>(cache->layout.window_k) + offset,
               cache->At<unsigned char>(cache->layout.window_v) + offset, work);
  }
  cache->n_tokens += m;
}

// ---------------------------------------------------------------------------
// Serialized form, all little-endian:
//
//   offset  0  magic "COVATTNC"
//           8  u32 format version, u32 header bytes (128)
//          16  u64 n_kv_heads, u64 head_dim, u32 dtype, u32 flags,
//              u64 n_sinks, u64 window, u64 n_outliers, f32 forgetting,
//              u32 reserved (0), u64 n_tokens, u64 n_summarized,
//              u64 n_dropped, u64 payload bytes, 24 reserved bytes (0)
//         128  payload:
//              sink K then V rows (min(n_tokens, n_sinks) tokens, all heads),
//              window K then V slots 0 .. window count - 1,
//              u32 outlier count per head, then per head: scores (f32),
//              K rows, V rows of its resident outliers,
//              with outlier slots, per head: u64 tokens folded, u64 folded
//              at the last whitening, then with outlier slots mu_k (f32)
//              and W^T (d x d bf16),
//              with a summary: u64 bytes, then the covariance state's own
//              serialized form (covattn_cov_state_serialize)
//         end  u64 FNV-1a of every byte before it
constexpr unsigned char kCacheFileMagic[8] = {'C', 'O', 'V', 'A', 'T', 'T', 'N', 'C'};
constexpr uint32_t kCacheFormatVersion = 1;
constexpr size_t kCacheFileHeaderBytes = 128;

// Serialized payload bytes for a cache in this state (outlier counts given).
size_t CachePayloadBytes(const covattn_cache* cache, const uint32_t* outlier_counts,
                         size_t summary_blob_bytes) {
  const size_t d = cache->Dim(), row = cache->RowElems() * cache->elem;
  size_t bytes = 2 * (cache->SinkCount() + cache->WindowCount()) * row;
  bytes += 4 * cache->Heads();
  for (size_t h = 0; h < cache->Heads(); ++h) {
    bytes += outlier_counts[h] * (4 + 2 * d * cache->elem);
  }
  bytes += cache->Heads() * 16;  // folded counts
  if (cache->HasOutliers()) bytes += cache->Heads() * (4 * d + 2 * d * d);
  if (cache->Summarizes()) bytes += 8 + summary_blob_bytes;
  return bytes;
}

// Writes n elements of `elem` bytes from memory in host order.
unsigned char* PutElements(unsigned char* p, const void* src, size_t n, size_t elem) {
  CopyLE(p, static_cast<const unsigned char*>(src), n, elem);
  return p + n * elem;
}

// Whether n stored elements of a dtype (little-endian bytes) are all finite.
bool ElementsFinite(const unsigned char* p, size_t n, uint32_t dtype) {
  for (size_t i = 0; i < n; ++i) {
    if (dtype == COVATTN_F32) {
      if (!std::isfinite(F32FromLE(p + 4 * i))) return false;
    } else {
      const uint16_t bits = static_cast<uint16_t>(GetLE(p + 2 * i, 2));
      const uint16_t exponent_mask = dtype == COVATTN_F16 ? 0x7C00 : 0x7F80;
      if ((bits & exponent_mask) == exponent_mask) return false;
    }
  }
  return true;
}

covattn_status CheckCache(const covattn_cache* cache) {
  if (cache == nullptr) return COVATTN_ERR_NULL_POINTER;
  return cache->magic == kCacheMagic ? COVATTN_OK : COVATTN_ERR_CORRUPT;
}

Extent CacheExtent(const covattn_cache* cache) {
  return Extent{cache->memory_begin, cache->memory_end};
}

}  // namespace
}  // namespace detail
}  // namespace covattn

extern "C" {

covattn_status covattn_cache_size(const covattn_cache_config* config, size_t* bytes) {
  if (config == nullptr || bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  CacheLayout layout;
  const covattn_status status = ComputeLayout(*config, &layout);
  if (status != COVATTN_OK) return status;
  if (AddOverflows(layout.total, covattn_cache::kHeaderBytes + 64, bytes)) {
    return COVATTN_ERR_SIZE_OVERFLOW;
  }
  return COVATTN_OK;
}

covattn_status covattn_cache_init(void* memory, size_t bytes, const covattn_cache_config* config,
                                  covattn_cache** cache) {
  if (memory == nullptr || config == nullptr || cache == nullptr) return COVATTN_ERR_NULL_POINTER;
  size_t needed;
  covattn_status status = covattn_cache_size(config, &needed);
  if (status != COVATTN_OK) return status;
  if (bytes < needed) return COVATTN_ERR_BUFFER_TOO_SMALL;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(memory);
  if (bytes > UINTPTR_MAX - begin) return COVATTN_ERR_SIZE_OVERFLOW;
  auto* c = reinterpret_cast<covattn_cache*>((begin + 63) & ~uintptr_t{63});
  new (c) covattn_cache();
  c->magic = kCacheMagic;
  c->allocation = nullptr;
  c->memory_begin = begin;
  c->memory_end = begin + bytes;
  c->config = *config;
  if (c->config.flags & COVATTN_CACHE_DROP_EVICTED) c->config.forgetting = 1.0f;
  ComputeLayout(c->config, &c->layout);
  c->elem = DtypeSize(config->dtype);
  if (c->Summarizes()) {
    covattn_cov_state* summary = nullptr;
    status =
        covattn_cov_state_init(c->At<unsigned char>(c->layout.summary), c->layout.summary_bytes,
                               config->n_kv_heads, config->head_dim, config->forgetting, &summary);
    if (status != COVATTN_OK || reinterpret_cast<void*>(summary) != c->Summary()) {
      c->magic = 0;
      return status != COVATTN_OK ? status : COVATTN_ERR_BUFFER_TOO_SMALL;
    }
    summary->flags |= covattn_cov_state::kIndependentHeads;
  }
  covattn_cache_reset(c);
  *cache = c;
  return COVATTN_OK;
}

covattn_status covattn_cache_create(const covattn_cache_config* config, covattn_cache** cache) {
  if (config == nullptr || cache == nullptr) return COVATTN_ERR_NULL_POINTER;
  size_t bytes;
  covattn_status status = covattn_cache_size(config, &bytes);
  if (status != COVATTN_OK) return status;
  void* memory = std::malloc(bytes);
  if (memory == nullptr) return COVATTN_ERR_OUT_OF_MEMORY;
  covattn_cache* c = nullptr;
  status = covattn_cache_init(memory, bytes, config, &c);
  if (status != COVATTN_OK) {
    std::free(memory);
    return status;
  }
  c->allocation = memory;
  *cache = c;
  return COVATTN_OK;
}

void covattn_cache_destroy(covattn_cache* cache) {
  // A cache in caller memory stays valid: the caller owns and may reuse it.
  if (CheckCache(cache) != COVATTN_OK || cache->allocation == nullptr) return;
  void* allocation = cache->allocation;
  cache->magic = 0;
  std::free(allocation);
}

covattn_status covattn_cache_reset(covattn_cache* cache) {
  covattn_status status = CheckCache(cache);
  if (status != COVATTN_OK) return status;
  cache->n_tokens = cache->n_summarized = cache->n_dropped = 0;
  std::fill(cache->OutlierCount(), cache->OutlierCount() + cache->Heads(), 0u);
  for (size_t h = 0; h < cache->Heads(); ++h) {
    *cache->Refresh(h) = RefreshState{0, 0};
    // Unused until the first refresh, but serialized: zeros, not whatever
    // the memory held (which could be NaN and make the file unloadable).
    if (!cache->HasOutliers()) continue;
    std::fill(cache->Whitening(h), cache->Whitening(h) + cache->Dim() * cache->Dim(), uint16_t{0});
    std::fill(cache->WhiteningMean(h), cache->WhiteningMean(h) + cache->Dim(), 0.0f);
  }
  if (cache->Summarizes()) covattn_cov_state_reset(cache->Summary());
  return COVATTN_OK;
}

covattn_status covattn_cache_info_get(const covattn_cache* cache, covattn_cache_info* info) {
  covattn_status status = CheckCache(cache);
  if (status != COVATTN_OK) return status;
  if (info == nullptr) return COVATTN_ERR_NULL_POINTER;
  size_t n_exact = (cache->SinkCount() + cache->WindowCount()) * cache->Heads();
  for (size_t h = 0; h < cache->Heads(); ++h) n_exact += cache->OutlierCount()[h];
  *info = covattn_cache_info{
      cache->config,    cache->n_tokens, cache->n_summarized,
      cache->n_dropped, n_exact,         cache->memory_end - cache->memory_begin};
  return COVATTN_OK;
}

covattn_status covattn_cache_append(covattn_cache* cache, const covattn_kv_cache* block) {
  covattn_status status = CheckCache(cache);
  if (status != COVATTN_OK) return status;
  if (block == nullptr) return COVATTN_ERR_NULL_POINTER;
  const size_t elem = DtypeSize(block->dtype);
  if (elem == 0) return COVATTN_ERR_UNSUPPORTED_DTYPE;
  if (block->n_heads != cache->Heads() || block->head_dim != cache->Dim()) {
    return COVATTN_ERR_SHAPE_MISMATCH;
  }
  Extent k, v;
  if ((status = CheckTensor(block->k, elem, block->n_tokens, block->k_token_stride, block->n_heads,
                            block->k_head_stride, block->head_dim, &k)) != COVATTN_OK ||
      (status = CheckTensor(block->v, elem, block->n_tokens, block->v_token_stride, block->n_heads,
                            block->v_head_stride, block->head_dim, &v)) != COVATTN_OK) {
    return status;
  }
  if (k.Overlaps(CacheExtent(cache)) || v.Overlaps(CacheExtent(cache))) {
    return COVATTN_ERR_ALIASING;
  }
  if (block->n_tokens > UINT64_MAX / 2 - cache->n_tokens) return COVATTN_ERR_SIZE_OVERFLOW;
  if (block->n_tokens == 0) return COVATTN_OK;
  const CovBlock cov_block{block->dtype,
                           block->k,
                           block->v,
                           block->n_tokens,
                           block->k_token_stride,
                           block->k_head_stride,
                           block->v_token_stride,
                           block->v_head_stride};
  // Refuse bad values before anything changes (the summary would refuse them
  // too, but only after the window had moved).
  if (!CovBlockInRange(cov_block, cache->Heads(), cache->Dim(),
                       cache->config.dtype == COVATTN_F16)) {
    return COVATTN_ERR_NONFINITE;
  }

  const covattn_cache_config& c = cache->config;
  size_t b = 0;
  float* tmp = cache->Work(cache->layout.mahalanobis);
  for (; b < block->n_tokens && cache->n_tokens < c.n_sinks; ++b, ++cache->n_tokens) {
    const size_t offset = static_cast<size_t>(cache->n_tokens) * cache->RowElems() * cache->elem;
    StoreToken(cache, *block, b, cache->At<unsigned char>(cache->layout.sink_k) + offset,
               cache->At<unsigned char>(cache->layout.sink_v) + offset, tmp);
  }
  // Batches bound the work area; with no window every token is evicted at once.
  for (; b < block->n_tokens; b += kAppendBatch) {
    AppendBatch(cache, *block, b, std::min(block->n_tokens, b + kAppendBatch));
  }
  return COVATTN_OK;
}

covattn_status covattn_cache_decode_scratch_size(const covattn_cache* cache, size_t n_q_heads,
                                                 size_t* bytes) {
  covattn_status status = CheckCache(cache);
  if (status != COVATTN_OK) return status;
  if (bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  if (n_q_heads == 0) return COVATTN_ERR_INVALID_HEAD_COUNT;
  if (n_q_heads % cache->Heads() != 0) return COVATTN_ERR_HEAD_MISMATCH;
  size_t attention;
  covattn_attention_scratch_size(cache->Dim(), &attention);
  // Two partial states and the summary's readout, log Z and ESS.
  size_t floats;
  if (MulOverflows(n_q_heads, 3 * cache->Dim() + 6, &floats) ||
      MulOverflows(floats, sizeof(float), &floats) || AddOverflows(floats, attention + 64, bytes)) {
    return COVATTN_ERR_SIZE_OVERFLOW;
  }
  return COVATTN_OK;
}

covattn_status covattn_cache_decode(const covattn_cache* cache, const float* q, size_t n_q_heads,
                                    float scale, float* out,
                                    const covattn_cache_diagnostics* diagnostics, void* scratch,
                                    size_t scratch_bytes) {
  covattn_status status = CheckCache(cache);
  if (status != COVATTN_OK) return status;
  if (q == nullptr || out == nullptr) return COVATTN_ERR_NULL_POINTER;
  size_t needed;
  if ((status = covattn_cache_decode_scratch_size(cache, n_q_heads, &needed)) != COVATTN_OK) {
    return status;
  }
  if (!std::isfinite(scale)) return COVATTN_ERR_INVALID_SCALE;
  const size_t d = cache->Dim(), group = n_q_heads / cache->Heads();
  Extent q_extent, out_extent, diag[3], cache_extent = CacheExtent(cache);
  float* diag_arrays[3] = {diagnostics ? diagnostics->summary_share : nullptr,
                           diagnostics ? diagnostics->summary_ess : nullptr,
                           diagnostics ? diagnostics->log_z : nullptr};
  if ((status = CheckTensor(q, sizeof(float), n_q_heads, d, 1, 0, d, &q_extent)) != COVATTN_OK ||
      (status = CheckTensor(out, sizeof(float), n_q_heads, d, 1, 0, d, &out_extent)) !=
          COVATTN_OK) {
    return status;
  }
  for (int i = 0; i < 3; ++i) {
    if (diag_arrays[i] != nullptr && (status = CheckTensor(diag_arrays[i], sizeof(float), n_q_heads,
                                                           1, 1, 0, 1, &diag[i])) != COVATTN_OK) {
      return status;
    }
  }
  if (scratch == nullptr || scratch_bytes < needed) return COVATTN_ERR_SCRATCH_TOO_SMALL;
  const Extent scratch_extent{reinterpret_cast<uintptr_t>(scratch),
                              reinterpret_cast<uintptr_t>(scratch) + scratch_bytes};
  const Extent outputs[5] = {out_extent, diag[0], diag[1], diag[2], scratch_extent};
  for (int i = 0; i < 5; ++i) {
    if (outputs[i].Overlaps(q_extent) || outputs[i].Overlaps(cache_extent)) {
      return COVATTN_ERR_ALIASING;
    }
    for (int j = i + 1; j < 5; ++j) {
      if (outputs[i].Overlaps(outputs[j])) return COVATTN_ERR_ALIASING;
    }
  }
  if (scale == 0.0f) scale = 1.0f / std::sqrt(static_cast<float>(d));

  // Scratch: attention workspace, then the running exact state, one part's
  // state, and the summary's readout.
  size_t attention_bytes;
  covattn_attention_scratch_size(d, &attention_bytes);
  float* f = reinterpret_cast<float*>(
      (reinterpret_cast<uintptr_t>(scratch) + attention_bytes + 63) & ~uintptr_t{63});
  const covattn_partial exact{f, f + n_q_heads, f + 2 * n_q_heads};
  f += (2 + d) * n_q_heads;
  const covattn_partial part{f, f + n_q_heads, f + 2 * n_q_heads};
  f += (2 + d) * n_q_heads;
  float* readout = f;
  float* summary_log_z = f + n_q_heads * d;
  float* summary_ess = summary_log_z + n_q_heads;
  std::fill(exact.m, exact.m + n_q_heads, std::numeric_limits<float>::lowest());
  std::fill(exact.l, exact.l + n_q_heads, 0.0f);
  std::fill(exact.o, exact.o + n_q_heads * d, 0.0f);

  // Exact part: sinks and window (all heads at once; softmax is indifferent
  // to token order, so the ring needs no unrolling), then each head's
  // outliers. Every stored token precedes the query: no mask.
  const covattn_attention_options options{scale, 0, 0};
  bool nonfinite = false;
  auto add_part = [&](const covattn_kv_cache& kv, const float* queries, size_t n_heads,
                      size_t first_row) {
    const covattn_queries qv{queries, 1, n_heads, n_q_heads * d, d};
    const covattn_partial into{exact.m + first_row, exact.l + first_row, exact.o + first_row * d};
    const covattn_partial from{part.m + first_row, part.l + first_row, part.o + first_row * d};
    covattn_status s = covattn_prefill_partial(&kv, &qv, kv.n_tokens - 1, &options, 0, kv.n_tokens,
                                               &from, scratch, attention_bytes);
    if (s == COVATTN_OK) s = covattn_partial_merge(n_heads, d, &into, &from);
    nonfinite |= s != COVATTN_OK;
  };
  const covattn_cache_config& c = cache->config;
  const size_t row = cache->RowElems();
  if (cache->SinkCount() != 0) {
    const covattn_kv_cache kv{c.dtype,
                              cache->At<unsigned char>(cache->layout.sink_k),
                              cache->At<unsigned char>(cache->layout.sink_v),
                              cache->SinkCount(),
                              c.n_kv_heads,
                              d,
                              row,
                              d,
                              row,
                              d};
    add_part(kv, q, n_q_heads, 0);
  }
  if (cache->WindowCount() != 0) {
    const covattn_kv_cache kv{c.dtype,
                              cache->At<unsigned char>(cache->layout.window_k),
                              cache->At<unsigned char>(cache->layout.window_v),
                              cache->WindowCount(),
                              c.n_kv_heads,
                              d,
                              row,
                              d,
                              row,
                              d};
    add_part(kv, q, n_q_heads, 0);
  }
  for (size_t h = 0; h < c.n_kv_heads && cache->HasOutliers(); ++h) {
    const size_t count = cache->OutlierCount()[h];
    if (count == 0) continue;
    auto* self = const_cast<covattn_cache*>(cache);
    const covattn_kv_cache kv{
        c.dtype, self->OutlierK(h, 0), self->OutlierV(h, 0), count, 1, d, d, 0, d, 0};
    add_part(kv, q + h * group * d, group, h * group);
  }
  // Summary part: the readout and its log-normaliser (MATH.md section 2).
  bool have_summary = false;
  if (cache->Summarizes()) {
    const covattn_status s = covattn_cov_readout(cache->Summary(), q, n_q_heads, scale, readout,
                                                 summary_log_z, summary_ess);
    have_summary = s == COVATTN_OK;
    nonfinite |= s != COVATTN_OK && s != COVATTN_ERR_EMPTY_STATE;
  }
  // Merge the two in log-sum-exp space (MATH.md section 4).
  bool masked = false;
  for (size_t r = 0; r < n_q_heads; ++r) {
    const float* o_exact = exact.o + r * d;
    float* dst = out + r * d;
    const bool have_exact = exact.l[r] > 0.0f;
    if (!have_exact && !have_summary) {
      std::fill(dst, dst + d, 0.0f);
      masked = true;
      if (diag_arrays[0]) diag_arrays[0][r] = 0.0f;
      if (diag_arrays[1]) diag_arrays[1][r] = 0.0f;
      if (diag_arrays[2]) diag_arrays[2][r] = -std::numeric_limits<float>::infinity();
      continue;
    }
    // A head whose summary is still empty reports log Z = -inf.
    const bool row_summary = have_summary && summary_log_z[r] > -HUGE_VALF;
    const float log_z_s = row_summary ? summary_log_z[r] : 0.0f;
    if (!have_exact && !row_summary) {
      std::fill(dst, dst + d, 0.0f);
      masked = true;
      if (diag_arrays[0]) diag_arrays[0][r] = 0.0f;
      if (diag_arrays[1]) diag_arrays[1][r] = 0.0f;
      if (diag_arrays[2]) diag_arrays[2][r] = -std::numeric_limits<float>::infinity();
      continue;
    }
    const float m = !row_summary  ? exact.m[r]
                    : !have_exact ? log_z_s
                                  : std::max(exact.m[r], log_z_s);
    const float w_exact = have_exact ? std::exp(exact.m[r] - m) : 0.0f;
    const float w_summary = row_summary ? std::exp(log_z_s - m) : 0.0f;
    const float denominator = w_exact * exact.l[r] + w_summary;
    const float inv = 1.0f / denominator;
    const float* r_s = readout + r * d;
    for (size_t i = 0; i < d; ++i) {
      dst[i] = (w_exact * o_exact[i] + (row_summary ? w_summary * r_s[i] : 0.0f)) * inv;
      nonfinite |= !std::isfinite(dst[i]);
    }
    if (diag_arrays[0]) diag_arrays[0][r] = w_summary * inv;
    if (diag_arrays[1]) diag_arrays[1][r] = row_summary ? summary_ess[r] : 0.0f;
    if (diag_arrays[2]) diag_arrays[2][r] = m + std::log(denominator);
    nonfinite |= !std::isfinite(m + std::log(denominator));
  }
  if (nonfinite) return COVATTN_ERR_NONFINITE;
  return masked ? COVATTN_FULLY_MASKED : COVATTN_OK;
}

covattn_status covattn_cache_serialized_size(const covattn_cache* cache, size_t* bytes) {
  covattn_status status = CheckCache(cache);
  if (status != COVATTN_OK) return status;
  if (bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  size_t blob = 0;
  if (cache->Summarizes()) covattn_cov_state_serialized_size(cache->Summary(), &blob);
  *bytes = kCacheFileHeaderBytes + CachePayloadBytes(cache, cache->OutlierCount(), blob) + 8;
  return COVATTN_OK;
}

covattn_status covattn_cache_serialize(const covattn_cache* cache, void* buffer, size_t capacity,
                                       size_t* written) {
  size_t bytes;
  covattn_status status = covattn_cache_serialized_size(cache, &bytes);
  if (status != COVATTN_OK) return status;
  if (buffer == nullptr || written == nullptr) return COVATTN_ERR_NULL_POINTER;
  if (capacity < bytes) return COVATTN_ERR_BUFFER_TOO_SMALL;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(buffer);
  if (capacity > UINTPTR_MAX - begin) return COVATTN_ERR_SIZE_OVERFLOW;
  if (Extent{begin, begin + bytes}.Overlaps(CacheExtent(cache))) return COVATTN_ERR_ALIASING;
  auto* self = const_cast<covattn_cache*>(cache);
  const covattn_cache_config& c = cache->config;
  const size_t d = cache->Dim(), row = cache->RowElems();
  size_t blob = 0;
  if (cache->Summarizes()) covattn_cov_state_serialized_size(cache->Summary(), &blob);
  auto* p = static_cast<unsigned char*>(buffer);
  std::memset(p, 0, kCacheFileHeaderBytes);
  std::memcpy(p, kCacheFileMagic, 8);
  PutLE(p + 8, kCacheFormatVersion, 4);
  PutLE(p + 12, kCacheFileHeaderBytes, 4);
  PutLE(p + 16, c.n_kv_heads, 8);
  PutLE(p + 24, c.head_dim, 8);
  PutLE(p + 32, c.dtype, 4);
  PutLE(p + 36, c.flags, 4);
  PutLE(p + 40, c.n_sinks, 8);
  PutLE(p + 48, c.window, 8);
  PutLE(p + 56, c.n_outliers, 8);
  PutF32LE(p + 64, c.forgetting);
  PutLE(p + 72, cache->n_tokens, 8);
  PutLE(p + 80, cache->n_summarized, 8);
  PutLE(p + 88, cache->n_dropped, 8);
  PutLE(p + 96, CachePayloadBytes(cache, cache->OutlierCount(), blob), 8);
  unsigned char* at = p + kCacheFileHeaderBytes;
  const size_t elem = cache->elem;
  at = PutElements(at, self->At<unsigned char>(cache->layout.sink_k), cache->SinkCount() * row,
                   elem);
  at = PutElements(at, self->At<unsigned char>(cache->layout.sink_v), cache->SinkCount() * row,
                   elem);
  at = PutElements(at, self->At<unsigned char>(cache->layout.window_k), cache->WindowCount() * row,
                   elem);
  at = PutElements(at, self->At<unsigned char>(cache->layout.window_v), cache->WindowCount() * row,
                   elem);
  at = PutElements(at, cache->OutlierCount(), cache->Heads(), 4);
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const size_t n = cache->OutlierCount()[h];
    if (n == 0) continue;
    at = PutElements(at, self->OutlierScore(h), n, 4);
    at = PutElements(at, self->OutlierK(h, 0), n * d, elem);
    at = PutElements(at, self->OutlierV(h, 0), n * d, elem);
  }
  for (size_t h = 0; h < cache->Heads(); ++h) {
    PutLE(at, self->Refresh(h)->folded, 8);
    PutLE(at + 8, self->Refresh(h)->folded_at_refresh, 8);
    at += 16;
    if (!cache->HasOutliers()) continue;
    at = PutElements(at, self->WhiteningMean(h), d, 4);
    at = PutElements(at, self->Whitening(h), d * d, 2);
  }
  if (cache->Summarizes()) {
    PutLE(at, blob, 8);
    size_t blob_written = 0;
    covattn_cov_state_serialize(cache->Summary(), at + 8, blob, &blob_written);
    at += 8 + blob;
  }
  PutLE(at, Fnv1a(p, static_cast<size_t>(at - p)), 8);
  *written = bytes;
  return COVATTN_OK;
}

covattn_status covattn_cache_load(covattn_cache* cache, const void* buffer, size_t size) {
  covattn_status status = CheckCache(cache);
  if (status != COVATTN_OK) return status;
  if (buffer == nullptr) return COVATTN_ERR_NULL_POINTER;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(buffer);
  if (size > UINTPTR_MAX - begin) return COVATTN_ERR_SIZE_OVERFLOW;
  if (Extent{begin, begin + size}.Overlaps(CacheExtent(cache))) return COVATTN_ERR_ALIASING;
  const auto* p = static_cast<const unsigned char*>(buffer);
  if (size < 8) return COVATTN_ERR_TRUNCATED;
  if (std::memcmp(p, kCacheFileMagic, 8) != 0) return COVATTN_ERR_BAD_MAGIC;
  if (size < kCacheFileHeaderBytes + 8) return COVATTN_ERR_TRUNCATED;
  if (GetLE(p + 8, 4) != kCacheFormatVersion) return COVATTN_ERR_VERSION;
  if (GetLE(p + 12, 4) != kCacheFileHeaderBytes) return COVATTN_ERR_CORRUPT;
  const covattn_cache_config& c = cache->config;
  uint32_t forgetting_bits;
  std::memcpy(&forgetting_bits, &c.forgetting, 4);
  if (GetLE(p + 16, 8) != c.n_kv_heads || GetLE(p + 24, 8) != c.head_dim ||
      GetLE(p + 32, 4) != c.dtype || GetLE(p + 36, 4) != c.flags || GetLE(p + 40, 8) != c.n_sinks ||
      GetLE(p + 48, 8) != c.window || GetLE(p + 56, 8) != c.n_outliers ||
      GetLE(p + 64, 4) != forgetting_bits) {
    return COVATTN_ERR_SHAPE_MISMATCH;
  }
  for (size_t i = 68; i < 72; ++i) {
    if (p[i] != 0) return COVATTN_ERR_CORRUPT;
  }
  for (size_t i = 104; i < kCacheFileHeaderBytes; ++i) {
    if (p[i] != 0) return COVATTN_ERR_CORRUPT;
  }
  const uint64_t n_tokens = GetLE(p + 72, 8), n_summarized = GetLE(p + 80, 8),
                 n_dropped = GetLE(p + 88, 8), payload = GetLE(p + 96, 8);
  if (payload > size - kCacheFileHeaderBytes - 8) return COVATTN_ERR_TRUNCATED;
  if (payload != size - kCacheFileHeaderBytes - 8) return COVATTN_ERR_CORRUPT;
  if (GetLE(p + size - 8, 8) != Fnv1a(p, size - 8)) return COVATTN_ERR_CHECKSUM;
  // The checksum matches: now the contents must make sense, all of them,
  // before anything is written.
  if (n_tokens > UINT64_MAX / 2 || n_summarized > UINT64_MAX / 2 || n_dropped > UINT64_MAX / 2) {
    return COVATTN_ERR_CORRUPT;
  }
  // A scratch copy of the header fields that size the payload.
  covattn_cache probe = *cache;
  probe.n_tokens = n_tokens;
  const size_t d = c.head_dim, row = cache->RowElems(), elem = cache->elem;
  const size_t sinks = probe.SinkCount(), window = probe.WindowCount();
  const unsigned char* at = p + kCacheFileHeaderBytes;
  const unsigned char* end = p + size - 8;
  auto take = [&](size_t bytes) -> const unsigned char* {
    if (bytes > static_cast<size_t>(end - at)) return nullptr;
    const unsigned char* here = at;
    at += bytes;
    return here;
  };
  const unsigned char* exact_rows = take(2 * (sinks + window) * row * elem);
  const unsigned char* counts = take(4 * c.n_kv_heads);
  if (exact_rows == nullptr || counts == nullptr) return COVATTN_ERR_CORRUPT;
  if (!ElementsFinite(exact_rows, 2 * (sinks + window) * row, c.dtype)) return COVATTN_ERR_CORRUPT;
  uint64_t rows_held = (sinks + window) * uint64_t{c.n_kv_heads};
  const unsigned char* outlier_begin = at;
  for (size_t h = 0; h < c.n_kv_heads; ++h) {
    const uint64_t n = GetLE(counts + 4 * h, 4);
    if (n > c.n_outliers) return COVATTN_ERR_CORRUPT;
    const unsigned char* scores = take(4 * n);
    const unsigned char* rows = take(2 * n * d * elem);
    if (scores == nullptr || rows == nullptr) return COVATTN_ERR_CORRUPT;
    for (size_t i = 0; i < n; ++i) {
      const float score = F32FromLE(scores + 4 * i);
      if (!(score >= 0.0f) || !std::isfinite(score)) return COVATTN_ERR_CORRUPT;
    }
    if (!ElementsFinite(rows, 2 * n * d, c.dtype)) return COVATTN_ERR_CORRUPT;
    rows_held += n;
  }
  const unsigned char* whitening_begin = at;
  const size_t whitening_bytes = cache->HasOutliers() ? 4 * d + 2 * d * d : 0;
  uint64_t folded_total = 0;
  for (size_t h = 0; h < c.n_kv_heads; ++h) {
    const unsigned char* w = take(16 + whitening_bytes);
    if (w == nullptr) return COVATTN_ERR_CORRUPT;
    const uint64_t folded = GetLE(w, 8), at_refresh = GetLE(w + 8, 8);
    if (at_refresh > folded || folded > n_summarized) return COVATTN_ERR_CORRUPT;
    folded_total += folded;
    if (whitening_bytes != 0 && (!ElementsFinite(w + 16, d, COVATTN_F32) ||
                                 !ElementsFinite(w + 16 + 4 * d, d * d, COVATTN_BF16))) {
      return COVATTN_ERR_CORRUPT;
    }
  }
  if (folded_total != n_summarized) return COVATTN_ERR_CORRUPT;
  const unsigned char* blob = nullptr;
  size_t blob_bytes = 0;
  if (cache->Summarizes()) {
    const unsigned char* length = take(8);
    if (length == nullptr) return COVATTN_ERR_CORRUPT;
    blob_bytes = static_cast<size_t>(std::min<uint64_t>(GetLE(length, 8), SIZE_MAX));
    blob = take(blob_bytes);
    if (blob == nullptr) return COVATTN_ERR_CORRUPT;
  }
  if (at != end) return COVATTN_ERR_CORRUPT;
  // Every appended token row is in exactly one place.
  if (rows_held + n_summarized + n_dropped != n_tokens * c.n_kv_heads ||
      (!cache->Summarizes() && n_summarized != 0) || (cache->Summarizes() && n_dropped != 0)) {
    return COVATTN_ERR_CORRUPT;
  }
  // The summary checks its own blob and is written first: if it refuses,
  // nothing has changed.
  if (blob != nullptr) {
    status = covattn_cov_state_load(cache->Summary(), blob, blob_bytes);
    if (status != COVATTN_OK)
      return status == COVATTN_ERR_SHAPE_MISMATCH ? COVATTN_ERR_CORRUPT : status;
  }
  cache->n_tokens = n_tokens;
  cache->n_summarized = n_summarized;
  cache->n_dropped = n_dropped;
  at = exact_rows;
  const size_t sink_bytes = sinks * row * elem, window_bytes = window * row * elem;
  CopyLE(cache->At<unsigned char>(cache->layout.sink_k), at, sinks * row, elem);
  CopyLE(cache->At<unsigned char>(cache->layout.sink_v), at + sink_bytes, sinks * row, elem);
  at += 2 * sink_bytes;
  CopyLE(cache->At<unsigned char>(cache->layout.window_k), at, window * row, elem);
  CopyLE(cache->At<unsigned char>(cache->layout.window_v), at + window_bytes, window * row, elem);
  at = outlier_begin;
  for (size_t h = 0; h < c.n_kv_heads; ++h) {
    const size_t n = static_cast<size_t>(GetLE(counts + 4 * h, 4));
    cache->OutlierCount()[h] = static_cast<uint32_t>(n);
    if (n == 0) continue;
    CopyLE(reinterpret_cast<unsigned char*>(cache->OutlierScore(h)), at, n, 4);
    CopyLE(cache->OutlierK(h, 0), at + 4 * n, n * d, elem);
    CopyLE(cache->OutlierV(h, 0), at + 4 * n + n * d * elem, n * d, elem);
    at += 4 * n + 2 * n * d * elem;
  }
  at = whitening_begin;
  for (size_t h = 0; h < c.n_kv_heads; ++h) {
    *cache->Refresh(h) = RefreshState{GetLE(at, 8), GetLE(at + 8, 8)};
    at += 16;
    if (!cache->HasOutliers()) continue;
    CopyLE(reinterpret_cast<unsigned char*>(cache->WhiteningMean(h)), at, d, 4);
    CopyLE(reinterpret_cast<unsigned char*>(cache->Whitening(h)), at + 4 * d, d * d, 2);
    at += 4 * d + 2 * d * d;
  }
  return COVATTN_OK;
}

}  // extern "C"
