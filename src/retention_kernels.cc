// Per-target kernel of the retention unit (include/covattn/cache.h): the
// softmax weight each exact token drew from a decode's queries, recomputed
// from the queries and the normaliser decode reported. Scores go four tokens
// at a time (each query vector loaded once for four keys), the weights of a
// block of tokens through one vector exponential.

// foreach_target.h comes before the per-target headers (math-inl.h).
// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "retention_kernels.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>
// clang-format on

#include "retention_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cache_kernels.h"
#include "load-inl.h"

HWY_BEFORE_NAMESPACE();
namespace covattn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr size_t kBlockTokens = 64;
constexpr size_t kMaxLanes = 64;  // f32 lanes of the widest vector (SVE, 2048 bits)

// s[t] = a . k_t for kTok consecutive tokens (rows `stride` apart).
template <size_t kTok, class D, typename T>
HWY_INLINE void Dots(D d, const float* HWY_RESTRICT a, const T* HWY_RESTRICT k, size_t stride,
                     size_t dim, float* HWY_RESTRICT s) {
  const size_t N = hn::Lanes(d);
  auto acc0 = hn::Zero(d), acc1 = hn::Zero(d), acc2 = hn::Zero(d), acc3 = hn::Zero(d);
  size_t i = 0;
  for (; i + N <= dim; i += N) {
    const auto q = hn::LoadU(d, a + i);
    acc0 = hn::MulAdd(q, LoadAsF32(d, k + i), acc0);
    if (kTok > 1) acc1 = hn::MulAdd(q, LoadAsF32(d, k + stride + i), acc1);
    if (kTok > 2) acc2 = hn::MulAdd(q, LoadAsF32(d, k + 2 * stride + i), acc2);
    if (kTok > 3) acc3 = hn::MulAdd(q, LoadAsF32(d, k + 3 * stride + i), acc3);
  }
  float tail[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (; i < dim; ++i) {
    for (size_t t = 0; t < kTok; ++t) tail[t] += a[i] * ElementAsF32(k + t * stride + i);
  }
  s[0] = hn::GetLane(hn::SumOfLanes(d, acc0)) + tail[0];
  if (kTok > 1) s[1] = hn::GetLane(hn::SumOfLanes(d, acc1)) + tail[1];
  if (kTok > 2) s[2] = hn::GetLane(hn::SumOfLanes(d, acc2)) + tail[2];
  if (kTok > 3) s[3] = hn::GetLane(hn::SumOfLanes(d, acc3)) + tail[3];
}

// w[t] += min(1, exp(s[t] - log_z)) for n scores; NaN adds nothing. s and w
// have room for n rounded up to whole vectors.
template <class D>
HWY_INLINE void AddWeights(D d, float* HWY_RESTRICT s, size_t n, float log_z,
                           float* HWY_RESTRICT w) {
  const size_t N = hn::Lanes(d);
  const auto shift = hn::Set(d, log_z), zero = hn::Zero(d);
  // Below -100 the weight is 0 in f32 anyway; clamping keeps Exp in range.
  const auto floor = hn::Set(d, -100.0f);
  std::fill(s + n, s + hwy::RoundUpTo(n, N), -HUGE_VALF);
  for (size_t t = 0; t < n; t += N) {
    const auto x = hn::Sub(hn::Load(d, s + t), shift);
    const auto is_number = hn::Eq(x, x);
    const auto clamped = hn::Max(hn::Min(hn::IfThenElse(is_number, x, floor), zero), floor);
    const auto e = hn::IfThenElseZero(hn::Gt(x, floor), hn::Exp(d, clamped));
    hn::Store(hn::Add(hn::Load(d, w + t), e), d, w + t);
  }
}

template <typename T>
void WeightsTyped(const T* k, size_t stride, size_t n, size_t dim, const float* a, size_t n_rows,
                  const float* log_z, float* weights) {
  const hn::ScalableTag<float> d;
  // Scores and weights of one block, padded to whole vectors.
  HWY_ALIGN float s[kBlockTokens + kMaxLanes];
  HWY_ALIGN float w[kBlockTokens + kMaxLanes];
  for (size_t t0 = 0; t0 < n; t0 += kBlockTokens) {
    const size_t nt = HWY_MIN(kBlockTokens, n - t0);
    const T* kb = k + t0 * stride;
    std::fill(w, w + kBlockTokens + kMaxLanes, 0.0f);
    float scales[kBlockTokens];  // int8: each stored vector's scale follows it
    if constexpr (std::is_same_v<T, int8_t>) {
      for (size_t t = 0; t < nt; ++t) scales[t] = detail::StoredInt8Scale(kb + t * stride, dim);
    }
    for (size_t r = 0; r < n_rows; ++r) {
      const float* ar = a + r * dim;
      size_t t = 0;
      for (; t + 4 <= nt; t += 4) Dots<4>(d, ar, kb + t * stride, stride, dim, s + t);
      for (; t < nt; ++t) Dots<1>(d, ar, kb + t * stride, stride, dim, s + t);
      if constexpr (std::is_same_v<T, int8_t>) {
        for (t = 0; t < nt; ++t) s[t] *= scales[t];
      }
      AddWeights(d, s, nt, log_z[r], w);
    }
    std::copy(w, w + nt, weights + t0);
  }
}

void Weights(uint32_t dtype, const void* k, size_t stride, size_t n, size_t dim, const float* a,
             size_t n_rows, const float* log_z, float* weights) {
  if (dtype == COVATTN_INT8) {
    return WeightsTyped(static_cast<const int8_t*>(k), stride, n, dim, a, n_rows, log_z, weights);
  }
  WithElementType(dtype, [&](auto* tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    WeightsTyped(static_cast<const T*>(k), stride, n, dim, a, n_rows, log_z, weights);
  });
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "dispatch.h"

namespace covattn {
HWY_EXPORT(Weights);

namespace detail {

void ExactTokenWeights(uint32_t dtype, const void* k, size_t stride, size_t n, size_t dim,
                       const float* a, size_t n_rows, const float* log_z, float* weights) {
  COVATTN_DISPATCH(Weights)(dtype, k, stride, n, dim, a, n_rows, log_z, weights);
}

}  // namespace detail
}  // namespace covattn
#endif  // HWY_ONCE
