// covattn_cache_observe (include/covattn/cache.h): the softmax weights a
// decode gave the window and retained tokens, recomputed from its queries and
// log Z (retention_kernels.cc), summed over each KV head's query heads and
// folded into the tokens' retention scores by the query-aware policy
// (retention.cc).

#include <cmath>
#include <limits>

#include "cache.h"
#include "retention.h"
#include "retention_kernels.h"

namespace covattn {
namespace detail {
namespace {

// Tokens whose weights one kernel call computes.
constexpr size_t kObserveChunk = 256;

// Scratch: the scaled queries [n_q_heads][d], the normalisers, the weights.
struct ObserveScratch {
  float *a, *log_z, *weights;
};

ObserveScratch CarveObserve(void* scratch, size_t n_q_heads, size_t d) {
  float* f = reinterpret_cast<float*>(AlignedScratch(scratch));
  return {f, f + n_q_heads * d, f + n_q_heads * (d + 1)};
}

// Scores n tokens of head h (rows `stride` elements apart) with the queries
// of its group, and lets the policy fold the weights into scores[0, n).
void ObserveRows(const covattn_cache* cache, const unsigned char* k, size_t stride, size_t n,
                 float* scores, const float* a, const float* log_z, size_t group, float* weights) {
  const RetentionPolicy& policy = QueryPolicy(cache->config.retention);
  const size_t d = cache->Dim();
  for (size_t t0 = 0; t0 < n; t0 += kObserveChunk) {
    const size_t m = std::min(kObserveChunk, n - t0);
    ExactTokenWeights(cache->config.dtype, k + t0 * stride * cache->elem, stride, m, d, a, group,
                      log_z, weights);
    policy.observe(scores + t0, weights, m, cache->config.retention_decay);
  }
}

covattn_status CheckObserve(const covattn_cache* cache, const float* q, size_t n_q_heads,
                            float scale, const float* log_z, void* scratch, size_t scratch_bytes) {
  ScratchNeeds needs;
  COVATTN_RETURN_IF_ERROR(CacheScratchBytes(cache->config, n_q_heads, &needs));
  if (!std::isfinite(scale)) return COVATTN_ERR_INVALID_SCALE;
  const size_t d = cache->Dim();
  Extent extents[4];  // q, log_z, scratch, cache
  COVATTN_RETURN_IF_ERROR(CheckTensor(q, sizeof(float), n_q_heads, d, 1, 0, d, &extents[0]));
  COVATTN_RETURN_IF_ERROR(CheckTensor(log_z, sizeof(float), n_q_heads, 1, 1, 0, 1, &extents[1]));
  COVATTN_RETURN_IF_ERROR(CheckScratch(scratch, scratch_bytes, needs.observe, &extents[2]));
  extents[3] = CacheExtent(cache);
  // The cache is written; scratch is written: neither may overlap anything.
  for (int i = 0; i < 4; ++i) {
    for (int j = i + 1; j < 4; ++j) {
      if ((i >= 2 || j >= 2) && extents[i].Overlaps(extents[j])) return COVATTN_ERR_ALIASING;
    }
  }
  for (size_t i = 0; i < n_q_heads * d; ++i) {
    if (!std::isfinite(q[i])) return COVATTN_ERR_NONFINITE;
  }
  for (size_t r = 0; r < n_q_heads; ++r) {
    if (std::isnan(log_z[r]) || log_z[r] == HUGE_VALF) return COVATTN_ERR_NONFINITE;
  }
  return COVATTN_OK;
}

}  // namespace

covattn_status ObserveScratchBytes(const covattn_cache_config& c, size_t n_q_heads, size_t* bytes) {
  size_t floats;
  if (MulOverflows(n_q_heads, c.head_dim + 1, &floats) ||
      AddOverflows(floats, kObserveChunk, &floats) ||
      MulOverflows(floats, sizeof(float), &floats) || AddOverflows(floats, 64, bytes)) {
    return COVATTN_ERR_SIZE_OVERFLOW;
  }
  return COVATTN_OK;
}

}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" {

covattn_status covattn_cache_observe(covattn_cache* cache, const float* q, size_t n_q_heads,
                                     float scale, const float* log_z, void* scratch,
                                     size_t scratch_bytes) {
  COVATTN_RETURN_IF_ERROR(CheckCache(cache));
  if (q == nullptr || log_z == nullptr) return COVATTN_ERR_NULL_POINTER;
  COVATTN_RETURN_IF_ERROR(CheckObserve(cache, q, n_q_heads, scale, log_z, scratch, scratch_bytes));
  if (!cache->HasRetained()) return COVATTN_OK;
  const size_t d = cache->Dim(), group = n_q_heads / cache->Heads();
  if (scale == 0.0f) scale = 1.0f / std::sqrt(static_cast<float>(d));
  const ObserveScratch s = CarveObserve(scratch, n_q_heads, d);
  for (size_t i = 0; i < n_q_heads * d; ++i) s.a[i] = scale * q[i];
  // A row that saw nothing (log Z = -inf) gives no weight: exp(s - inf) = 0.
  for (size_t r = 0; r < n_q_heads; ++r) {
    s.log_z[r] = log_z[r] == -HUGE_VALF ? HUGE_VALF : log_z[r];
  }
  const size_t row = cache->RowStride();
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const HeadRegions<covattn_cache> head = Head(cache, h);
    const float* a = s.a + h * group * d;
    const float* lz = s.log_z + h * group;
    ObserveRows(cache, Window(cache).k + h * cache->vec_bytes, row, cache->WindowCount(),
                head.window_scores, a, lz, group, s.weights);
    ObserveRows(cache, Retained(cache, h, 0).k, cache->VecStride(), *head.retained_count,
                head.retained_scores, a, lz, group, s.weights);
  }
  return COVATTN_OK;
}

}  // extern "C"
