// Per-target kernels of the bounded cache: reading token rows of any dtype
// as f32, and squared Mahalanobis distances of keys under a whitening
// matrix (the outlier policy of include/covattn/cache.h).

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cache_kernels.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include "cache_kernels.h"
#include "load-inl.h"

HWY_BEFORE_NAMESPACE();
namespace covattn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <typename T>
void RowsToF32Typed(const T* src, size_t stride, size_t n, size_t dim, float* dst, size_t ld) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  for (size_t r = 0; r < n; ++r) {
    const T* row = src + r * stride;
    float* out = dst + r * ld;
    size_t i = 0;
    for (; i + N <= dim; i += N) hn::StoreU(LoadAsF32(d, row + i), d, out + i);
    for (; i < dim; ++i) out[i] = ElementAsF32(row + i);
  }
}

void RowsToF32(uint32_t dtype, const void* src, size_t stride, size_t n, size_t dim, float* dst,
               size_t ld) {
  WithElementType(dtype, [&](auto* tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    RowsToF32Typed(static_cast<const T*>(src), stride, n, dim, dst, ld);
  });
}

// y = W (x - mu) with W^T stored as packed upper-triangular rows, as a sum of
// outer products (y[j..d) += x_j W^T[j][j..d)): no horizontal sums.
void MahalanobisRows(const float* wt_packed, const float* mean, const float* rows, size_t ld,
                     size_t n, size_t dim, float* work, float* out) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  float* x = work;
  float* y = work + dim;
  for (size_t r = 0; r < n; ++r) {
    const float* row = rows + r * ld;
    for (size_t i = 0; i < dim; ++i) x[i] = row[i] - mean[i], y[i] = 0.0f;
    const float* w = wt_packed;
    for (size_t j = 0; j < dim; ++j) {
      const size_t len = dim - j;
      const auto xj = hn::Set(d, x[j]);
      float* yj = y + j;
      size_t i = 0;
      for (; i + N <= len; i += N) {
        hn::StoreU(hn::MulAdd(xj, hn::LoadU(d, w + i), hn::LoadU(d, yj + i)), d, yj + i);
      }
      for (; i < len; ++i) yj[i] += x[j] * w[i];
      w += len;
    }
    auto sum = hn::Zero(d);
    size_t i = 0;
    for (; i + N <= dim; i += N) {
      const auto yi = hn::LoadU(d, y + i);
      sum = hn::MulAdd(yi, yi, sum);
    }
    float total = hn::GetLane(hn::SumOfLanes(d, sum));
    for (; i < dim; ++i) total += y[i] * y[i];
    out[r] = total;
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "dispatch.h"

namespace covattn {
HWY_EXPORT(RowsToF32);
HWY_EXPORT(MahalanobisRows);

namespace detail {

void CacheRowsToF32(uint32_t dtype, const void* src, size_t stride, size_t n, size_t dim,
                    float* dst, size_t ld) {
  COVATTN_DISPATCH(RowsToF32)(dtype, src, stride, n, dim, dst, ld);
}

void CacheMahalanobis(const float* wt_packed, const float* mean, const float* rows, size_t ld,
                      size_t n, size_t dim, float* work, float* out) {
  COVATTN_DISPATCH(MahalanobisRows)(wt_packed, mean, rows, ld, n, dim, work, out);
}

}  // namespace detail
}  // namespace covattn
#endif  // HWY_ONCE
