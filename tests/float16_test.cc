// The tests' own 16-bit encoders and decoders (tests/float16.h), over every
// bit pattern: every value round-trips, midpoints round to even, the values
// just beside a midpoint round to the nearer neighbour, overflow gives
// infinity, and a NaN stays a NaN of the same sign.
#include "float16.h"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <ios>
#include <limits>

using namespace covattn_test;

namespace {

bool IsF16Nan(uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0; }
bool IsBF16Nan(uint16_t b) { return (b & 0x7F80) == 0x7F80 && (b & 0x007F) != 0; }

}  // namespace

TEST_CASE("binary16 encoder: nearest, ties to even, over every bit pattern") {
  for (uint32_t sign : {0u, 0x8000u}) {
    for (uint32_t magnitude = 0; magnitude < 0x7C00; ++magnitude) {
      const uint16_t h = static_cast<uint16_t>(sign | magnitude);
      const double x = DoubleFromF16(h);
      REQUIRE(std::isfinite(x));
      CHECK(F16FromDouble(x) == h);
      if (magnitude + 1 < 0x7C00) {  // the midpoint to the next pattern up, and its neighbours
        const uint16_t next = static_cast<uint16_t>(h + 1), even = (h & 1) == 0 ? h : next;
        const double y = DoubleFromF16(next), mid = (x + y) / 2;  // exact in double
        CHECK(F16FromDouble(mid) == even);
        CHECK(F16FromDouble(std::nextafter(mid, x)) == h);
        CHECK(F16FromDouble(std::nextafter(mid, y)) == next);
      }
    }
    // Beyond the largest finite value (65504): 65520 is the midpoint to the
    // next power of two, which rounds to even, that is to infinity.
    const double s = sign ? -1.0 : 1.0;
    CHECK(F16FromDouble(s * 65519.99) == (sign | 0x7BFF));
    CHECK(F16FromDouble(s * 65520.0) == (sign | 0x7C00));
    CHECK(F16FromDouble(s * 1e300) == (sign | 0x7C00));
    CHECK(F16FromDouble(s * std::numeric_limits<double>::infinity()) == (sign | 0x7C00));
    // Below half of the smallest subnormal (2^-25, itself a tie): zero.
    CHECK(F16FromDouble(s * std::ldexp(1.0, -25)) == sign);
    CHECK(F16FromDouble(s * std::ldexp(1.0, -30)) == sign);
    CHECK(F16FromDouble(s * std::nextafter(std::ldexp(1.0, -25), 1.0)) == (sign | 1));
  }
  CHECK(IsF16Nan(F16FromDouble(std::nan(""))));
  CHECK(std::isnan(DoubleFromF16(0x7C01)));
  CHECK(std::isnan(DoubleFromF16(0xFE00)));
}

TEST_CASE("bfloat16 encoder: nearest, ties to even, over every bit pattern") {
  for (uint32_t sign : {0u, 0x8000u}) {
    for (uint32_t magnitude = 0; magnitude < 0x7F80; ++magnitude) {
      const uint16_t b = static_cast<uint16_t>(sign | magnitude);
      const double x = DoubleFromBF16(b);
      REQUIRE(std::isfinite(x));
      CHECK(BF16FromFloat(static_cast<float>(x)) == b);
      // The midpoint to the next pattern up (infinity after the largest
      // finite value) and its neighbours, as f32 bits.
      const uint32_t mid = uint32_t{b} << 16 | 0x8000;
      const uint16_t next = static_cast<uint16_t>(b + 1), even = (b & 1) == 0 ? b : next;
      CHECK(BF16FromFloat(FloatFromBits(mid)) == even);
      CHECK(BF16FromFloat(FloatFromBits(mid - 1)) == b);
      CHECK(BF16FromFloat(FloatFromBits(mid + 1)) == next);
    }
    const float inf = std::numeric_limits<float>::infinity();
    CHECK(BF16FromFloat(sign ? -inf : inf) == (sign | 0x7F80));
  }
}

TEST_CASE("bfloat16 encoder: every NaN stays a NaN of the same sign") {
  // Rounding the bits of a NaN used to carry into the exponent (a payload in
  // the low half only, 0x7F800001: infinity) or out of the sign (0xFFFFFFFF:
  // zero).
  for (uint32_t high = 0x7F80; high <= 0x7FFF; ++high) {
    for (uint32_t low : {0x0000u, 0x0001u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu}) {
      for (uint32_t sign : {0u, 0x80000000u}) {
        const uint32_t bits = sign | high << 16 | low;
        const float f = FloatFromBits(bits);
        if (!std::isnan(f)) continue;  // high 0x7F80, low 0: infinity
        const uint16_t b = BF16FromFloat(f);
        INFO("f32 bits " << std::hex << bits << " -> bf16 " << b);
        CHECK(IsBF16Nan(b));
        CHECK((b & 0x8000) == sign >> 16);
        CHECK(std::isnan(DoubleFromBF16(b)));
      }
    }
  }
}
