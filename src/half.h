// Scalar conversions of the 16-bit element types (bits in a uint16_t) to f32,
// for the few elements that fall outside whole vectors.
#ifndef COVATTN_SRC_HALF_H_
#define COVATTN_SRC_HALF_H_

#include <cstdint>
#include <cstring>

namespace covattn {

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

}  // namespace covattn

#endif  // COVATTN_SRC_HALF_H_
