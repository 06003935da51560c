// Row conversion between f32 and the 16-bit element types
// (covattn_convert in include/covattn/covattn.h). f32 -> f16/bf16 is integer
// arithmetic on the bits, the same on every target and equal to the scalar
// encoders of half.h (which convert the elements after the last whole
// vector); 16-bit -> f32 is load-inl.h's LoadAsF32, exact everywhere.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "convert.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <cstring>

#include "covattn/covattn.h"
#include "half.h"
#include "load-inl.h"

HWY_BEFORE_NAMESPACE();
namespace covattn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The bits of a binary16 for each lane's f32 (half.h's F16BitsFromF32).
template <class D>
HWY_INLINE hn::Vec<hn::RebindToSigned<D>> F16Bits(D d, hn::Vec<D> x) {
  const hn::RebindToSigned<D> di;
  const auto bits = hn::BitCast(di, x);
  const auto sign = hn::And(hn::ShiftRight<16>(bits), hn::Set(di, 0x8000));
  const auto magnitude = hn::And(bits, hn::Set(di, 0x7FFFFFFF));
  // Normal binary16 (>= 2^-14): re-bias the exponent, round to nearest even.
  const auto rounded =
      hn::Add(magnitude,
              hn::Add(hn::Set(di, 0xFFF), hn::And(hn::ShiftRight<13>(magnitude), hn::Set(di, 1))));
  auto result = hn::ShiftRight<13>(hn::Sub(rounded, hn::Set(di, 0x38000000)));
  // Below 2^-14: |x| + 0.5 rounds |x| to a multiple of 2^-24 (the subnormal
  // unit) in the FPU's nearest-even mode; 1024 units is the smallest normal.
  const auto units = hn::Sub(hn::BitCast(di, hn::Add(hn::BitCast(d, magnitude), hn::Set(d, 0.5f))),
                             hn::Set(di, 0x3F000000));
  result = hn::IfThenElse(hn::Lt(magnitude, hn::Set(di, 0x38800000)), units, result);
  result = hn::IfThenElse(hn::Gt(magnitude, hn::Set(di, 0x477FEFFF)), hn::Set(di, 0x7C00), result);
  result = hn::IfThenElse(hn::Gt(magnitude, hn::Set(di, 0x7F800000)), hn::Set(di, 0x7E00), result);
  return hn::Or(result, sign);
}

// The bits of a bfloat16 for each lane's f32 (half.h's BF16BitsFromF32).
template <class D>
HWY_INLINE hn::Vec<hn::RebindToSigned<D>> BF16Bits(D d, hn::Vec<D> x) {
  const hn::RebindToSigned<D> di;
  const hn::RebindToUnsigned<D> du;
  (void)d;
  const auto bits = hn::BitCast(du, x);
  const auto rounded = hn::ShiftRight<16>(hn::Add(
      bits, hn::Add(hn::Set(du, 0x7FFFu), hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u)))));
  const auto quiet_nan = hn::Or(hn::ShiftRight<16>(bits), hn::Set(du, 0x40u));
  const auto magnitude = hn::BitCast(di, hn::And(bits, hn::Set(du, 0x7FFFFFFFu)));
  return hn::BitCast(
      di, hn::IfThenElse(hn::RebindMask(du, hn::Gt(magnitude, hn::Set(di, 0x7F800000))), quiet_nan,
                         rounded));
}

// dst[i] = the 16-bit bits of src[i]: vector_bits on whole vectors,
// scalar_bits (the same rounding) on the tail.
template <class VectorBits>
HWY_INLINE void F32To16BitRow(const float* HWY_RESTRICT src, size_t n, uint16_t* HWY_RESTRICT dst,
                              VectorBits vector_bits, uint16_t (*scalar_bits)(float)) {
  const hn::ScalableTag<float> d;
  const hn::Rebind<uint16_t, decltype(d)> d16;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::DemoteTo(d16, vector_bits(d, hn::LoadU(d, src + i))), d16, dst + i);
  }
  for (; i < n; ++i) dst[i] = scalar_bits(src[i]);
}

void F32ToF16Row(const float* HWY_RESTRICT src, size_t n, uint16_t* HWY_RESTRICT dst) {
  F32To16BitRow(
      src, n, dst, [](auto d, auto x) { return F16Bits(d, x); }, F16BitsFromF32);
}

void F32ToBF16Row(const float* HWY_RESTRICT src, size_t n, uint16_t* HWY_RESTRICT dst) {
  F32To16BitRow(
      src, n, dst, [](auto d, auto x) { return BF16Bits(d, x); }, BF16BitsFromF32);
}

template <typename T>
HWY_INLINE void ToF32Row(const T* HWY_RESTRICT src, size_t n, float* HWY_RESTRICT dst) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(LoadAsF32(d, src + i), d, dst + i);
  for (; i < n; ++i) dst[i] = ElementAsF32(src + i);
}

void F16ToF32Row(const uint16_t* HWY_RESTRICT src, size_t n, float* HWY_RESTRICT dst) {
  ToF32Row(reinterpret_cast<const hwy::float16_t*>(src), n, dst);
}

void BF16ToF32Row(const uint16_t* HWY_RESTRICT src, size_t n, float* HWY_RESTRICT dst) {
  ToF32Row(reinterpret_cast<const hwy::bfloat16_t*>(src), n, dst);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "dispatch.h"
#include "validate.h"

namespace covattn {
HWY_EXPORT(F32ToF16Row);
HWY_EXPORT(F32ToBF16Row);
HWY_EXPORT(F16ToF32Row);
HWY_EXPORT(BF16ToF32Row);
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" {

covattn_status covattn_convert(void* dst, uint32_t dst_dtype, const void* src, uint32_t src_dtype,
                               size_t n) {
  const size_t dst_size = DtypeSize(dst_dtype), src_size = DtypeSize(src_dtype);
  if (dst_size == 0 || src_size == 0) return COVATTN_ERR_UNSUPPORTED_DTYPE;
  if (dst_dtype != COVATTN_F32 && src_dtype != COVATTN_F32) return COVATTN_ERR_UNSUPPORTED_DTYPE;
  if (n == 0) return COVATTN_OK;
  if (dst == nullptr || src == nullptr) return COVATTN_ERR_NULL_POINTER;
  size_t dst_bytes = 0, src_bytes = 0;
  if (MulOverflows(n, dst_size, &dst_bytes) || MulOverflows(n, src_size, &src_bytes)) {
    return COVATTN_ERR_SIZE_OVERFLOW;
  }
  Extent dst_extent, src_extent;
  COVATTN_RETURN_IF_ERROR(MemoryExtent(dst, dst_bytes, &dst_extent));
  COVATTN_RETURN_IF_ERROR(MemoryExtent(src, src_bytes, &src_extent));
  if (reinterpret_cast<uintptr_t>(dst) % dst_size != 0 ||
      reinterpret_cast<uintptr_t>(src) % src_size != 0) {
    return COVATTN_ERR_MISALIGNED;
  }
  if (dst_extent.Overlaps(src_extent)) return COVATTN_ERR_ALIASING;
  float* dst_f32 = static_cast<float*>(dst);
  const float* src_f32 = static_cast<const float*>(src);
  if (src_dtype == COVATTN_F32 && dst_dtype == COVATTN_F32) {
    std::memcpy(dst, src, dst_bytes);
  } else if (src_dtype == COVATTN_F32) {
    uint16_t* dst16 = static_cast<uint16_t*>(dst);
    if (dst_dtype == COVATTN_F16) {
      COVATTN_DISPATCH(covattn::F32ToF16Row)(src_f32, n, dst16);
    } else {
      COVATTN_DISPATCH(covattn::F32ToBF16Row)(src_f32, n, dst16);
    }
  } else {
    const uint16_t* src16 = static_cast<const uint16_t*>(src);
    if (src_dtype == COVATTN_F16) {
      COVATTN_DISPATCH(covattn::F16ToF32Row)(src16, n, dst_f32);
    } else {
      COVATTN_DISPATCH(covattn::BF16ToF32Row)(src16, n, dst_f32);
    }
  }
  return COVATTN_OK;
}

}  // extern "C"
#endif  // HWY_ONCE
