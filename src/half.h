// The element types of K/V: scalar conversions of the 16-bit ones (bits in a
// uint16_t) to f32, for the few elements that fall outside whole vectors, and
// the choice among kernels compiled once per element type.
#ifndef COVATTN_SRC_HALF_H_
#define COVATTN_SRC_HALF_H_

#include <cstdint>
#include <cstring>

#include "covattn/covattn.h"

namespace covattn {

// The one of three per-element-type functions for dtype, a covattn_dtype
// the caller has validated.
template <class Function>
Function ForDtype(uint32_t dtype, Function f32, Function f16, Function bf16) {
  return dtype == COVATTN_F32 ? f32 : dtype == COVATTN_F16 ? f16 : bf16;
}

inline float F32FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline float F32FromBF16Bits(uint16_t b) { return F32FromBits(uint32_t{b} << 16); }

// IEEE binary16 -> binary32, exact for every input including subnormals,
// infinities and NaN.
inline float F32FromF16Bits(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) return F32FromBits(sign | 0x7F800000u | (mantissa << 13));
  if (exponent != 0) return F32FromBits(sign | ((exponent + 112) << 23) | (mantissa << 13));
  if (mantissa == 0) return F32FromBits(sign);
  // Subnormal: normalise the mantissa into an f32 exponent.
  int shift = 0;
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    ++shift;
  }
  return F32FromBits(sign | ((uint32_t(113 - shift)) << 23) | ((mantissa & 0x3FFu) << 13));
}

inline uint32_t BitsFromF32(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// f32 -> bfloat16 bits, round to nearest even; NaN stays NaN.
inline uint16_t BF16BitsFromF32(float f) {
  const uint32_t bits = BitsFromF32(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// f32 -> IEEE binary16 bits, round to nearest even, overflow to infinity,
// gradual underflow to subnormals; NaN stays NaN.
inline uint16_t F16BitsFromF32(float f) {
  const uint32_t bits = BitsFromF32(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);   // NaN
  if (magnitude >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520: inf
  if (magnitude >= 0x38800000u) {  // normal binary16 (>= 2^-14)
    const uint32_t rounded = magnitude + 0xFFFu + ((magnitude >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
  }
  // Subnormal or zero: the value in units of 2^-24, rounded to nearest even.
  const uint32_t exponent = magnitude >> 23;
  if (exponent < 102) return sign;  // below half of the smallest subnormal
  const uint32_t mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126 - exponent;  // 14 .. 24
  const uint32_t half = 1u << (shift - 1);
  const uint32_t rest = mantissa & ((1u << shift) - 1);
  uint32_t result = mantissa >> shift;
  if (rest > half || (rest == half && (result & 1u))) ++result;
  return static_cast<uint16_t>(sign | result);
}

}  // namespace covattn

#endif  // COVATTN_SRC_HALF_H_
