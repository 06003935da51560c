// Exact attention (decode, prefill, partial states) against the double
// reference, on every target.
#include <doctest/doctest.h>

#include "test_util.h"

using namespace covattn_test;

namespace {

struct Shape {
  size_t dim, n_tokens, kv_heads, group;
};

// Decode through the C API and check every head against the reference.
void CheckDecode(const TestCache& cache, const std::vector<float>& q, size_t n_q_heads,
                 const covattn_attention_options* options) {
  const size_t dim = cache.dim();
  std::vector<uint8_t> scratch = AttentionScratch(dim);
  std::vector<float> out(n_q_heads * dim, -7.0f);
  const float scale =
      options && options->scale != 0.0f ? options->scale : 1.0f / std::sqrt(float(dim));
  const size_t window = options ? options->window : 0, sinks = options ? options->n_sinks : 0;
  REQUIRE(covattn_decode(&cache.view(), q.data(), n_q_heads, options, out.data(), scratch.data(),
                         scratch.size()) == COVATTN_OK);
  const size_t group = n_q_heads / cache.n_heads();
  for (size_t h = 0; h < n_q_heads; ++h) {
    INFO("query head " << h);
    const ReferenceRow ref = ReferenceAttention(cache, q.data() + h * dim, scale, h / group,
                                                cache.n_tokens() - 1, window, sinks);
    CheckRow(out.data() + h * dim, ref, dim);
  }
}

}  // namespace

TEST_CASE("decode matches the double reference over head dims, lengths, GQA and dtypes") {
  // Every vector choice of the kernels (a full vector, 8 or 4 lanes, a scalar
  // tail after whole vectors, all tail): 4, 8, 12, 24 and 40 run narrower
  // vectors than AVX-512's.
  const size_t dims[] = {1, 3, 4, 8, 12, 17, 24, 40, 64, 80, 128, 256, 512};
  const size_t lengths[] = {1, 5, 64, 65, 200};
  const size_t groups[] = {1, 2, 4, 8};
  const uint32_t dtypes[] = {COVATTN_F32, COVATTN_F16, COVATTN_BF16, COVATTN_INT8};
  uint64_t seed = 1;
  for (size_t dim : dims) {
    for (uint32_t dtype : dtypes) {
      for (size_t n : lengths) {
        const size_t group = groups[(seed++) % 4];
        const size_t kv_heads = dim >= 256 ? 1 : 2;
        INFO("dim " << dim << " dtype " << DtypeName(dtype) << " n_ctx " << n << " group "
                    << group);
        Rng rng(seed);
        TestCache cache(dtype, Layout::kTokenMajor, n, kv_heads, dim);
        cache.FillRandom(rng);
        const std::vector<float> q = NormalFloats(rng, kv_heads * group * dim, 1.5);
        ForEachTarget([&] { CheckDecode(cache, q, kv_heads * group, nullptr); });
      }
    }
  }
}

TEST_CASE("decode over long caches (tens of thousands of tokens)") {
  const Shape shapes[] = {{64, 32768, 2, 4}, {128, 20000, 1, 8}, {80, 12345, 2, 1}};
  uint64_t seed = 100;
  for (const Shape& s : shapes) {
    INFO("dim " << s.dim << " n_ctx " << s.n_tokens << " group " << s.group);
    Rng rng(seed++);
    TestCache cache(COVATTN_BF16, Layout::kHeadMajor, s.n_tokens, s.kv_heads, s.dim);
    cache.FillRandom(rng);
    const std::vector<float> q = NormalFloats(rng, s.kv_heads * s.group * s.dim, 2.0);
    ForEachTarget([&] { CheckDecode(cache, q, s.kv_heads * s.group, nullptr); });
  }
}

TEST_CASE("decode with many heads: passes that span heads, tiles that split a group") {
  // The kernel walks the cache once per pass of up to 32 query rows: these
  // shapes give passes of several KV heads, several tiles of one KV head
  // (MQA), and heads split across passes.
  const Shape shapes[] = {{64, 300, 8, 8}, {32, 200, 1, 32}, {16, 100, 16, 1}, {24, 130, 5, 12}};
  uint64_t seed = 40;
  for (const Shape& s : shapes) {
    for (const Layout layout : {Layout::kTokenMajor, Layout::kHeadMajor}) {
      INFO("dim " << s.dim << " n_ctx " << s.n_tokens << " kv heads " << s.kv_heads << " group "
                  << s.group << " " << LayoutName(layout));
      Rng rng(seed++);
      TestCache cache(COVATTN_F32, layout, s.n_tokens, s.kv_heads, s.dim);
      cache.FillRandom(rng);
      const std::vector<float> q = NormalFloats(rng, s.kv_heads * s.group * s.dim, 1.5);
      ForEachTarget([&] { CheckDecode(cache, q, s.kv_heads * s.group, nullptr); });
    }
  }
}

TEST_CASE("every cache layout and custom strides give the same answer") {
  const Layout layouts[] = {Layout::kTokenMajor, Layout::kHeadMajor, Layout::kPadded};
  for (Layout layout : layouts) {
    for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_INT8}) {
      INFO(LayoutName(layout) << " " << DtypeName(dtype));
      Rng rng(7);
      TestCache cache(dtype, layout, 300, 4, 48);
      cache.FillRandom(rng);
      const std::vector<float> q = NormalFloats(rng, 8 * 48, 1.0);
      ForEachTarget([&] { CheckDecode(cache, q, 8, nullptr); });
    }
  }
}

TEST_CASE("sliding window and sink tokens") {
  struct Case {
    size_t window, sinks, n_tokens;
  } cases[] = {{1, 0, 100},   {16, 0, 100},  {16, 4, 100},  {64, 64, 300},
               {100, 3, 100}, {500, 2, 100}, {7, 200, 150}, {65, 1, 1000}};
  for (const Case& c : cases) {
    for (uint32_t dtype : {COVATTN_F32, COVATTN_INT8}) {
      INFO("window " << c.window << " sinks " << c.sinks << " n_ctx " << c.n_tokens << " "
                     << DtypeName(dtype));
      Rng rng(c.window * 131 + c.sinks);
      TestCache cache(dtype, Layout::kTokenMajor, c.n_tokens, 2, 40);
      cache.FillRandom(rng);
      const std::vector<float> q = NormalFloats(rng, 4 * 40, 2.0);
      covattn_attention_options options{0.0f, c.window, c.sinks, nullptr};
      ForEachTarget([&] { CheckDecode(cache, q, 4, &options); });
    }
  }
}

TEST_CASE("explicit scale, including a negative one") {
  Rng rng(3);
  TestCache cache(COVATTN_F32, Layout::kTokenMajor, 150, 1, 32);
  cache.FillRandom(rng);
  const std::vector<float> q = NormalFloats(rng, 2 * 32, 1.0);
  for (float scale : {0.5f, -0.3f, 1e-3f}) {
    INFO("scale " << scale);
    covattn_attention_options options{scale, 0, 0, nullptr};
    ForEachTarget([&] { CheckDecode(cache, q, 2, &options); });
  }
}

TEST_CASE("extreme logits (scores of +-1e4) neither overflow nor lose the winner") {
  const size_t dim = 64, n = 500;
  Rng rng(11);
  TestCache cache(COVATTN_F32, Layout::kTokenMajor, n, 1, dim);
  cache.FillRandom(rng);
  // Token 123's key is aligned with the query and scaled so its score is 1e4;
  // token 321's key is its opposite (score -1e4).
  std::vector<float> q(dim);
  for (size_t i = 0; i < dim; ++i) q[i] = static_cast<float>(rng.Normal());
  double qq = 0.0;
  for (float x : q) qq += double(x) * x;
  const double scale = 1.0 / std::sqrt(double(dim));
  for (size_t i = 0; i < dim; ++i) {
    cache.SetK(123, 0, i, 1e4 * q[i] / (qq * scale));
    cache.SetK(321, 0, i, -1e4 * q[i] / (qq * scale));
  }
  ForEachTarget([&] {
    std::vector<uint8_t> scratch = AttentionScratch(dim);
    std::vector<float> out(dim);
    REQUIRE(covattn_decode(&cache.view(), q.data(), 1, nullptr, out.data(), scratch.data(),
                           scratch.size()) == COVATTN_OK);
    const ReferenceRow ref = ReferenceAttention(cache, q.data(), float(scale), 0, n - 1, 0, 0);
    CheckRow(out.data(), ref, dim);
    for (size_t i = 0; i < dim; ++i) CHECK(out[i] == doctest::Approx(cache.V(123, 0, i)));
  });
}

TEST_CASE("prefill equals repeated decode and the reference, with log Z") {
  struct Case {
    size_t dim, n_past, n_new, kv_heads, group, window, sinks;
    uint32_t dtype;
  } cases[] = {{64, 0, 37, 2, 4, 0, 0, COVATTN_F32},     {17, 50, 100, 1, 1, 0, 0, COVATTN_F16},
               {128, 10, 70, 1, 8, 24, 4, COVATTN_BF16}, {80, 0, 130, 2, 2, 33, 0, COVATTN_F32},
               {3, 200, 9, 3, 3, 5, 2, COVATTN_F32},     {8, 30, 40, 2, 4, 0, 0, COVATTN_F16},
               {12, 0, 70, 1, 4, 0, 0, COVATTN_F32},     {24, 5, 33, 2, 2, 16, 1, COVATTN_BF16},
               {96, 20, 50, 2, 4, 0, 0, COVATTN_INT8},   {40, 0, 90, 1, 2, 30, 3, COVATTN_INT8}};
  for (const Case& c : cases) {
    INFO("dim " << c.dim << " n_past " << c.n_past << " n_new " << c.n_new << " group " << c.group
                << " window " << c.window << " sinks " << c.sinks);
    const size_t n_tokens = c.n_past + c.n_new, q_heads = c.kv_heads * c.group;
    Rng rng(c.dim + c.n_new);
    TestCache cache(c.dtype, Layout::kTokenMajor, n_tokens + 3, c.kv_heads, c.dim);
    cache.FillRandom(rng);
    // Queries [token][head] with a padded token stride.
    const size_t q_token_stride = q_heads * c.dim + 5;
    std::vector<float> q(c.n_new * q_token_stride, std::nanf(""));
    for (size_t t = 0; t < c.n_new; ++t)
      for (size_t i = 0; i < q_heads * c.dim; ++i)
        q[t * q_token_stride + i] = static_cast<float>(rng.Normal());
    const covattn_attention_options options{0.0f, c.window, c.sinks, nullptr};
    const float scale = 1.0f / std::sqrt(float(c.dim));
    ForEachTarget([&] {
      std::vector<uint8_t> scratch = AttentionScratch(c.dim);
      // Outputs [head][token][dim] to exercise output strides.
      std::vector<float> out(q_heads * c.n_new * c.dim), log_z(c.n_new * q_heads);
      const covattn_queries queries{q.data(), c.n_new, q_heads, q_token_stride, c.dim};
      const covattn_outputs outputs{out.data(), c.dim, c.n_new * c.dim, log_z.data()};
      REQUIRE(covattn_prefill(&cache.view(), &queries, c.n_past, &options, &outputs, scratch.data(),
                              scratch.size()) == COVATTN_OK);
      for (size_t t = 0; t < c.n_new; ++t) {
        // Decode sees the cache up to this query's own token.
        covattn_kv_cache prefix = cache.view();
        prefix.n_tokens = c.n_past + t + 1;
        std::vector<float> dec(q_heads * c.dim);
        std::vector<float> qt(q.begin() + t * q_token_stride,
                              q.begin() + t * q_token_stride + q_heads * c.dim);
        REQUIRE(covattn_decode(&prefix, qt.data(), q_heads, &options, dec.data(), scratch.data(),
                               scratch.size()) == COVATTN_OK);
        for (size_t h = 0; h < q_heads; ++h) {
          INFO("token " << t << " head " << h);
          const ReferenceRow ref = ReferenceAttention(cache, qt.data() + h * c.dim, scale,
                                                      h / c.group, c.n_past + t, c.window, c.sinks);
          const float* got = out.data() + h * c.n_new * c.dim + t * c.dim;
          CheckRow(got, ref, c.dim);
          CheckRow(dec.data() + h * c.dim, ref, c.dim);
          CHECK(std::fabs(log_z[t * q_heads + h] - ref.log_z) <= ref.log_z_bound);
        }
      }
    });
  }
}

TEST_CASE("split into partial states and merged equals one pass") {
  const size_t dim = 96, n_tokens = 1000, kv_heads = 2, group = 2, q_heads = 4;
  const size_t splits[] = {0, 1, 64, 65, 333, 999, 1000};
  const float scale = 1.0f / std::sqrt(float(dim));
  struct Case {
    uint32_t dtype;
    size_t window;
  };
  for (const Case c : {Case{COVATTN_F16, 0}, Case{COVATTN_F16, 300}, Case{COVATTN_INT8, 0},
                       Case{COVATTN_INT8, 300}}) {
    const uint32_t dtype = c.dtype;  // plain variables: lambdas below capture them
    const size_t window = c.window;
    INFO(DtypeName(dtype) << " window " << window);
    Rng rng(5);
    TestCache cache(dtype, Layout::kHeadMajor, n_tokens, kv_heads, dim);
    cache.FillRandom(rng, 1.5);
    const std::vector<float> q = NormalFloats(rng, q_heads * dim, 1.0);
    const covattn_queries queries{q.data(), 1, q_heads, q_heads * dim, dim};
    const covattn_attention_options options{0.0f, window, 2, nullptr};
    ForEachTarget([&] {
      std::vector<uint8_t> scratch = AttentionScratch(dim);
      std::vector<float> m(q_heads), l(q_heads), o(q_heads * dim);
      std::vector<float> m2(q_heads), l2(q_heads), o2(q_heads * dim);
      const covattn_partial total{m.data(), l.data(), o.data()};
      const covattn_partial part{m2.data(), l2.data(), o2.data()};
      // Fold the ranges [splits[i], splits[i+1]) in, in a scrambled order.
      const size_t order[] = {3, 0, 5, 1, 4, 2};
      REQUIRE(covattn_prefill_partial(&cache.view(), &queries, n_tokens - 1, &options, 0, 0, &total,
                                      scratch.data(), scratch.size()) == COVATTN_OK);
      for (size_t idx : order) {
        REQUIRE(covattn_prefill_partial(&cache.view(), &queries, n_tokens - 1, &options,
                                        splits[idx], splits[idx + 1], &part, scratch.data(),
                                        scratch.size()) == COVATTN_OK);
        REQUIRE(covattn_partial_merge(q_heads, dim, &total, &part) == COVATTN_OK);
      }
      std::vector<float> out(q_heads * dim), log_z(q_heads);
      REQUIRE(covattn_partial_finalize(q_heads, dim, &total, out.data(), log_z.data()) ==
              COVATTN_OK);
      for (size_t h = 0; h < q_heads; ++h) {
        INFO("head " << h);
        const ReferenceRow ref = ReferenceAttention(cache, q.data() + h * dim, scale, h / group,
                                                    n_tokens - 1, window, 2);
        CheckRow(out.data() + h * dim, ref, dim);
        CHECK(std::fabs(log_z[h] - ref.log_z) <= ref.log_z_bound);
      }
    });
  }
}

TEST_CASE("a partial state of a range the query cannot see is empty, and finalizes to zeros") {
  const size_t dim = 8;
  Rng rng(9);
  TestCache cache(COVATTN_F32, Layout::kTokenMajor, 100, 1, dim);
  cache.FillRandom(rng);
  const std::vector<float> q = NormalFloats(rng, dim, 1.0);
  const covattn_queries queries{q.data(), 1, 1, dim, dim};
  const covattn_attention_options options{0.0f, 10, 0, nullptr};  // sees tokens 90..99
  ForEachTarget([&] {
    std::vector<uint8_t> scratch = AttentionScratch(dim);
    float m = 1, l = 1;
    std::vector<float> o(dim, 1.0f), out(dim, 5.0f);
    const covattn_partial state{&m, &l, o.data()};
    REQUIRE(covattn_prefill_partial(&cache.view(), &queries, 99, &options, 20, 80, &state,
                                    scratch.data(), scratch.size()) == COVATTN_OK);
    CHECK(l == 0.0f);
    CHECK(std::isfinite(m));
    for (float x : o) CHECK(x == 0.0f);
    float log_z = 0.0f;
    CHECK(covattn_partial_finalize(1, dim, &state, out.data(), &log_z) == COVATTN_FULLY_MASKED);
    for (float x : out) CHECK(x == 0.0f);
    CHECK(std::isinf(log_z));
    CHECK(log_z < 0);
  });
}

TEST_CASE("decode on an empty cache gives zeros and reports the masked rows") {
  const size_t dim = 16;
  std::vector<float> q(2 * dim, 1.0f), out(2 * dim, 3.0f);
  covattn_kv_cache cache{COVATTN_F32, nullptr, nullptr, 0, 1, dim, dim, dim, dim, dim, nullptr};
  std::vector<uint8_t> scratch = AttentionScratch(dim);
  ForEachTarget([&] {
    CHECK(covattn_decode(&cache, q.data(), 2, nullptr, out.data(), scratch.data(),
                         scratch.size()) == COVATTN_FULLY_MASKED);
    for (float x : out) CHECK(x == 0.0f);
  });
}

TEST_CASE("NaN or infinite inputs are reported, never returned as success") {
  const size_t dim = 32, n = 100;
  std::vector<uint8_t> scratch = AttentionScratch(dim);
  Rng rng(21);
  const std::vector<float> q = NormalFloats(rng, dim, 1.0);
  struct Poison {
    const char* what;
    bool in_key;
    double value;
  } poisons[] = {{"NaN key", true, std::nan("")},
                 {"infinite key", true, std::numeric_limits<double>::infinity()},
                 {"NaN value", false, std::nan("")},
                 {"infinite value", false, -std::numeric_limits<double>::infinity()}};
  for (const Poison& p : poisons) {
    for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_BF16}) {
      INFO(std::string(p.what) << " " << DtypeName(dtype));
      TestCache cache(dtype, Layout::kTokenMajor, n, 1, dim);
      cache.FillRandom(rng);
      if (p.in_key)
        cache.SetK(40, 0, 5, p.value);
      else
        cache.SetV(40, 0, 31, p.value);
      // Prefill of 32 rows of the head (their scores in the lanes): every
      // row sees token 40, in a chunk no row is masked in. q[5] < 0, so an
      // infinite key scores -inf: a weight of 0 that only the score check
      // can report.
      const size_t n_new = 32;
      std::vector<float> qs(n_new * dim);
      for (float& x : qs) x = static_cast<float>(rng.Normal());
      for (size_t t = 0; t < n_new; ++t) qs[t * dim + 5] = -0.5f - std::fabs(qs[t * dim + 5]);
      const covattn_queries queries{qs.data(), n_new, 1, dim, dim};
      ForEachTarget([&] {
        std::vector<float> out(n_new * dim);
        CHECK(covattn_decode(&cache.view(), q.data(), 1, nullptr, out.data(), scratch.data(),
                             scratch.size()) == COVATTN_ERR_NONFINITE);
        const covattn_outputs outputs{out.data(), dim, dim, nullptr};
        CHECK(covattn_prefill(&cache.view(), &queries, n - n_new, nullptr, &outputs, scratch.data(),
                              scratch.size()) == COVATTN_ERR_NONFINITE);
      });
    }
  }
  // A NaN query.
  TestCache cache(COVATTN_F32, Layout::kTokenMajor, n, 1, dim);
  cache.FillRandom(rng);
  std::vector<float> bad_q = q;
  bad_q[3] = std::nanf("");
  ForEachTarget([&] {
    std::vector<float> out(dim);
    CHECK(covattn_decode(&cache.view(), bad_q.data(), 1, nullptr, out.data(), scratch.data(),
                         scratch.size()) == COVATTN_ERR_NONFINITE);
  });
}

// f32 rounding over long contexts: the output is summed in chunks, blocks of
// chunks and blocks (MATH.md section 1), so no f32 sum has more than 64 terms
// here. oneDNN's blocked sgemm gets about 2e-7 on this kind of data
// (docs/results.md); one-by-one chunk sums gave 6.5-7.1e-7.
TEST_CASE("f32 decode over 65536 tokens stays within 5e-7 of float64 (rel L2)") {
  const size_t dim = 64, n_tokens = 65536, kv_heads = 1, group = 4;
  Rng rng(2024);
  TestCache cache(COVATTN_F32, Layout::kTokenMajor, n_tokens, kv_heads, dim);
  cache.FillRandom(rng);
  const std::vector<float> q = NormalFloats(rng, kv_heads * group * dim, 1.0);
  const float scale = 1.0f / std::sqrt(float(dim));
  std::vector<ReferenceRow> refs;
  for (size_t h = 0; h < group; ++h) {
    refs.push_back(ReferenceAttention(cache, q.data() + h * dim, scale, 0, n_tokens - 1, 0, 0));
  }
  ForEachTarget([&] {
    std::vector<uint8_t> scratch = AttentionScratch(dim);
    std::vector<float> out(group * dim);
    REQUIRE(covattn_decode(&cache.view(), q.data(), group, nullptr, out.data(), scratch.data(),
                           scratch.size()) == COVATTN_OK);
    double err = 0.0, norm = 0.0;
    for (size_t h = 0; h < group; ++h) {
      for (size_t i = 0; i < dim; ++i) {
        const double e = out[h * dim + i] - refs[h].out[i];
        err += e * e, norm += refs[h].out[i] * refs[h].out[i];
      }
    }
    const double rel_l2 = std::sqrt(err / norm);
    MESSAGE("rel L2 " << rel_l2);
    CHECK(rel_l2 <= 5e-7);
  });
}
