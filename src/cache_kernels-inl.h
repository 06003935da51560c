// Per-target bodies of the bounded cache's kernels (cache_kernels.cc),
// in a header of their own so that tests can call them on every target.
#if defined(COVATTN_SRC_CACHE_KERNELS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef COVATTN_SRC_CACHE_KERNELS_INL_H_
#undef COVATTN_SRC_CACHE_KERNELS_INL_H_
#else
#define COVATTN_SRC_CACHE_KERNELS_INL_H_
#endif

#include <hwy/highway.h>

#include <cstring>
#include <type_traits>

#include "cache_kernels.h"
#include "load-inl.h"

HWY_BEFORE_NAMESPACE();
namespace covattn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// dst[r][0..dim) = row r of src as f32 (cache_kernels.h, CacheRowsToF32).
template <typename T>
void RowsToF32Typed(const T* src, size_t stride, size_t n, size_t dim, float* dst, size_t ld) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  for (size_t r = 0; r < n; ++r) {
    const T* row = src + r * stride;
    float* out = dst + r * ld;
    size_t i = 0;
    if constexpr (std::is_same_v<T, int8_t>) {
      const float scale = detail::StoredInt8Scale(row, dim);
      const auto vs = hn::Set(d, scale);
      for (; i + N <= dim; i += N) hn::StoreU(hn::Mul(LoadAsF32(d, row + i), vs), d, out + i);
      for (; i < dim; ++i) out[i] = ElementAsF32(row + i) * scale;
    } else {
      for (; i + N <= dim; i += N) hn::StoreU(LoadAsF32(d, row + i), d, out + i);
      for (; i < dim; ++i) out[i] = ElementAsF32(row + i);
    }
  }
}

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
      if constexpr (kRows > 1) y1 = hn::MulAdd(hn::Set(d, x[ldx + j]), w, y1);
      if constexpr (kRows > 2) y2 = hn::MulAdd(hn::Set(d, x[2 * ldx + j]), w, y2);
      if constexpr (kRows > 3) y3 = hn::MulAdd(hn::Set(d, x[3 * ldx + j]), w, y3);
    }
    s0 = hn::MulAdd(y0, y0, s0);
    if constexpr (kRows > 1) s1 = hn::MulAdd(y1, y1, s1);
    if constexpr (kRows > 2) s2 = hn::MulAdd(y2, y2, s2);
    if constexpr (kRows > 3) s3 = hn::MulAdd(y3, y3, s3);
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
  if constexpr (kRows > 1) dist[1] = hn::GetLane(hn::SumOfLanes(d, s1)) + tail[1];
  if constexpr (kRows > 2) dist[2] = hn::GetLane(hn::SumOfLanes(d, s2)) + tail[2];
  if constexpr (kRows > 3) dist[3] = hn::GetLane(hn::SumOfLanes(d, s3)) + tail[3];
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn
HWY_AFTER_NAMESPACE();

#endif  // include guard
