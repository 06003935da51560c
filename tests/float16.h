// The 16-bit element formats (IEEE binary16, bfloat16), written here
// independently of the library's own conversions (src/half.h), for the tests
// and the fuzz targets.
#ifndef COVATTN_TESTS_FLOAT16_H_
#define COVATTN_TESTS_FLOAT16_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace covattn_test {

inline double DoubleFromF16(uint16_t h) {
  const int exponent = (h >> 10) & 0x1F;
  const double mantissa = h & 0x3FF;
  double magnitude;
  if (exponent == 0x1F) {
    magnitude = mantissa == 0 ? std::numeric_limits<double>::infinity()
                              : std::numeric_limits<double>::quiet_NaN();
  } else if (exponent == 0) {
    magnitude = std::ldexp(mantissa, -24);
  } else {
    magnitude = std::ldexp(1024.0 + mantissa, exponent - 25);
  }
  return (h & 0x8000) ? -magnitude : magnitude;
}

// Nearest binary16 (ties to even), by search over the ordered bit patterns.
inline uint16_t F16FromDouble(double x) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  if (std::isnan(x)) return static_cast<uint16_t>(sign | 0x7E00);
  const double a = std::fabs(x);
  uint16_t lo = 0, hi = 0x7C00;  // +0 .. +inf
  while (hi - lo > 1) {          // invariant: value(lo) <= a < value(hi)
    const uint16_t mid = static_cast<uint16_t>((lo + hi) / 2);
    (DoubleFromF16(mid) <= a ? lo : hi) = mid;
  }
  const double dlo = a - DoubleFromF16(lo), dhi = DoubleFromF16(hi) - a;
  const uint16_t pick = (dlo < dhi || (dlo == dhi && (lo & 1) == 0)) ? lo : hi;
  return static_cast<uint16_t>(sign | pick);
}

inline double DoubleFromBF16(uint16_t b) {
  const uint32_t bits = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t BF16FromFloat(float f) {  // nearest, ties to even
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace covattn_test

#endif  // COVATTN_TESTS_FLOAT16_H_
