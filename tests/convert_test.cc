// covattn_convert on every target against the tests' own encoders and
// decoders (tests/float16.h): every 16-bit pattern to f32 and back, random
// and boundary f32 values to 16 bits, lengths with and without a tail, and
// bad arguments refused with dst untouched.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <ios>
#include <vector>

#include "covattn/covattn.h"
#include "float16.h"
#include "test_util.h"

using namespace covattn_test;

namespace {

// The f32 values that decide rounding: every 16-bit value of the format, the
// midpoints between neighbours and the floats just beside them, the overflow
// threshold, f32 subnormals, infinities, NaNs of both signs with payloads in
// the high and the low half, then random bit patterns.
std::vector<float> Probes(bool f16) {
  std::vector<float> x;
  for (uint32_t h = 0; h < 65536; ++h) {
    const double value = f16 ? DoubleFromF16(uint16_t(h)) : DoubleFromBF16(uint16_t(h));
    const double next = f16 ? DoubleFromF16(uint16_t(h + 1)) : DoubleFromBF16(uint16_t(h + 1));
    x.push_back(static_cast<float>(value));
    if (std::isfinite(value) && std::isfinite(next) && (h & 0x7FFF) != 0x7FFF) {
      const float mid = static_cast<float>((value + next) / 2);
      x.push_back(mid);
      x.push_back(std::nextafter(mid, 0.0f));
      x.push_back(std::nextafter(mid, mid * 2));
    }
  }
  for (float v : {65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e-45f, 1e-40f, 3e-8f, 2.9802322e-8f,
                  5.9604645e-8f, INFINITY, -INFINITY}) {
    x.push_back(v), x.push_back(-v);
  }
  for (uint32_t nan : {0x7FC00000u, 0x7F800001u, 0x7FFFFFFFu, 0x7F80FFFFu, 0x7FA00000u}) {
    x.push_back(FloatFromBits(nan)), x.push_back(FloatFromBits(nan | 0x80000000u));
  }
  uint64_t state = 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < 200000; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    x.push_back(FloatFromBits(static_cast<uint32_t>(state >> 32)));
  }
  return x;
}

uint16_t ExpectedBits(bool f16, float x) {
  return f16 ? F16FromDouble(static_cast<double>(x)) : BF16FromFloat(x);
}

}  // namespace

TEST_CASE("f32 to f16 and bf16: round to nearest even, overflow to infinity, NaN kept") {
  for (bool f16 : {true, false}) {
    const uint32_t dtype = f16 ? COVATTN_F16 : COVATTN_BF16;
    INFO(DtypeName(dtype));
    const std::vector<float> x = Probes(f16);
    ForEachTarget([&] {
      std::vector<uint16_t> got(x.size(), 0xDEAD);
      REQUIRE(covattn_convert(got.data(), dtype, x.data(), COVATTN_F32, x.size()) == COVATTN_OK);
      size_t wrong = 0, first = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        if (got[i] != ExpectedBits(f16, x[i]) && wrong++ == 0) first = i;
      }
      INFO("first wrong: f32 bits 0x" << std::hex << BitsOfFloat(x[first]) << " got 0x"
                                      << got[first] << " expected 0x"
                                      << ExpectedBits(f16, x[first]));
      CHECK(wrong == 0);
    });
  }
}

TEST_CASE("f16 and bf16 to f32 is exact for every bit pattern, at every length") {
  for (bool f16 : {true, false}) {
    const uint32_t dtype = f16 ? COVATTN_F16 : COVATTN_BF16;
    INFO(DtypeName(dtype));
    std::vector<uint16_t> bits(65536);
    for (uint32_t h = 0; h < 65536; ++h) bits[h] = uint16_t(h);
    ForEachTarget([&] {
      std::vector<float> got(bits.size());
      REQUIRE(covattn_convert(got.data(), COVATTN_F32, bits.data(), dtype, bits.size()) ==
              COVATTN_OK);
      size_t wrong = 0;
      for (uint32_t h = 0; h < 65536; ++h) {
        const double want = f16 ? DoubleFromF16(uint16_t(h)) : DoubleFromBF16(uint16_t(h));
        const bool same =
            std::isnan(want)
                ? std::isnan(got[h]) && std::signbit(got[h]) == std::signbit(want)
                : static_cast<double>(got[h]) == want && std::signbit(got[h]) == std::signbit(want);
        wrong += !same;
      }
      CHECK(wrong == 0);
      // Every length up to a few vectors, from an odd offset: whole vectors
      // and the tail agree, and nothing past n is written.
      for (size_t n = 0; n <= 67; ++n) {
        std::vector<float> out(n + 1, -3.0f);
        REQUIRE(covattn_convert(out.data(), COVATTN_F32, bits.data() + 15361, dtype, n) ==
                COVATTN_OK);
        for (size_t i = 0; i < n; ++i) CHECK(BitsOfFloat(out[i]) == BitsOfFloat(got[15361 + i]));
        CHECK(out[n] == -3.0f);
        std::vector<uint16_t> back(n + 1, 0xDEAD);
        REQUIRE(covattn_convert(back.data(), dtype, out.data(), COVATTN_F32, n) == COVATTN_OK);
        for (size_t i = 0; i < n; ++i) CHECK(back[i] == bits[15361 + i]);
        CHECK(back[n] == 0xDEAD);
      }
    });
  }
}

TEST_CASE("covattn_convert refuses bad arguments and writes nothing") {
  std::vector<float> f(16, 1.0f);
  std::vector<uint16_t> h(16, 0xDEAD);
  CHECK(covattn_convert(h.data(), COVATTN_F16, h.data() + 8, COVATTN_BF16, 4) ==
        COVATTN_ERR_UNSUPPORTED_DTYPE);
  CHECK(covattn_convert(h.data(), 7, f.data(), COVATTN_F32, 4) == COVATTN_ERR_UNSUPPORTED_DTYPE);
  CHECK(covattn_convert(nullptr, COVATTN_F16, f.data(), COVATTN_F32, 4) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_convert(h.data(), COVATTN_F16, nullptr, COVATTN_F32, 4) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_convert(nullptr, COVATTN_F16, nullptr, COVATTN_F32, 0) == COVATTN_OK);
  CHECK(covattn_convert(h.data(), COVATTN_F16, f.data(), COVATTN_F32, SIZE_MAX / 2) ==
        COVATTN_ERR_SIZE_OVERFLOW);
  const char* misaligned = reinterpret_cast<const char*>(f.data()) + 1;
  CHECK(covattn_convert(h.data(), COVATTN_F16, misaligned, COVATTN_F32, 4) ==
        COVATTN_ERR_MISALIGNED);
  // In place, or any overlap: the 16-bit output would overwrite f32 input
  // not yet read.
  CHECK(covattn_convert(f.data(), COVATTN_F16, f.data(), COVATTN_F32, 4) == COVATTN_ERR_ALIASING);
  CHECK(covattn_convert(f.data() + 3, COVATTN_F32, f.data(), COVATTN_F32, 4) ==
        COVATTN_ERR_ALIASING);
  for (uint16_t x : h) CHECK(x == 0xDEAD);
  for (float x : f) CHECK(x == 1.0f);
}
