// The 16-bit element formats (IEEE binary16, bfloat16), written here
// independently of the library's own conversions (src/half.h), for the tests
// and the fuzz targets: the one test-side encoder and decoder of each format
// (tests/float16_test.cc checks them over every bit pattern). Independent
// because the tests judge the library's conversions (stored cache rows,
// loaded K/V, files) with them.
#ifndef COVATTN_TESTS_FLOAT16_H_
#define COVATTN_TESTS_FLOAT16_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace covattn_test {

// The bits of an f32 and back.
inline uint32_t BitsOfFloat(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}
inline float FloatFromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

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

// Nearest binary16 (ties to even; 65520 and above round to infinity). The
// value is counted in units of the last place of its binade (2^-24 below
// 2^-14) and rounded with nearbyint; binary16 bit patterns are ordered like
// the values, so the pattern is (binade's first pattern) + units, and a
// carry into the next binade or to infinity falls out of the addition.
inline uint16_t F16FromDouble(double x) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  if (std::isnan(x)) return static_cast<uint16_t>(sign | 0x7E00);
  const double a = std::fabs(x);
  if (a >= 65520.0) return static_cast<uint16_t>(sign | 0x7C00);
  if (a == 0.0) return sign;
  int exponent;
  std::frexp(a, &exponent);  // a = f 2^exponent, f in [0.5, 1)
  const int ulp_exponent = std::max(exponent - 11, -24);
  const double units = std::nearbyint(std::ldexp(a, -ulp_exponent));  // ties to even
  return static_cast<uint16_t>(sign | ((ulp_exponent + 24) * 1024 + static_cast<int>(units)));
}

inline double DoubleFromBF16(uint16_t b) { return FloatFromBits(uint32_t{b} << 16); }

// Nearest bfloat16, ties to even. A NaN stays a NaN of the same sign (quiet):
// rounding its bits could carry into the exponent (a NaN whose payload lies
// in the low half becomes infinity) or past the sign.
inline uint16_t BF16FromFloat(float f) {
  uint32_t bits = BitsOfFloat(f);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x0040);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace covattn_test

#endif  // COVATTN_TESTS_FLOAT16_H_
