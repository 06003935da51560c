// Per-target helpers that read K/V elements of any supported type as f32
// (int8 ones without their scale: the kernels apply it).
// Included by kernel files after hwy/foreach_target.h; the toggled include
// guard is Highway's pattern for code compiled once per target.
#if defined(COVATTN_SRC_LOAD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef COVATTN_SRC_LOAD_INL_H_
#undef COVATTN_SRC_LOAD_INL_H_
#else
#define COVATTN_SRC_LOAD_INL_H_
#endif

#include <hwy/highway.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "covattn/covattn.h"
#include "half.h"

HWY_BEFORE_NAMESPACE();
namespace covattn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Lanes(d) consecutive elements starting at p, as f32.
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, const float* HWY_RESTRICT p) {
  return hn::LoadU(d, p);
}
#if HWY_TARGET == HWY_EMU128 || HWY_TARGET == HWY_SCALAR
// The fallback targets hold vectors as arrays and emulate each operation
// lane by lane, so a lane loop over the scalar conversion is as fast, and it
// keeps the f16 kernels small: the vector form below, inlined into every
// tile, made this one target take minutes to compile under the sanitizers.
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, const hwy::float16_t* HWY_RESTRICT p) {
  HWY_ALIGN float lanes[hn::MaxLanes(d)];
  for (size_t i = 0; i < hn::Lanes(d); ++i) {
    uint16_t bits;
    std::memcpy(&bits, p + i, sizeof(bits));
    lanes[i] = F32FromF16Bits(bits);
  }
  return hn::Load(d, lanes);
}
#elif !(HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2) && \
    !(HWY_ARCH_ARM_A64 && HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128)
// Only x86 from AVX2 on (F16C) and 64-bit Arm convert f16 -> f32 in hardware.
// Elsewhere Highway 1.0.3 emulates it and turns infinities and NaN into large
// finite numbers, which would hide bad input. Convert the bits ourselves:
// normal numbers re-biased, inf/NaN kept, subnormals scaled.
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, const hwy::float16_t* HWY_RESTRICT p) {
  const hn::RebindToSigned<D> di;
  const hn::Rebind<uint16_t, D> du16;
  const auto bits =
      hn::BitCast(di, hn::PromoteTo(hn::RebindToUnsigned<D>(),
                                    hn::LoadU(du16, reinterpret_cast<const uint16_t*>(p))));
  const auto magnitude = hn::And(bits, hn::Set(di, 0x7FFF));
  const auto sign = hn::ShiftLeft<16>(hn::And(bits, hn::Set(di, 0x8000)));
  const auto shifted = hn::ShiftLeft<13>(magnitude);
  const auto normal = hn::Add(shifted, hn::Set(di, 112 << 23));  // exponent bias 15 -> 127
  const auto inf_nan = hn::Or(shifted, hn::Set(di, 0x7F800000));
  auto value =
      hn::BitCast(d, hn::IfThenElse(hn::Gt(magnitude, hn::Set(di, 0x7BFF)), inf_nan, normal));
  const auto subnormal = hn::Mul(hn::ConvertTo(d, magnitude), hn::Set(d, 1.0f / 16777216.0f));
  value =
      hn::IfThenElse(hn::RebindMask(d, hn::Lt(magnitude, hn::Set(di, 0x400))), subnormal, value);
  return hn::Or(value, hn::BitCast(d, sign));
}
#else
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, const hwy::float16_t* HWY_RESTRICT p) {
  return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::float16_t, D>(), p));
}
#endif
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, const hwy::bfloat16_t* HWY_RESTRICT p) {
  return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::bfloat16_t, D>(), p));
}
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, const int8_t* HWY_RESTRICT p) {
  const hn::RebindToSigned<D> di;
  return hn::ConvertTo(d, hn::PromoteTo(di, hn::LoadU(hn::Rebind<int8_t, D>(), p)));
}

// LoadAsF32 of a vector that two or three FMAs use (the K and V vectors of
// groups of two or three rows). On AVX-512, GCC 12 folds a plain f32 load
// into each of up to three uses, so each use loads again, and the kernels
// are bound by loads (three rows per KV head ran slower than four): an empty
// asm statement that needs the vector in a register stops the folding
// (GCC also turns an all-lanes masked load back into a plain one).
template <class D, typename T>
HWY_INLINE hn::Vec<D> LoadAsF32Shared(D d, const T* HWY_RESTRICT p) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3 && defined(__GNUC__)
  if constexpr (std::is_same_v<T, float>) {
    auto v = hn::LoadU(d, p);
    asm("" : "+v"(v.raw));
    return v;
  }
#endif
  return LoadAsF32(d, p);
}

// One element as f32.
HWY_INLINE float ElementAsF32(const float* p) { return *p; }
HWY_INLINE float ElementAsF32(const hwy::float16_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, sizeof(bits));
  return F32FromF16Bits(bits);
}
HWY_INLINE float ElementAsF32(const hwy::bfloat16_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, sizeof(bits));
  return F32FromBF16Bits(bits);
}
HWY_INLINE float ElementAsF32(const int8_t* p) { return static_cast<float>(*p); }

// Calls body(T*) with the K/V pointer cast to its element type.
template <class Body>
HWY_INLINE void WithElementType(uint32_t dtype, Body&& body) {
  switch (dtype) {
    case COVATTN_F32:
      body(static_cast<const float*>(nullptr));
      break;
    case COVATTN_F16:
      body(static_cast<const hwy::float16_t*>(nullptr));
      break;
    default:  // COVATTN_BF16 (validated by the caller)
      body(static_cast<const hwy::bfloat16_t*>(nullptr));
      break;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace covattn
HWY_AFTER_NAMESPACE();

#endif  // include guard
