// Per-target tests of internal kernels that the C API reaches only through
// whole computations: LoadAsF32 over every 16-bit pattern, the Mahalanobis
// tile of the bounded cache against a double reference, the 4-way transposing
// reduction of the attention scores, and the target names of the dispatch.
// Built like a kernel file (hwy/foreach_target.h, the library's targets) and
// dispatched through covattn's own choice, so ForEachTarget selects the
// target these run on.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "attention_kernels-inl.h"
#include "cache_kernels-inl.h"
#include "load-inl.h"

HWY_BEFORE_NAMESPACE();
namespace covattn_test {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace kernels = covattn::HWY_NAMESPACE;

size_t LanesF32() { return hn::Lanes(hn::ScalableTag<float>()); }

// out[i] = LoadAsF32 of the element with bits[i], n a multiple of the lanes.
template <typename T>
void LoadAsF32Of(const uint16_t* bits, size_t n, float* out) {
  const hn::ScalableTag<float> d;
  const T* p = reinterpret_cast<const T*>(bits);
  for (size_t i = 0; i < n; i += hn::Lanes(d)) hn::StoreU(kernels::LoadAsF32(d, p + i), d, out + i);
}
void LoadF16AsF32(const uint16_t* bits, size_t n, float* out) {
  LoadAsF32Of<hwy::float16_t>(bits, n, out);
}
void LoadBF16AsF32(const uint16_t* bits, size_t n, float* out) {
  LoadAsF32Of<hwy::bfloat16_t>(bits, n, out);
}

// out[p] = the sum of the lanes of vector p of v ([4][LanesF32()]).
void SumOfLanes4Of(const float* v, float* out) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  kernels::SumOfLanes4(d, hn::LoadU(d, v), hn::LoadU(d, v + N), hn::LoadU(d, v + 2 * N),
                       hn::LoadU(d, v + 3 * N), out);
}

// MahalanobisTile for 1..4 rows of x (ldx apart).
void MahalanobisTileOf(size_t rows, const uint16_t* wt_bits, const float* x, size_t ldx, size_t dim,
                       float* dist) {
  const hn::ScalableTag<float> d;
  const auto* wt = reinterpret_cast<const hwy::bfloat16_t*>(wt_bits);
  switch (rows) {
    case 1:
      return kernels::MahalanobisTile<1>(d, wt, x, ldx, dim, dist);
    case 2:
      return kernels::MahalanobisTile<2>(d, wt, x, ldx, dim, dist);
    case 3:
      return kernels::MahalanobisTile<3>(d, wt, x, ldx, dim, dist);
    default:
      return kernels::MahalanobisTile<4>(d, wt, x, ldx, dim, dist);
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn_test
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <doctest/doctest.h>

#include <cctype>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "dispatch.h"
#include "half.h"
#include "test_util.h"

namespace covattn_test {
HWY_EXPORT(LanesF32);
HWY_EXPORT(LoadF16AsF32);
HWY_EXPORT(LoadBF16AsF32);
HWY_EXPORT(SumOfLanes4Of);
HWY_EXPORT(MahalanobisTileOf);

namespace {

// The same value: equal bits, or both NaN with the same sign and payload
// (hardware conversions set the quiet bit of a signalling NaN).
bool SameValue(float got, float expected) {
  const uint32_t g = covattn::BitsFromF32(got), e = covattn::BitsFromF32(expected);
  if (!std::isnan(expected)) return g == e;
  constexpr uint32_t kQuiet = 0x00400000u;
  return std::isnan(got) && (g | kQuiet) == (e | kQuiet);
}

std::string Hex(uint32_t x) {
  char text[16];
  std::snprintf(text, sizeof(text), "0x%x", static_cast<unsigned>(x));
  return text;
}

// Converts every 16-bit pattern with `load` and checks each against `scalar`.
template <class Load, class Scalar>
void CheckEveryPattern(Load load, Scalar scalar) {
  std::vector<uint16_t> bits(65536);
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = static_cast<uint16_t>(i);
  std::vector<float> got(bits.size());
  load(bits.data(), bits.size(), got.data());
  size_t wrong = 0;
  uint16_t first = 0;
  for (size_t i = 0; i < bits.size(); ++i) {
    if (!SameValue(got[i], scalar(bits[i])) && wrong++ == 0) first = bits[i];
  }
  INFO(wrong << " patterns differ, the first " << Hex(first) << ": got "
             << Hex(covattn::BitsFromF32(got[first])) << ", expected "
             << Hex(covattn::BitsFromF32(scalar(bits[first]))));
  CHECK(wrong == 0);
}

}  // namespace

TEST_CASE("LoadAsF32 converts every f16 and bf16 bit pattern like the scalar conversion") {
  // Includes both zeros, subnormals, infinities, signalling and quiet NaN.
  ForEachTarget([] {
    SUBCASE("f16") { CheckEveryPattern(COVATTN_DISPATCH(LoadF16AsF32), covattn::F32FromF16Bits); }
    SUBCASE("bf16") {
      CheckEveryPattern(COVATTN_DISPATCH(LoadBF16AsF32), covattn::F32FromBF16Bits);
    }
  });
}

TEST_CASE("SumOfLanes4 gives the sum of each of four vectors") {
  ForEachTarget([] {
    const size_t N = COVATTN_DISPATCH(LanesF32)();
    std::vector<float> v(4 * N);
    float got[4];
    // Distinct integers: every sum is exact, so a lane summed into the wrong
    // result or left out shows.
    for (size_t p = 0; p < 4; ++p) {
      for (size_t i = 0; i < N; ++i) v[p * N + i] = static_cast<float>((p + 1) * 1000 + 7 * i);
    }
    COVATTN_DISPATCH(SumOfLanes4Of)(v.data(), got);
    for (size_t p = 0; p < 4; ++p) {
      double sum = 0.0;
      for (size_t i = 0; i < N; ++i) sum += v[p * N + i];
      CHECK(got[p] == sum);
    }
    // Random values: within the rounding of N - 1 additions.
    Rng rng(N);
    for (float& x : v) x = static_cast<float>(rng.Normal());
    COVATTN_DISPATCH(SumOfLanes4Of)(v.data(), got);
    for (size_t p = 0; p < 4; ++p) {
      double sum = 0.0, abs_sum = 0.0;
      for (size_t i = 0; i < N; ++i) sum += v[p * N + i], abs_sum += std::fabs(v[p * N + i]);
      CHECK(std::fabs(got[p] - sum) <= N * kU * abs_sum);
    }
  });
}

TEST_CASE("MahalanobisTile matches a double reference for 1 to 4 rows and any dim") {
  ForEachTarget([] {
    for (size_t dim : {1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 33, 47, 64, 65, 100, 129}) {
      // W^T: bf16, upper triangular (zero below the diagonal, as the cache
      // stores it); rows of x ldx = dim + 3 apart.
      Rng rng(dim);
      std::vector<uint16_t> wt(dim * dim, 0);
      for (size_t j = 0; j < dim; ++j) {
        for (size_t i = j; i < dim; ++i) {
          const double w = (i == j ? 1.0 + std::fabs(rng.Normal()) : rng.Normal()) / std::sqrt(dim);
          wt[j * dim + i] = BF16FromFloat(static_cast<float>(w));
        }
      }
      const size_t ldx = dim + 3;
      std::vector<float> x(4 * ldx);
      for (float& e : x) e = static_cast<float>(rng.Normal());
      for (size_t rows = 1; rows <= 4; ++rows) {
        float dist[4];
        COVATTN_DISPATCH(MahalanobisTileOf)(rows, wt.data(), x.data(), ldx, dim, dist);
        for (size_t r = 0; r < rows; ++r) {
          // y = W x_r, then ||y||^2; the bound follows the f32 dot products
          // (Higham, Thm 3.5), the squares and their sum.
          double ref = 0.0, bound = 0.0;
          for (size_t i = 0; i < dim; ++i) {
            double y = 0.0, abs_y = 0.0;
            for (size_t j = 0; j <= i; ++j) {
              const double term =
                  double{x[r * ldx + j]} * covattn::F32FromBF16Bits(wt[j * dim + i]);
              y += term;
              abs_y += std::fabs(term);
            }
            const double e = (dim + 2) * kU * abs_y;
            ref += y * y;
            bound += 2 * std::fabs(y) * e + e * e;
          }
          bound += (dim + 2) * kU * ref;
          INFO("dim " << dim << ", rows " << rows << ", row " << r << ": got " << dist[r]
                      << ", reference " << ref << ", bound " << bound);
          CHECK(std::fabs(dist[r] - ref) <= bound);
        }
      }
    }
  });
}

TEST_CASE("every compiled target has a name and can be restricted to where supported") {
  // Built with the library's Highway definitions: the same targets.
  REQUIRE(covattn::detail::CompiledTargets() == HWY_TARGETS);
  std::set<std::string> names;
  for (int64_t t = HWY_TARGETS; t != 0; t &= t - 1) {
    const int64_t bit = t & -t;
    std::string name = covattn::detail::TargetName(bit);
    INFO("target bit " << bit << " named " << name);
    CHECK(name != "unknown");
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    CHECK(names.insert(name).second);
    // The static target counts as supported (src/dispatch.cc: Highway 1.0.3
    // does not report NEON on 32-bit ARM, where it is the baseline).
    const bool supported = ((hwy::SupportedTargets() | HWY_STATIC_TARGET) & bit) != 0;
    CHECK(covattn_restrict_targets(name.c_str()) ==
          (supported ? COVATTN_OK : COVATTN_ERR_TARGET_UNAVAILABLE));
    if (supported) CHECK(covattn::detail::TargetName(bit) == std::string(covattn_target_name()));
  }
  REQUIRE(covattn_restrict_targets(nullptr) == COVATTN_OK);
}

}  // namespace covattn_test
#endif  // HWY_ONCE
