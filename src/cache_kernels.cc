// Per-target kernels of the bounded cache: reading token rows of any dtype
// (int8 as the cache stores it) as f32, and squared Mahalanobis distances of keys under a whitening
// matrix (the outlier policy of include/covattn/cache.h). The bodies are in
// cache_kernels-inl.h.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cache_kernels.cc"
#include "cache_kernels.h"

#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <cfloat>

#include "cache_kernels-inl.h"

HWY_BEFORE_NAMESPACE();
namespace covattn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void RowsToF32(uint32_t dtype, const void* src, size_t stride, size_t n, size_t dim, float* dst,
               size_t ld) {
  if (dtype == COVATTN_INT8) {
    return RowsToF32Typed(static_cast<const int8_t*>(src), stride, n, dim, dst, ld);
  }
  WithElementType(dtype, [&](auto* tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    RowsToF32Typed(static_cast<const T*>(src), stride, n, dim, dst, ld);
  });
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

void CacheMahalanobis(const uint16_t* wt, const float* mean, const float* rows, size_t ld, size_t n,
                      size_t dim, float* work, float* out) {
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
