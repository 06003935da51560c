// The bounded cache's summaries with post-RoPE keys (MATH.md section 6):
// log I_0 and the ring's shrink factor against an independent double
// evaluation for small and large arguments, the covariance summary's
// ring-corrected normaliser, readout and ESS against a double reference for
// both RoPE layouts, never above the Gaussian, finite for huge queries, and
// COVATTN_ROPE_NONE bit for bit the covariance readout it always was.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "cache_test_util.h"
#include "ring.h"

using namespace covattn_test;

namespace {

// log I_0(z) and 2 I_1(z) / (z I_0(z)) without the library's method: the
// power series in long double for z < 1; the trapezoid rule (exponentially
// accurate for periodic integrands) on I_nu(z) = (1/pi) int_0^pi e^(z cos t)
// cos(nu t) dt, scaled by e^(-z), up to z = 1e6; three terms of the
// asymptotic series beyond.
struct RingRef {
  double log_i0, shrink;
};
RingRef RingReference(double z) {
  if (z < 1.0) {
    long double x = 0.25L * z * z, t = 1.0L, i0 = 1.0L, i1 = 1.0L;
    for (int k = 1; k < 60; ++k) {
      t *= x / (static_cast<long double>(k) * k);
      i0 += t;
      i1 += t / (k + 1);
    }
    return {static_cast<double>(std::log(i0)), static_cast<double>(i1 / i0)};
  }
  if (z > 1e6) {
    const double s0 = 1.0 + 1.0 / (8 * z) + 9.0 / (128 * z * z);
    const double s1 = 1.0 - 3.0 / (8 * z) - 15.0 / (128 * z * z);
    return {z - 0.5 * std::log(2 * M_PI * z) + std::log(s0), 2.0 / z * s1 / s0};
  }
  const size_t n = 2000 + static_cast<size_t>(200 * std::sqrt(z));
  const double h = M_PI / n;
  double i0 = 0.0, i1 = 0.0;
  for (size_t j = 0; j <= n; ++j) {
    const double t = j * h, w = (j == 0 || j == n) ? 0.5 : 1.0;
    const double e = w * std::exp(z * (std::cos(t) - 1.0));
    i0 += e;
    i1 += e * std::cos(t);
  }
  return {z + std::log(i0 * h / M_PI), 2.0 / z * i1 / i0};
}

struct Planes {
  uint32_t rope;
  size_t d;
  size_t First(size_t i) const { return rope == COVATTN_ROPE_INTERLEAVED ? 2 * i : i; }
  size_t Second(size_t i) const { return rope == COVATTN_ROPE_INTERLEAVED ? 2 * i + 1 : i + d / 2; }
};

// Keys as RoPE leaves them: a fixed vector plus noise, rotated in each plane
// by position times the plane's frequency; values linear in the keys plus
// noise, so that C_vk matters.
TestCache RopeData(uint32_t rope, size_t n, size_t heads, size_t d, Rng& rng) {
  TestCache data(COVATTN_F32, Layout::kTokenMajor, n, heads, d);
  const Planes planes{rope, d};
  std::vector<double> base(heads * d), mix(heads * d * d);
  for (double& x : base) x = 1.5 * rng.Normal();
  for (double& x : mix) x = rng.Normal() / std::sqrt(double(d));
  for (size_t t = 0; t < n; ++t) {
    for (size_t h = 0; h < heads; ++h) {
      std::vector<double> k(d);
      for (size_t i = 0; i < d; ++i) k[i] = base[h * d + i] + 0.3 * rng.Normal();
      for (size_t i = 0; i < d / 2; ++i) {
        const double angle = t * std::pow(100.0, -2.0 * i / d);
        const size_t p = planes.First(i), r = planes.Second(i);
        const double kp = k[p], kr = k[r];
        k[p] = std::cos(angle) * kp - std::sin(angle) * kr;
        k[r] = std::sin(angle) * kp + std::cos(angle) * kr;
      }
      for (size_t i = 0; i < d; ++i) {
        data.SetK(t, h, i, k[i]);
        double v = 0.2 * rng.Normal();
        for (size_t j = 0; j < d; ++j) v += mix[(h * d + i) * d + j] * k[j];
        data.SetV(t, h, i, v);
      }
    }
  }
  return data;
}

// The ring-corrected covariance summary of all tokens of head h (MATH.md
// section 6), in double from the tokens: log Z, the readout and the ESS.
struct SummaryRef {
  double log_z, ess;
  std::vector<double> out;
};
SummaryRef CovarianceRef(const TestCache& data, size_t h, uint32_t rope, const float* q,
                         double scale) {
  const size_t n = data.n_tokens(), d = data.view().head_dim;
  std::vector<double> mk(d, 0.0), mv(d, 0.0), ckk(d * d, 0.0), cvk(d * d, 0.0), a(d);
  for (size_t t = 0; t < n; ++t) {
    for (size_t i = 0; i < d; ++i) mk[i] += data.K(t, h, i) / n, mv[i] += data.V(t, h, i) / n;
  }
  for (size_t t = 0; t < n; ++t) {
    for (size_t i = 0; i < d; ++i) {
      for (size_t j = 0; j < d; ++j) {
        const double kj = data.K(t, h, j) - mk[j];
        ckk[i * d + j] += (data.K(t, h, i) - mk[i]) * kj / n;
        cvk[i * d + j] += (data.V(t, h, i) - mv[i]) * kj / n;
      }
    }
  }
  for (size_t i = 0; i < d; ++i) a[i] = double{static_cast<float>(scale * q[i])};
  auto quad = [&](double f) {
    double s = 0.0;
    for (size_t i = 0; i < d; ++i)
      for (size_t j = 0; j < d; ++j) s += f * a[i] * ckk[i * d + j] * f * a[j];
    return 0.5 * s;
  };
  std::vector<double> shrunk = a;
  auto psi = [&](double f, bool keep_shrink) {
    const double gauss = quad(f);
    if (rope == COVATTN_ROPE_NONE) return gauss;
    const Planes planes{rope, d};
    double corrected = gauss;
    for (size_t i = 0; i < d / 2; ++i) {
      const size_t p = planes.First(i), r = planes.Second(i);
      const double rho2 = ckk[p * d + p] + ckk[r * d + r];
      const double z = f * std::sqrt((a[p] * a[p] + a[r] * a[r]) * rho2);
      const RingRef ring = RingReference(z);
      corrected += ring.log_i0 - 0.25 * z * z;
      if (keep_shrink) shrunk[p] = a[p] * ring.shrink, shrunk[r] = a[r] * ring.shrink;
    }
    return std::min(gauss, std::max(0.0, corrected));
  };
  SummaryRef ref;
  const double psi_a = psi(1.0, true), psi_2a = psi(2.0, false);
  double a_mu = 0.0;
  for (size_t i = 0; i < d; ++i) a_mu += a[i] * mk[i];
  ref.log_z = std::log(double(n)) + a_mu + psi_a;
  ref.ess = n * std::exp(std::min(0.0, 2 * psi_a - psi_2a));
  ref.out = mv;
  for (size_t i = 0; i < d; ++i)
    for (size_t j = 0; j < d; ++j) ref.out[i] += cvk[i * d + j] * shrunk[j];
  return ref;
}

covattn_cache_config SummaryOnly(size_t heads, size_t d, uint32_t summary, uint32_t rope) {
  covattn_cache_config c = Config(heads, d, 0, 0, 0);
  c.summary = summary;
  c.rope = rope;
  return c;
}

}  // namespace

TEST_CASE("log I_0 and the ring's shrink factor: accurate for small and large z, finite") {
  using covattn::detail::RingAt;
  std::vector<double> zs = {0.0,  1e-300, 1e-12, 1e-6, 1e-3, 1.0 / 64, 1.0 / 32, 0.05,
                            0.5,  0.999,  1.0,   2.5,  7.0,  19.99,    20.0,     20.01,
                            33.3, 100.0,  700.0, 1e4,  1e6,  3e7,      1e12,     1e300};
  for (double z = 0.0; z < 30.0; z += 0.0137) zs.push_back(z);
  for (double z : zs) {
    INFO("z = " << z);
    const covattn::detail::RingTerms got = RingAt(z);
    const RingRef ref = RingReference(z);
    REQUIRE(std::isfinite(got.log_i0));
    REQUIRE(std::isfinite(got.shrink));
    CHECK(std::fabs(got.log_i0 - ref.log_i0) <= 1e-9 * std::max(1.0, ref.log_i0));
    CHECK(std::fabs(got.shrink - ref.shrink) <= 1e-8 * ref.shrink + 1e-300);
    // Never above the Gaussian; the shrink in (0, 1].
    CHECK(got.log_i0 <= 0.25 * z * z * (1.0 + 1e-12));
    CHECK((got.shrink > 0.0 && got.shrink <= 1.0));
    CHECK(covattn::detail::LogBesselI0(z) == got.log_i0);
    CHECK(covattn::detail::RingShrink(z) == got.shrink);
  }
  // Non-numbers and negative zero are z = 0.
  CHECK(RingAt(-0.0).log_i0 == 0.0);
  CHECK(RingAt(std::nan("")).shrink == 1.0);
}

TEST_CASE("the covariance summary with RoPE: the ring-corrected log Z, readout and ESS") {
  const size_t heads = 2, d = 8, group = 2, n_q = heads * group, n = 700;
  for (uint32_t rope : {COVATTN_ROPE_INTERLEAVED, COVATTN_ROPE_HALF_SPLIT}) {
    INFO("rope " << rope);
    Rng rng(61 + rope);
    const TestCache data = RopeData(rope, n, heads, d, rng);
    for (double sharpness : {0.2, 1.0, 4.0}) {
      INFO("query scale " << sharpness);
      const std::vector<float> q = RandomQueries(rng, n_q * d, sharpness);
      const double scale = 1.0 / std::sqrt(double(d));
      ForEachTarget([&] {
        CachePtr ring = MakeCache(SummaryOnly(heads, d, COVATTN_SUMMARY_COVARIANCE, rope));
        CachePtr gauss =
            MakeCache(SummaryOnly(heads, d, COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_NONE));
        AppendAll(ring.get(), data, 7);
        AppendAll(gauss.get(), data, 7);
        const Decoded r = Decode(ring.get(), q, n_q, d), g = Decode(gauss.get(), q, n_q, d);
        REQUIRE(r.status == COVATTN_OK);
        REQUIRE(g.status == COVATTN_OK);
        for (size_t row = 0; row < n_q; ++row) {
          const SummaryRef ref = CovarianceRef(data, row / group, rope, q.data() + row * d, scale);
          CHECK(r.log_z[row] == doctest::Approx(ref.log_z).epsilon(1e-5).scale(1.0));
          CHECK(r.ess[row] == doctest::Approx(ref.ess).epsilon(2e-3));
          double size = 1.0;
          for (double x : ref.out) size = std::max(size, std::fabs(x));
          for (size_t i = 0; i < d; ++i) {
            CHECK(std::fabs(r.out[row * d + i] - ref.out[i]) <= 1e-4 * size);
          }
          // Never more mass than the Gaussian claims.
          CHECK(r.log_z[row] <= g.log_z[row] + 1e-5f * (1.0f + std::fabs(g.log_z[row])));
        }
      });
    }
  }
}

TEST_CASE("huge queries: the ring-corrected summary stays finite") {
  const size_t heads = 1, d = 8, n = 300;
  Rng rng(71);
  const TestCache data = RopeData(COVATTN_ROPE_INTERLEAVED, n, heads, d, rng);
  for (double magnitude : {1e3, 1e8, 1e12}) {
    INFO("query magnitude " << magnitude);
    const std::vector<float> q = RandomQueries(rng, d, magnitude);
    ForEachTarget([&] {
      CachePtr cache =
          MakeCache(SummaryOnly(heads, d, COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_INTERLEAVED));
      AppendAll(cache.get(), data, 8);
      const Decoded r = Decode(cache.get(), q, 1, d);
      REQUIRE(r.status == COVATTN_OK);
      CHECK(std::isfinite(r.log_z[0]));
      CHECK(std::isfinite(r.ess[0]));
      for (float x : r.out) CHECK(std::isfinite(x));
    });
  }
}

TEST_CASE("COVATTN_ROPE_NONE is the covariance readout, bit for bit") {
  const size_t heads = 2, d = 24, group = 3, n_q = heads * group, n = 640;
  Rng rng(81);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, n, heads, d);
  data.FillRandom(rng, 1.0, 0.5);
  const std::vector<float> q = RandomQueries(rng, n_q * d, 0.7);
  ForEachTarget([&] {
    // The cache folds 64-token batches head by head; the state gets the same
    // 64-token blocks, so both hold the same bits.
    CachePtr cache = MakeCache(SummaryOnly(heads, d, COVATTN_SUMMARY_COVARIANCE, 0));
    Append(cache.get(), data, 0, n);
    StatePtr state = MakeState(heads, d);
    for (size_t t = 0; t < n; t += 64) Update(state.get(), data.view(), t, 64);
    std::vector<float> out(n_q * d), log_z(n_q), ess(n_q);
    REQUIRE(covattn_cov_readout(state.get(), q.data(), n_q, 0.0f, out.data(), log_z.data(),
                                ess.data()) == COVATTN_OK);
    const Decoded r = Decode(cache.get(), q, n_q, d);
    REQUIRE(r.status == COVATTN_OK);
    CHECK(r.out == out);
    CHECK(r.log_z == log_z);
    CHECK(r.ess == ess);
  });
}

namespace {

// The compact summary of tokens [begin, end) of head h (MATH.md section 6),
// in double from the tokens with forgetting weights lambda^(end - 1 - t):
// log Z, the readout mu_v and the ESS.
SummaryRef CompactRef(const TestCache& data, size_t h, size_t begin, size_t end, uint32_t rope,
                      double lambda, const float* q, double scale) {
  const size_t d = data.view().head_dim;
  double w = 0.0;
  std::vector<double> mk(d, 0.0), mv(d, 0.0), var(d, 0.0), a(d);
  for (size_t t = begin; t < end; ++t) {
    const double wt = std::pow(lambda, double(end - 1 - t));
    w += wt;
    for (size_t i = 0; i < d; ++i) mk[i] += wt * data.K(t, h, i), mv[i] += wt * data.V(t, h, i);
  }
  for (size_t i = 0; i < d; ++i) mk[i] /= w, mv[i] /= w;
  for (size_t t = begin; t < end; ++t) {
    const double wt = std::pow(lambda, double(end - 1 - t));
    for (size_t i = 0; i < d; ++i)
      var[i] += wt * (data.K(t, h, i) - mk[i]) * (data.K(t, h, i) - mk[i]) / w;
  }
  for (size_t i = 0; i < d; ++i) a[i] = double{static_cast<float>(scale * q[i])};
  auto psi = [&](double f) {
    double s = 0.0;
    if (rope == COVATTN_ROPE_NONE) {
      for (size_t j = 0; j < d; ++j) s += 0.5 * f * a[j] * f * a[j] * var[j];
      return s;
    }
    const Planes planes{rope, d};
    for (size_t i = 0; i < d / 2; ++i) {
      const size_t p = planes.First(i), r = planes.Second(i);
      const double z = f * std::sqrt((a[p] * a[p] + a[r] * a[r]) * (var[p] + var[r]));
      s += RingReference(z).log_i0;
    }
    return s;
  };
  SummaryRef ref;
  double a_mu = 0.0;
  for (size_t i = 0; i < d; ++i) a_mu += a[i] * mk[i];
  const double psi_a = psi(1.0);
  ref.log_z = std::log(w) + a_mu + psi_a;
  ref.ess = w * std::exp(std::min(0.0, 2 * psi_a - psi(2.0)));
  ref.out = mv;
  return ref;
}

}  // namespace

TEST_CASE("the compact summary: log Z, readout and ESS against a double reference") {
  const size_t heads = 2, d = 8, group = 2, n_q = heads * group, n = 500;
  for (uint32_t rope : {COVATTN_ROPE_NONE, COVATTN_ROPE_INTERLEAVED, COVATTN_ROPE_HALF_SPLIT}) {
    for (float forgetting : {1.0f, 0.995f}) {
      INFO("rope " << rope << " forgetting " << forgetting);
      Rng rng(91 + rope);
      const TestCache data =
          RopeData(rope == 0 ? uint32_t{COVATTN_ROPE_INTERLEAVED} : rope, n, heads, d, rng);
      for (double sharpness : {0.3, 1.5, 6.0}) {
        INFO("query scale " << sharpness);
        const std::vector<float> q = RandomQueries(rng, n_q * d, sharpness);
        ForEachTarget([&] {
          covattn_cache_config config = SummaryOnly(heads, d, COVATTN_SUMMARY_COMPACT, rope);
          config.forgetting = forgetting;
          CachePtr cache = MakeCache(config);
          AppendAll(cache.get(), data, 9);
          const Decoded r = Decode(cache.get(), q, n_q, d);
          REQUIRE(r.status == COVATTN_OK);
          for (size_t row = 0; row < n_q; ++row) {
            const SummaryRef ref = CompactRef(data, row / group, 0, n, rope, forgetting,
                                              q.data() + row * d, 1.0 / std::sqrt(double(d)));
            CHECK(r.log_z[row] == doctest::Approx(ref.log_z).epsilon(1e-6).scale(1.0));
            CHECK(r.ess[row] == doctest::Approx(ref.ess).epsilon(1e-4));
            CHECK(r.share[row] == 1.0f);
            for (size_t i = 0; i < d; ++i) {
              CHECK(r.out[row * d + i] == doctest::Approx(ref.out[i]).epsilon(1e-6).scale(1.0));
            }
          }
        });
      }
    }
  }
}

TEST_CASE("sinks + window + compact summary: the exact part and the summary merged") {
  const size_t heads = 2, d = 8, group = 2, n_q = heads * group, n = 400, sinks = 2, window = 16;
  Rng rng(101);
  const TestCache data = RopeData(COVATTN_ROPE_HALF_SPLIT, n, heads, d, rng);
  const std::vector<float> q = RandomQueries(rng, n_q * d, 2.0);
  const double scale = 1.0 / std::sqrt(double(d));
  ForEachTarget([&] {
    covattn_cache_config config = Config(heads, d, sinks, window, 0);
    config.summary = COVATTN_SUMMARY_COMPACT;
    config.rope = COVATTN_ROPE_HALF_SPLIT;
    CachePtr cache = MakeCache(config);
    AppendAll(cache.get(), data, 10);
    const Decoded r = Decode(cache.get(), q, n_q, d);
    REQUIRE(r.status == COVATTN_OK);
    for (size_t row = 0; row < n_q; ++row) {
      const size_t h = row / group;
      const SummaryRef s = CompactRef(data, h, sinks, n - window, COVATTN_ROPE_HALF_SPLIT, 1.0,
                                      q.data() + row * d, scale);
      // Exact part over sinks and window, in double, then the merge of MATH.md section 4.
      std::vector<double> o(d, 0.0);
      double l = 0.0, m = s.log_z;
      std::vector<std::pair<double, size_t>> scores;
      for (size_t t = 0; t < n; ++t) {
        if (t >= sinks && t < n - window) continue;
        double x = 0.0;
        for (size_t i = 0; i < d; ++i) x += scale * q[row * d + i] * data.K(t, h, i);
        scores.push_back({x, t});
        m = std::max(m, x);
      }
      for (const auto& [x, t] : scores) {
        const double p = std::exp(x - m);
        l += p;
        for (size_t i = 0; i < d; ++i) o[i] += p * data.V(t, h, i);
      }
      const double ps = std::exp(s.log_z - m);
      for (size_t i = 0; i < d; ++i) {
        const double ref = (o[i] + ps * s.out[i]) / (l + ps);
        CHECK(r.out[row * d + i] == doctest::Approx(ref).epsilon(1e-5).scale(1.0));
      }
      CHECK(r.share[row] == doctest::Approx(ps / (l + ps)).epsilon(1e-5));
      CHECK(r.log_z[row] == doctest::Approx(m + std::log(l + ps)).epsilon(1e-6).scale(1.0));
    }
  });
}
