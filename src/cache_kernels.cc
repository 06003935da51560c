// Per-target kernels of the bounded cache: reading token rows of any dtype
// as f32, and squared Mahalanobis distances of keys under a whitening
// matrix (the outlier policy of include/covattn/cache.h).

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cache_kernels.cc"
#include <cfloat>
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

// Y = X W^T for up to four centred rows X at once, a GEMM over the upper
// triangle of W^T: each bf16 row of W^T is loaded once for all rows, each
// output vector stays in a register while j runs (only j < i matter).
// Y = X W^T for up to four centred rows X at once, a GEMM over the upper
// triangle of W^T: each bf16 row of W^T is loaded once for all rows, and each
// output vector stays in a register while j runs (only j <= i contribute).
// Returns the squared norms of the rows of Y.
template <size_t kRows, class D>
HWY_INLINE void MahalanobisTile(D d, const hwy::bfloat16_t* HWY_RESTRICT wt, const float* x,
                                size_t ldx, size_t dim, float* dist) {
  const size_t N = hn::Lanes(d);
  auto s0 = hn::Zero(d), s1 = hn::Zero(d), s2 = hn::Zero(d), s3 = hn::Zero(d);
  size_t i0 = 0;
  for (; i0 + N <= dim; i0 += N) {
    auto y0 = hn::Zero(d), y1 = hn::Zero(d), y2 = hn::Zero(d), y3 = hn::Zero(d);
    for (size_t j = 0; j < i0 + N; ++j) {
      const auto w = LoadAsF32(d, wt + j * dim + i0);
      y0 = hn::MulAdd(hn::Set(d, x[j]), w, y0);
      if (kRows > 1) y1 = hn::MulAdd(hn::Set(d, x[ldx + j]), w, y1);
      if (kRows > 2) y2 = hn::MulAdd(hn::Set(d, x[2 * ldx + j]), w, y2);
      if (kRows > 3) y3 = hn::MulAdd(hn::Set(d, x[3 * ldx + j]), w, y3);
    }
    s0 = hn::MulAdd(y0, y0, s0);
    if (kRows > 1) s1 = hn::MulAdd(y1, y1, s1);
    if (kRows > 2) s2 = hn::MulAdd(y2, y2, s2);
    if (kRows > 3) s3 = hn::MulAdd(y3, y3, s3);
  }
  float tail[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (size_t i = i0; i < dim; ++i) {  // the columns after the last whole vector
    for (size_t r = 0; r < kRows; ++r) {
      float y = 0.0f;
      for (size_t j = 0; j <= i; ++j) y += x[r * ldx + j] * ElementAsF32(wt + j * dim + i);
      tail[r] += y * y;
    }
  }
  dist[0] = hn::GetLane(hn::SumOfLanes(d, s0)) + tail[0];
  if (kRows > 1) dist[1] = hn::GetLane(hn::SumOfLanes(d, s1)) + tail[1];
  if (kRows > 2) dist[2] = hn::GetLane(hn::SumOfLanes(d, s2)) + tail[2];
  if (kRows > 3) dist[3] = hn::GetLane(hn::SumOfLanes(d, s3)) + tail[3];
}

void MahalanobisRows(const uint16_t* wt_bits, const float* mean, const float* rows, size_t ld,
                     size_t n, size_t dim, float* work, float* out) {
  const hn::ScalableTag<float> d;
  const auto* wt = reinterpret_cast<const hwy::bfloat16_t*>(wt_bits);
  for (size_t r0 = 0; r0 < n; r0 += detail::kMahalanobisRows) {
    const size_t nr = HWY_MIN(detail::kMahalanobisRows, n - r0);
    for (size_t r = 0; r < nr; ++r) {  // centre the rows
      for (size_t i = 0; i < dim; ++i) work[r * dim + i] = rows[(r0 + r) * ld + i] - mean[i];
    }
    switch (nr) {
      case 4:
        MahalanobisTile<4>(d, wt, work, dim, dim, out + r0);
        break;
      case 3:
        MahalanobisTile<3>(d, wt, work, dim, dim, out + r0);
        break;
      case 2:
        MahalanobisTile<2>(d, wt, work, dim, dim, out + r0);
        break;
      default:
        MahalanobisTile<1>(d, wt, work, dim, dim, out + r0);
        break;
    }
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

void CacheMahalanobis(const uint16_t* wt, const float* mean, const float* rows, size_t ld,
                      size_t n, size_t dim, float* work, float* out) {
  COVATTN_DISPATCH(MahalanobisRows)(wt, mean, rows, ld, n, dim, work, out);
  // Keys far beyond the whitening's scale (inputs reach 2^40) overflow f32:
  // they are as outlying as can be, so they score FLT_MAX, not inf or NaN,
  // which would break the slots' ordering and the file's finite-value check.
  for (size_t i = 0; i < n; ++i) {
    if (!(out[i] <= FLT_MAX)) out[i] = FLT_MAX;
  }
}

}  // namespace detail
}  // namespace covattn
#endif  // HWY_ONCE
