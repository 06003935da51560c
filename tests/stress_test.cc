// Numerics under stress, on every target: values near the float limits,
// subnormal keys and values, all-equal keys, a single token, a million
// tokens. Results must be finite and right where the maths says so, and
// COVATTN_ERR_NONFINITE otherwise: never a success status over garbage.
#include <doctest/doctest.h>

#include "test_util.h"

using namespace covattn_test;

namespace {

constexpr float kMax = std::numeric_limits<float>::max();

std::vector<uint8_t> Scratch(size_t dim) {
  size_t bytes = 0;
  REQUIRE(covattn_attention_scratch_size(dim, &bytes) == COVATTN_OK);
  return std::vector<uint8_t>(bytes);
}

// A cache of one KV head whose K and V entries are all k_value and v_value.
TestCache ConstantCache(uint32_t dtype, size_t n_tokens, size_t dim, double k_value,
                        double v_value) {
  TestCache cache(dtype, Layout::kTokenMajor, n_tokens, 1, dim);
  for (size_t t = 0; t < n_tokens; ++t)
    for (size_t i = 0; i < dim; ++i) {
      cache.SetK(t, 0, i, k_value);
      cache.SetV(t, 0, i, v_value);
    }
  return cache;
}

covattn_status Decode(const TestCache& cache, const std::vector<float>& q, std::vector<float>* out,
                      const covattn_attention_options* options = nullptr) {
  std::vector<uint8_t> scratch = Scratch(cache.dim());
  out->assign(q.size(), 777.0f);
  return covattn_decode(&cache.view(), q.data(), q.size() / cache.dim(), options, out->data(),
                        scratch.data(), scratch.size());
}

// Prefill of the last n_q positions (one query head), with log Z.
covattn_status PrefillLast(const TestCache& cache, const std::vector<float>& q, size_t n_q,
                           std::vector<float>* out, std::vector<float>* log_z) {
  const size_t dim = cache.dim();
  std::vector<uint8_t> scratch = Scratch(dim);
  out->assign(n_q * dim, 777.0f);
  log_z->assign(n_q, 777.0f);
  const covattn_queries queries{q.data(), n_q, 1, dim, dim};
  const covattn_outputs outputs{out->data(), dim, dim, log_z->data()};
  return covattn_prefill(&cache.view(), &queries, cache.n_tokens() - n_q, nullptr, &outputs,
                         scratch.data(), scratch.size());
}

// Partial state of the last query position over the whole cache.
covattn_status PartialAll(const TestCache& cache, const std::vector<float>& q, float* m, float* l,
                          std::vector<float>* o) {
  const size_t dim = cache.dim();
  std::vector<uint8_t> scratch = Scratch(dim);
  o->assign(dim, 777.0f);
  const covattn_queries queries{q.data(), 1, 1, dim, dim};
  const covattn_partial state{m, l, o->data()};
  return covattn_prefill_partial(&cache.view(), &queries, cache.n_tokens() - 1, nullptr, 0,
                                 cache.n_tokens(), &state, scratch.data(), scratch.size());
}

}  // namespace

TEST_CASE("scores that overflow to +inf or -inf are reported, never returned as success") {
  // |q . k| = 16 * 1e30 * 1e30 / 4 overflows f32 whatever the sign. With
  // every score -inf the row used to look fully masked: zeros and
  // COVATTN_FULLY_MASKED, or a partial state with l = 0, as if the query saw
  // no token at all.
  const size_t dim = 16, n = 50;
  for (uint32_t dtype : {COVATTN_F32, COVATTN_BF16}) {
    for (double sign : {1.0, -1.0}) {
      INFO(DtypeName(dtype) << (sign > 0 ? " scores +inf" : " scores -inf"));
      const TestCache cache = ConstantCache(dtype, n, dim, 1e30, 1.0);
      const std::vector<float> q(dim, static_cast<float>(sign * 1e30));
      ForEachTarget([&] {
        std::vector<float> out, log_z, o;
        CHECK(Decode(cache, q, &out) == COVATTN_ERR_NONFINITE);
        CHECK(PrefillLast(cache, q, 1, &out, &log_z) == COVATTN_ERR_NONFINITE);
        float m = 0, l = 0;
        CHECK(PartialAll(cache, q, &m, &l, &o) == COVATTN_ERR_NONFINITE);
      });
    }
  }
}

TEST_CASE("one overflowing score among finite ones is reported too") {
  const size_t dim = 8, n = 200;
  Rng rng(41);
  TestCache cache(COVATTN_F32, Layout::kTokenMajor, n, 1, dim);
  cache.FillRandom(rng);
  for (size_t i = 0; i < dim; ++i) cache.SetK(77, 0, i, -1e30);
  const std::vector<float> q(dim, 1e30f);
  ForEachTarget([&] {
    std::vector<float> out;
    CHECK(Decode(cache, q, &out) == COVATTN_ERR_NONFINITE);
  });
}

TEST_CASE("huge but finite scores pick the winner exactly") {
  // Scores near +-1e37: finite, so the softmax is a clean argmax.
  const size_t dim = 4, n = 300;
  Rng rng(42);
  TestCache cache(COVATTN_F32, Layout::kTokenMajor, n, 1, dim);
  for (size_t t = 0; t < n; ++t)
    for (size_t i = 0; i < dim; ++i) {
      cache.SetK(t, 0, i, (t == 123 ? 1.0 : -1.0) * 1e18 * (1.0 + 0.001 * t));
      cache.SetV(t, 0, i, rng.Normal());
    }
  const std::vector<float> q(dim, 5e18f);
  ForEachTarget([&] {
    std::vector<float> out, log_z;
    REQUIRE(PrefillLast(cache, q, 1, &out, &log_z) == COVATTN_OK);
    for (size_t i = 0; i < dim; ++i) CHECK(out[i] == static_cast<float>(cache.V(123, 0, i)));
    const double score = 0.5 * dim * 5e18 * 1e18 * 1.123;
    CHECK(log_z[0] == doctest::Approx(score).epsilon(1e-5));
  });
}

TEST_CASE(
    "values near the float limit: finite averages stay finite, overflowing sums are reported") {
  const size_t dim = 8;
  ForEachTarget([&] {
    std::vector<float> out;
    // One token: the output is its value, exactly, even at FLT_MAX.
    const TestCache one = ConstantCache(COVATTN_F32, 1, dim, 1.0, kMax);
    REQUIRE(Decode(one, std::vector<float>(dim, 1.0f), &out) == COVATTN_OK);
    for (float x : out) CHECK(x == kMax);
    // 2^100 (about 1.3e30) over 10^4 equally weighted tokens: the sums stay
    // below FLT_MAX (and are exact, a power of two times an integer).
    const double big = std::ldexp(1.0, 100);
    const TestCache many = ConstantCache(COVATTN_F32, 10000, dim, 0.5, big);
    REQUIRE(Decode(many, std::vector<float>(dim, 1.0f), &out) == COVATTN_OK);
    for (float x : out) CHECK(x == doctest::Approx(big).epsilon(1e-6));
    // FLT_MAX / 2 over two tokens: the un-normalised sum overflows f32.
    const TestCache two = ConstantCache(COVATTN_F32, 2, dim, 0.0, kMax / 1.5);
    CHECK(Decode(two, std::vector<float>(dim, 1.0f), &out) == COVATTN_ERR_NONFINITE);
  });
}

TEST_CASE("subnormal keys, values and queries") {
  const size_t dim = 24, n = 100;
  // f32 subnormals: keys make every score ~0 (uniform weights), the output
  // is the mean of subnormal values, which must not be flushed to zero.
  const double tiny = 1e-40;
  Rng rng(43);
  TestCache cache(COVATTN_F32, Layout::kTokenMajor, n, 1, dim);
  std::vector<double> mean(dim, 0.0);
  for (size_t t = 0; t < n; ++t)
    for (size_t i = 0; i < dim; ++i) {
      cache.SetK(t, 0, i, tiny * rng.Normal());
      cache.SetV(t, 0, i, tiny * (1.0 + rng.Uniform(0.0, 1.0)));
      mean[i] += cache.V(t, 0, i) / n;
    }
  const std::vector<float> q(dim, 1e-39f);
  ForEachTarget([&] {
    std::vector<float> out;
    REQUIRE(Decode(cache, q, &out) == COVATTN_OK);
#if defined(__arm__)
    // 32-bit ARM's NEON unit always flushes f32 subnormals to zero (ARMv7
    // Advanced SIMD has no other mode): there the output is exactly zero.
    if (std::string(covattn_target_name()) == "NEON") {
      for (size_t i = 0; i < dim; ++i) CHECK(out[i] == 0.0f);
      return;
    }
#endif
    for (size_t i = 0; i < dim; ++i) {
      INFO("dim " << i);
      CHECK(out[i] > 0.0f);
      CHECK(std::fabs(out[i] - mean[i]) <= 4.0 * n * 1.4e-45 + 1e-4 * mean[i]);
    }
  });
  // f16 subnormals (below 6.1e-5) convert exactly; compare with the reference.
  TestCache half(COVATTN_F16, Layout::kHeadMajor, n, 1, dim);
  for (size_t t = 0; t < n; ++t)
    for (size_t i = 0; i < dim; ++i) {
      half.SetK(t, 0, i, 3e-5 * rng.Normal());
      half.SetV(t, 0, i, 5e-6 * rng.Normal());
    }
  std::vector<float> qh(dim);
  for (float& x : qh) x = static_cast<float>(1e4 * rng.Normal());
  const float scale = 1.0f / std::sqrt(float(dim));
  ForEachTarget([&] {
    std::vector<float> out;
    REQUIRE(Decode(half, qh, &out) == COVATTN_OK);
    CheckRow(out.data(), ReferenceAttention(half, qh.data(), scale, 0, n - 1, 0, 0), dim);
  });
}

TEST_CASE("all-equal keys give the plain mean of the values") {
  const size_t dim = 40, n = 513;
  for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_BF16}) {
    INFO(DtypeName(dtype));
    Rng rng(44);
    TestCache cache(dtype, Layout::kPadded, n, 2, dim);
    cache.FillRandom(rng);
    for (size_t t = 0; t < n; ++t)
      for (size_t h = 0; h < 2; ++h)
        for (size_t i = 0; i < dim; ++i) cache.SetK(t, h, i, 0.25 * (i % 5));
    std::vector<float> q(4 * dim);
    for (float& x : q) x = static_cast<float>(3.0 * rng.Normal());
    const float scale = 1.0f / std::sqrt(float(dim));
    const covattn_attention_options window{0.0f, 100, 1, nullptr};
    const covattn_attention_options* option_sets[] = {&window, nullptr};
    ForEachTarget([&] {
      for (const covattn_attention_options* options : option_sets) {
        std::vector<float> out;
        REQUIRE(Decode(cache, q, &out, options) == COVATTN_OK);
        for (size_t h = 0; h < 4; ++h) {
          const ReferenceRow ref = ReferenceAttention(cache, q.data() + h * dim, scale, h / 2,
                                                      n - 1, options ? 100 : 0, options ? 1 : 0);
          CheckRow(out.data() + h * dim, ref, dim);
        }
      }
    });
  }
}

TEST_CASE("a single token: the output is its value, log Z its score") {
  for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_BF16}) {
    for (size_t dim : {size_t{1}, size_t{7}, size_t{64}, size_t{512}}) {
      INFO(DtypeName(dtype) << " dim " << dim);
      Rng rng(dim);
      TestCache cache(dtype, Layout::kTokenMajor, 1, 1, dim);
      cache.FillRandom(rng, 3.0);
      std::vector<float> q(dim);
      for (float& x : q) x = static_cast<float>(rng.Normal());
      const float scale = 1.0f / std::sqrt(float(dim));
      const ReferenceRow ref = ReferenceAttention(cache, q.data(), scale, 0, 0, 0, 0);
      ForEachTarget([&] {
        std::vector<float> out, log_z;
        REQUIRE(PrefillLast(cache, q, 1, &out, &log_z) == COVATTN_OK);
        for (size_t i = 0; i < dim; ++i) CHECK(out[i] == static_cast<float>(cache.V(0, 0, i)));
        CHECK(std::fabs(log_z[0] - ref.log_z) <= ref.log_z_bound);
      });
    }
  }
}

TEST_CASE("a million tokens, tiny head_dim") {
  // Cheap with head_dim 2, yet l sums 10^6 weights and o 10^6 products in
  // f32; the reference bound allows the sqrt(n) growth of rounding errors.
  const size_t dim = 2, n = 1000000;
  for (uint32_t dtype : {COVATTN_F32, COVATTN_BF16}) {
    INFO(DtypeName(dtype));
    Rng rng(45);
    TestCache cache(dtype, Layout::kTokenMajor, n, 1, dim);
    cache.FillRandom(rng, 0.5, 0.3);
    const std::vector<float> q = {1.5f, -0.7f};
    const float scale = 1.0f / std::sqrt(float(dim));
    const ReferenceRow ref = ReferenceAttention(cache, q.data(), scale, 0, n - 1, 0, 0);
    ForEachTarget([&] {
      std::vector<float> out, log_z;
      REQUIRE(PrefillLast(cache, q, 1, &out, &log_z) == COVATTN_OK);
      CheckRow(out.data(), ref, dim);
      CHECK(std::fabs(log_z[0] - ref.log_z) <= ref.log_z_bound);
    });
  }
}

TEST_CASE("merging states whose sums overflow is refused and leaves `into` as it was") {
  const size_t dim = 4, rows = 3;
  std::vector<float> m = {0, 1, 2}, l = {1, 1e38f, 2}, o(rows * dim, 1e38f);
  std::vector<float> m2 = {0, 1, 2}, l2 = {1, 3e38f, 2}, o2(rows * dim, 2e38f);
  const std::vector<float> m0 = m, l0 = l, o0 = o;
  const covattn_partial into{m.data(), l.data(), o.data()};
  const covattn_partial other{m2.data(), l2.data(), o2.data()};
  CHECK(covattn_partial_merge(rows, dim, &into, &other) == COVATTN_ERR_NONFINITE);
  CHECK(m == m0);
  CHECK(l == l0);
  CHECK(o == o0);
}

TEST_CASE("finalizing a non-finite state is refused before writing") {
  // An infinite l used to finalize to zeros and COVATTN_OK.
  const size_t dim = 4;
  const float inf = std::numeric_limits<float>::infinity();
  for (int which = 0; which < 3; ++which) {
    INFO("non-finite " << (which == 0 ? "m" : which == 1 ? "l" : "o"));
    float m = 1.0f, l = 2.0f;
    std::vector<float> o(dim, 1.0f), out(dim, 5.0f);
    if (which == 0) m = std::nanf("");
    if (which == 1) l = inf;
    if (which == 2) o[3] = -inf;
    const covattn_partial state{&m, &l, o.data()};
    CHECK(covattn_partial_finalize(1, dim, &state, out.data(), nullptr) == COVATTN_ERR_NONFINITE);
    for (float x : out) CHECK(x == 5.0f);
  }
}
