// The bounded cache (include/covattn/cache.h) on every target: exact until
// the first eviction, the pure readout and the sink + window baseline as
// special cases, the error/memory trade-off on synthetic regimes, appends that
// never fail, and files that never load corrupt.
#include "covattn/cache.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <memory>
#include <numeric>

#include "cache_files.h"
#include "cache_test_util.h"
#include "covariance_test_util.h"
#include "test_util.h"

using namespace covattn_test;

TEST_CASE("until the first eviction the cache is exact attention") {
  const size_t dim = 48, heads = 2, group = 3;
  for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_BF16, COVATTN_INT8}) {
    INFO("dtype " << DtypeName(dtype));
    Rng rng(1);
    // The data is already rounded to the cache's dtype (int8: quantised the
    // cache's way), so the cache stores exactly the values the reference sees.
    TestCache data(dtype, Layout::kTokenMajor, 100, heads, dim);
    data.FillRandom(rng, 1.5, 0.3);
    const std::vector<float> q = RandomQueries(rng, heads * group * dim, 1.0);
    ForEachTarget([&] {
      // 4 sinks + 96 window tokens hold all 100 tokens (outliers never used).
      for (const covattn_cache_config& config :
           {Config(heads, dim, 4, 96, 8, dtype), Config(heads, dim, 0, 500, 0, dtype),
            Config(heads, dim, 100, 0, 0, dtype, 1.0f, COVATTN_CACHE_DROP_EVICTED)}) {
        CachePtr cache = MakeCache(config);
        for (size_t n : {size_t{1}, size_t{37}, size_t{100}}) {
          INFO("tokens " << n << " window " << config.window);
          // Whatever came before, a reset cache holds just what follows.
          AppendAll(cache.get(), data, 7);
          REQUIRE(covattn_cache_reset(cache.get()) == COVATTN_OK);
          Append(cache.get(), data, 0, n);
          const Decoded r = Decode(cache.get(), q, heads * group, dim);
          REQUIRE(r.status == COVATTN_OK);
          for (size_t h = 0; h < heads * group; ++h) {
            const ReferenceRow ref =
                ReferenceAttention(data, q.data() + h * dim, 1.0f / std::sqrt(float(dim)),
                                   h / group, n - 1, 0, 0, 0, n);
            CheckRow(r.out.data() + h * dim, ref, dim);
            CHECK(r.share[h] == 0.0f);
            CHECK(std::fabs(r.log_z[h] - ref.log_z) <= ref.log_z_bound);
          }
        }
      }
    });
  }
}

TEST_CASE("an empty cache decodes to zeros and says so") {
  CachePtr cache = MakeCache(Config(1, 8, 2, 4, 2));
  ForEachTarget([&] {
    const Decoded r = Decode(cache.get(), std::vector<float>(8, 1.0f), 1, 8);
    CHECK(r.status == COVATTN_FULLY_MASKED);
    for (float x : r.out) CHECK(x == 0.0f);
  });
}

TEST_CASE("sinks + window without a summary is exact attention over the kept tokens") {
  const size_t dim = 32, heads = 2, n = 500, sinks = 3, window = 40;
  Rng rng(2);
  TestCache data(COVATTN_F32, Layout::kHeadMajor, n, heads, dim);
  data.FillRandom(rng);
  const std::vector<float> q = RandomQueries(rng, heads * dim, 1.0);
  ForEachTarget([&] {
    CachePtr cache = MakeCache(
        Config(heads, dim, sinks, window, 0, COVATTN_F32, 1.0f, COVATTN_CACHE_DROP_EVICTED));
    AppendAll(cache.get(), data, 3);
    covattn_cache_info info;
    REQUIRE(covattn_cache_info_get(cache.get(), &info) == COVATTN_OK);
    CHECK(info.n_tokens == n);
    CHECK(info.n_dropped == (n - sinks - window) * heads);
    CHECK(info.n_summarized == 0);
    const Decoded r = Decode(cache.get(), q, heads, dim);
    REQUIRE(r.status == COVATTN_OK);
    for (size_t h = 0; h < heads; ++h) {
      // The window and sink semantics of exact attention at position n - 1.
      const ReferenceRow ref = ReferenceAttention(
          data, q.data() + h * dim, 1.0f / std::sqrt(float(dim)), h, n - 1, window, sinks);
      CheckRow(r.out.data() + h * dim, ref, dim);
    }
  });
}

TEST_CASE("a summary-only cache is the covariance readout") {
  const size_t dim = 24, heads = 2, group = 2, n = 1500;
  Rng rng(4);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, n, heads, dim);
  data.FillRandom(rng, 1.0, 2.0);
  const std::vector<float> q = RandomQueries(rng, heads * group * dim, 0.3);
  ForEachTarget([&] {
    CachePtr cache = MakeCache(Config(heads, dim, 0, 0, 0));
    AppendAll(cache.get(), data, 5);
    StatePtr state = MakeState(heads, dim);
    Update(state.get(), data.view(), 0, n);
    std::vector<float> expected(heads * group * dim), log_z(heads * group);
    REQUIRE(covattn_cov_readout(state.get(), q.data(), heads * group, 0.0f, expected.data(),
                                log_z.data(), nullptr) == COVATTN_OK);
    const Decoded r = Decode(cache.get(), q, heads * group, dim);
    REQUIRE(r.status == COVATTN_OK);
    // The cache folded 64-token batches, the state one block: the same
    // statistics merged in a different order. Both are within a few dozen
    // roundings of the double statistics (covariance_test bounds each), so
    // compare relative to the size of the readout's terms.
    double scale = 0.0;
    for (float x : expected) scale = std::max(scale, double(std::fabs(x)));
    for (size_t i = 0; i < expected.size(); ++i) {
      CHECK(std::fabs(r.out[i] - expected[i]) <= 1e-4 * (scale + 1.0));
    }
    for (size_t h = 0; h < heads * group; ++h) {
      CHECK(r.share[h] == 1.0f);
      CHECK(std::fabs(r.log_z[h] - log_z[h]) <= 1e-4 * (std::fabs(log_z[h]) + 1.0));
    }
  });
}

// ---------------------------------------------------------------------------
// Synthetic regimes (MATH.md section 4): d = 64, 8192 tokens, 256 exact tokens.

enum class Regime { kGaussian, kDrift, kStudentT };

// Keys and values z = [k; v] = mu(t) + L x, x ~ N(0, I) (times a per-token
// chi-square radius for Student-t), with a fixed random mixing L.
TestCache MakeRegime(Regime regime, size_t n, size_t dim, uint64_t seed) {
  Rng rng(seed);
  const size_t width = 2 * dim;
  std::vector<double> mix(width * width), mean(width), drift(width);
  for (size_t i = 0; i < width; ++i) {
    for (size_t j = 0; j < width; ++j)
      mix[i * width + j] = (i == j) + 0.4 * rng.Normal() / std::sqrt(width);
    mean[i] = 1.0 + 0.5 * rng.Normal();
    drift[i] = 2.0 * rng.Normal();
  }
  TestCache data(COVATTN_F32, Layout::kTokenMajor, n, 1, dim);
  std::vector<double> x(width);
  for (size_t t = 0; t < n; ++t) {
    double radius = 1.0;
    if (regime == Regime::kStudentT) {
      double chi2 = 0.0;
      for (int i = 0; i < 3; ++i) {
        const double g = rng.Normal();
        chi2 += g * g;
      }
      radius = std::sqrt(3.0 / chi2);
    }
    for (double& xi : x) xi = rng.Normal();
    for (size_t i = 0; i < width; ++i) {
      double z = mean[i] + (regime == Regime::kDrift ? drift[i] * t / n : 0.0);
      for (size_t j = 0; j < width; ++j) z += radius * mix[i * width + j] * x[j];
      if (i < dim)
        data.SetK(t, 0, i, z);
      else
        data.SetV(t, 0, i - dim, z);
    }
  }
  return data;
}

// Queries with score standard deviation sigma under the keys' covariance.
std::vector<float> SharpQuery(const TestCache& data, size_t dim, double sigma, Rng& rng) {
  std::vector<double> u(dim), mean(dim, 0.0);
  for (double& x : u) x = rng.Normal();
  const size_t n = data.n_tokens();
  for (size_t t = 0; t < n; ++t)
    for (size_t i = 0; i < dim; ++i) mean[i] += data.K(t, 0, i) / n;
  double var = 0.0;  // variance of u.k
  for (size_t t = 0; t < n; ++t) {
    double s = 0.0;
    for (size_t i = 0; i < dim; ++i) s += u[i] * (data.K(t, 0, i) - mean[i]);
    var += s * s / n;
  }
  const double scale = 1.0 / std::sqrt(double(dim));
  std::vector<float> q(dim);
  for (size_t i = 0; i < dim; ++i) q[i] = static_cast<float>(sigma * u[i] / std::sqrt(var) / scale);
  return q;
}

// Median relative L2 error of a cache configuration against exact attention
// over all tokens, over several queries.
double MedianError(const covattn_cache_config& config, const TestCache& data,
                   const std::vector<std::vector<float>>& queries) {
  CachePtr cache = MakeCache(config);
  Append(cache.get(), data, 0, data.n_tokens());
  std::vector<double> errors;
  const size_t dim = config.head_dim;
  for (const std::vector<float>& q : queries) {
    const Decoded r = Decode(cache.get(), q, 1, dim);
    REQUIRE(r.status == COVATTN_OK);
    const ReferenceRow ref = ReferenceAttention(data, q.data(), 1.0f / std::sqrt(float(dim)), 0,
                                                data.n_tokens() - 1, 0, 0);
    errors.push_back(RelativeL2(r.out.data(), ref.out));
  }
  std::sort(errors.begin(), errors.end());
  return errors[errors.size() / 2];
}

TEST_CASE("synthetic regimes: the hybrid beats sinks + window at equal memory") {
  const size_t dim = 64, n = 8192, budget = 256, sinks = 4;
  // The summary's bytes as tokens: W, the means and the co-moments per head,
  // plus the outlier policy's whitening (packed triangle and mean).
  const size_t token_bytes = 2 * dim * sizeof(float);
  const size_t summary_bytes = 8 * (1 + 2 * dim) + 4 * 2 * dim * dim;
  const size_t whitening_bytes = 2 * dim * dim + 4 * dim;  // bf16 W^T, f32 mean
  const size_t summary_tokens = (summary_bytes + token_bytes - 1) / token_bytes;
  const size_t outlier_tokens = (summary_bytes + whitening_bytes + token_bytes - 1) / token_bytes;
  struct Case {
    const char* name;
    Regime regime;
  } cases[] = {{"Gaussian, mean != 0", Regime::kGaussian},
               {"drifting mean", Regime::kDrift},
               {"Student-t, 3 dof", Regime::kStudentT}};
  for (const Case& c : cases) {
    INFO(std::string(c.name));
    const TestCache data = MakeRegime(c.regime, n, dim, 11 + int(c.regime));
    Rng rng(99);
    std::vector<std::vector<float>> queries;
    for (int i = 0; i < 5; ++i) queries.push_back(SharpQuery(data, dim, 1.0, rng));
    ForEachTarget([&] {
      // Window + summary, window + outliers + summary, and the baseline
      // given the summary's memory as extra window tokens.
      const double hybrid = MedianError(Config(1, dim, sinks, budget - sinks, 0), data, queries);
      const double outliers =
          MedianError(Config(1, dim, sinks, 60, budget - sinks - 60), data, queries);
      const double window_same_as_hybrid =
          MedianError(Config(1, dim, sinks, budget - sinks + summary_tokens, 0, COVATTN_F32, 1.0f,
                             COVATTN_CACHE_DROP_EVICTED),
                      data, queries);
      const double window_same_as_outliers =
          MedianError(Config(1, dim, sinks, budget - sinks + outlier_tokens, 0, COVATTN_F32, 1.0f,
                             COVATTN_CACHE_DROP_EVICTED),
                      data, queries);
      MESSAGE(std::string(c.name) << ": window " << window_same_as_hybrid << ", hybrid " << hybrid
                                  << ", window (outlier memory) " << window_same_as_outliers
                                  << ", hybrid with outliers " << outliers);
      CHECK(hybrid < window_same_as_hybrid);
      CHECK(outliers < window_same_as_outliers);
      if (c.regime == Regime::kStudentT) CHECK(outliers < 0.05);
    });
  }
}

// ---------------------------------------------------------------------------
// Appends, bad input, files.

TEST_CASE("appending to a full cache never fails; counts add up") {
  const size_t dim = 16, heads = 3;
  Rng rng(6);
  TestCache data(COVATTN_BF16, Layout::kPadded, 3000, heads, dim);
  data.FillRandom(rng);
  ForEachTarget([&] {
    CachePtr cache = MakeCache(Config(heads, dim, 2, 10, 5, COVATTN_F16, 0.99f));
    for (size_t t = 0; t < data.n_tokens(); t += 1) Append(cache.get(), data, t, 1);
    covattn_cache_info info;
    REQUIRE(covattn_cache_info_get(cache.get(), &info) == COVATTN_OK);
    CHECK(info.n_tokens == data.n_tokens());
    CHECK(info.n_exact == (2 + 10 + 5) * heads);
    CHECK(info.n_exact + info.n_summarized == data.n_tokens() * heads);
    const Decoded r = Decode(cache.get(), RandomQueries(rng, heads * dim, 1.0), heads, dim);
    CHECK(r.status == COVATTN_OK);
    for (float x : r.out) CHECK(std::isfinite(x));
  });
}

TEST_CASE("a NaN token is refused and the cache is left exactly as it was") {
  const size_t dim = 8;
  Rng rng(8);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 50, 1, dim);
  data.FillRandom(rng);
  TestCache bad(COVATTN_F32, Layout::kTokenMajor, 20, 1, dim);
  bad.FillRandom(rng);
  bad.SetK(13, 0, 2, std::nan(""));
  ForEachTarget([&] {
    CachePtr cache = MakeCache(Config(1, dim, 1, 5, 3));
    Append(cache.get(), data, 0, 50);
    const std::vector<uint8_t> before = Serialize(cache.get());
    const covattn_kv_cache block = bad.view();
    CHECK(AppendStatus(cache.get(), &block) == COVATTN_ERR_NONFINITE);
    CHECK(Serialize(cache.get()) == before);
  });
}

TEST_CASE("an f16 cache refuses values f16 cannot hold, before anything changes") {
  // Found by fuzz_cache: 1e5 stored as f16 became infinity, and the cache's
  // own file then failed its finite-value check.
  const size_t dim = 8;
  Rng rng(9);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 30, 1, dim);
  data.FillRandom(rng);
  ForEachTarget([&] {
    for (const uint32_t input : {COVATTN_F32, COVATTN_BF16}) {
      INFO("input dtype " << input);
      TestCache block(input, Layout::kTokenMajor, 4, 1, dim);
      block.FillRandom(rng);
      CachePtr cache = MakeCache(Config(1, dim, 1, 5, 3, COVATTN_F16));
      Append(cache.get(), data, 0, 30);
      const std::vector<uint8_t> before = Serialize(cache.get());
      block.SetV(2, 0, 5, 65280.0);  // f16 and bf16 hold it exactly: accepted
      CHECK(AppendStatus(cache.get(), &block.view()) == COVATTN_OK);
      const std::vector<uint8_t> after = Serialize(cache.get());
      block.SetV(2, 0, 5, -1e5);
      CHECK(AppendStatus(cache.get(), &block.view()) == COVATTN_ERR_NONFINITE);
      CHECK(Serialize(cache.get()) == after);
      CHECK(after != before);
      // An f32 cache keeps such values.
      CachePtr wide = MakeCache(Config(1, dim, 1, 5, 3, COVATTN_F32));
      CHECK(AppendStatus(wide.get(), &block.view()) == COVATTN_OK);
    }
  });
}

TEST_CASE("configuration and shape errors have their own statuses") {
  covattn_cache* cache = nullptr;
  size_t bytes = 0;
  covattn_cache_config config = Config(2, 16, 1, 4, 2);
  CHECK(covattn_cache_size(nullptr, &bytes) == COVATTN_ERR_NULL_POINTER);
  config.head_dim = 0;
  CHECK(covattn_cache_create(&config, &cache) == COVATTN_ERR_INVALID_HEAD_DIM);
  config = Config(0, 16, 1, 4, 2);
  CHECK(covattn_cache_create(&config, &cache) == COVATTN_ERR_INVALID_HEAD_COUNT);
  config = Config(2, 16, 1, 4, 2, 7);
  CHECK(covattn_cache_create(&config, &cache) == COVATTN_ERR_UNSUPPORTED_DTYPE);
  config = Config(2, 16, 1, 4, 2, COVATTN_F32, -0.5f);
  CHECK(covattn_cache_create(&config, &cache) == COVATTN_ERR_INVALID_FORGETTING);
  config = Config(2, 16, 1, 4, 2, COVATTN_F32, 1.5f);
  CHECK(covattn_cache_create(&config, &cache) == COVATTN_ERR_INVALID_FORGETTING);
  config = Config(2, 16, 0, 0, 0, COVATTN_F32, 1.0f, COVATTN_CACHE_DROP_EVICTED);
  CHECK(covattn_cache_create(&config, &cache) == COVATTN_ERR_INVALID_BUDGET);
  config = Config(2, 16, 1, 4, 2, COVATTN_F32, 1.0f, COVATTN_CACHE_DROP_EVICTED);
  CHECK(covattn_cache_create(&config, &cache) == COVATTN_ERR_INVALID_BUDGET);
  config = Config(2, 16, 1, 4, 2, COVATTN_F32, 1.0f, 0x80);
  CHECK(covattn_cache_create(&config, &cache) == COVATTN_ERR_INVALID_BUDGET);
  config = Config(2, 16, SIZE_MAX / 4, 4, 2);
  CHECK(covattn_cache_size(&config, &bytes) == COVATTN_ERR_SIZE_OVERFLOW);
  config = Config(2, 16, 1, 4, 2);
  REQUIRE(covattn_cache_size(&config, &bytes) == COVATTN_OK);
  std::vector<uint8_t> memory(bytes);
  CHECK(covattn_cache_init(memory.data(), bytes - 1, &config, &cache) ==
        COVATTN_ERR_BUFFER_TOO_SMALL);
  REQUIRE(covattn_cache_init(memory.data(), bytes, &config, &cache) == COVATTN_OK);

  Rng rng(10);
  TestCache wrong_heads(COVATTN_F32, Layout::kTokenMajor, 4, 3, 16);
  wrong_heads.FillRandom(rng);
  covattn_kv_cache block = wrong_heads.view();
  CHECK(AppendStatus(cache, &block) == COVATTN_ERR_SHAPE_MISMATCH);
  TestCache right(COVATTN_F32, Layout::kTokenMajor, 4, 2, 16);
  right.FillRandom(rng);
  block = right.view();
  block.dtype = 9;
  CHECK(AppendStatus(cache, &block) == COVATTN_ERR_UNSUPPORTED_DTYPE);
  block = right.view();
  block.k_head_stride = 3;
  CHECK(AppendStatus(cache, &block) == COVATTN_ERR_INVALID_STRIDE);
  block = right.view();
  std::vector<uint8_t> append_scratch = Scratch(cache);
  CHECK(covattn_cache_append(nullptr, &block, append_scratch.data(), append_scratch.size()) ==
        COVATTN_ERR_NULL_POINTER);
  REQUIRE(AppendStatus(cache, &block) == COVATTN_OK);

  std::vector<float> q(4 * 16, 0.5f), out(4 * 16);
  size_t scratch_bytes = 0;
  CHECK(covattn_cache_scratch_size(&config, 3, &scratch_bytes) == COVATTN_ERR_HEAD_MISMATCH);
  CHECK(covattn_cache_scratch_size(&config, 0, &scratch_bytes) == COVATTN_ERR_INVALID_HEAD_COUNT);
  CHECK(covattn_cache_scratch_size(nullptr, 4, &scratch_bytes) == COVATTN_ERR_NULL_POINTER);
  REQUIRE(covattn_cache_scratch_size(&config, 4, &scratch_bytes) == COVATTN_OK);
  std::vector<uint8_t> scratch(scratch_bytes);
  CHECK(covattn_cache_decode(cache, q.data(), 4, 0.0f, out.data(), nullptr, scratch.data(), 16) ==
        COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(covattn_cache_decode(cache, q.data(), 4, NAN, out.data(), nullptr, scratch.data(),
                             scratch_bytes) == COVATTN_ERR_INVALID_SCALE);
  CHECK(covattn_cache_decode(cache, q.data(), 4, 0.0f, q.data(), nullptr, scratch.data(),
                             scratch_bytes) == COVATTN_ERR_ALIASING);
  CHECK(covattn_cache_decode(cache, q.data(), 4, 0.0f,
                             reinterpret_cast<float*>(memory.data() + 1024), nullptr,
                             scratch.data(), scratch_bytes) == COVATTN_ERR_ALIASING);
  CHECK(covattn_cache_decode(cache, q.data(), 4, 0.0f, out.data(), nullptr, scratch.data(),
                             scratch_bytes) == COVATTN_OK);
  covattn_cache_destroy(cache);  // caller memory: nothing to free
}

TEST_CASE("destroy leaves a cache in caller memory as it was, and usable") {
  // cache.h: destroy does nothing for a cache made with init. It used to
  // clear the cache's magic, so every later call returned COVATTN_ERR_CORRUPT.
  const size_t dim = 8, heads = 2;
  Rng rng(3);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 40, heads, dim);
  data.FillRandom(rng);
  const covattn_cache_config config = Config(heads, dim, 1, 6, 2);
  size_t bytes = 0;
  REQUIRE(covattn_cache_size(&config, &bytes) == COVATTN_OK);
  std::vector<unsigned char> memory(bytes);
  covattn_cache* cache = nullptr;
  REQUIRE(covattn_cache_init(memory.data(), bytes, &config, &cache) == COVATTN_OK);
  Append(cache, data, 0, 20);
  const std::vector<unsigned char> before = memory;
  covattn_cache_destroy(cache);
  CHECK(memory == before);
  covattn_cache_info info;
  CHECK(covattn_cache_info_get(cache, &info) == COVATTN_OK);
  Append(cache, data, 20, 20);
  CHECK(Decode(cache, RandomQueries(rng, heads * dim, 1.0), heads, dim).status == COVATTN_OK);
  // Destroying what is not a cache does nothing either.
  std::vector<unsigned char> not_a_cache(bytes, 0);
  covattn_cache_destroy(reinterpret_cast<covattn_cache*>(not_a_cache.data()));
  CHECK(
      std::all_of(not_a_cache.begin(), not_a_cache.end(), [](unsigned char b) { return b == 0; }));
}

TEST_CASE("a cache in dirty caller memory serializes the same file as a clean one") {
  // Found by fuzz_cache: the outlier whitening is unused until its first
  // refresh but serialized, so it must not carry what the memory held before.
  const size_t dim = 8, heads = 2;
  Rng rng(5);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 12, heads, dim);
  data.FillRandom(rng);
  const covattn_cache_config config = Config(heads, dim, 2, 6, 4, COVATTN_F32, 1.0f);
  size_t bytes = 0;
  REQUIRE(covattn_cache_size(&config, &bytes) == COVATTN_OK);
  std::vector<unsigned char> dirty(bytes, 0xFF), clean(bytes, 0x00);  // 0xFF...: NaN floats
  covattn_cache *a = nullptr, *b = nullptr;
  REQUIRE(covattn_cache_init(dirty.data(), bytes, &config, &a) == COVATTN_OK);
  REQUIRE(covattn_cache_init(clean.data(), bytes, &config, &b) == COVATTN_OK);
  Append(a, data, 0, data.n_tokens());
  Append(b, data, 0, data.n_tokens());
  const std::vector<uint8_t> file = Serialize(a);
  CHECK(file == Serialize(b));
  CachePtr copy = MakeCache(config);
  CHECK(covattn_cache_load(copy.get(), file.data(), file.size()) == COVATTN_OK);
}

TEST_CASE("serialize and load: bit-exact round trip, every corrupt file refused untouched") {
  const size_t dim = 16, heads = 2;
  Rng rng(12);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 700, heads, dim);
  data.FillRandom(rng, 1.0, 0.5);
  const covattn_cache_config config = Config(heads, dim, 2, 30, 6, COVATTN_F16, 0.999f);
  ForEachTarget([&] {
    CachePtr source = MakeCache(config);
    AppendAll(source.get(), data, 13);
    const std::vector<uint8_t> file = Serialize(source.get());
    CachePtr copy = MakeCache(config);
    REQUIRE(covattn_cache_load(copy.get(), file.data(), file.size()) == COVATTN_OK);
    CHECK(Serialize(copy.get()) == file);
    const std::vector<float> q = RandomQueries(rng, heads * dim, 1.0);
    CHECK(Decode(copy.get(), q, heads, dim).out == Decode(source.get(), q, heads, dim).out);

    CachePtr target = MakeCache(config);
    Append(target.get(), data, 0, 10);
    const std::vector<uint8_t> before = Serialize(target.get());
    auto refuse = [&](const std::vector<uint8_t>& bad, covattn_status expected) {
      CHECK(covattn_cache_load(target.get(), bad.data(), bad.size()) == expected);
      CHECK(Serialize(target.get()) == before);
    };
    for (size_t cut : {size_t{0}, size_t{7}, size_t{100}, file.size() / 2, file.size() - 1}) {
      INFO("truncated to " << cut);
      CHECK(covattn_cache_load(target.get(), file.data(), cut) == COVATTN_ERR_TRUNCATED);
      CHECK(Serialize(target.get()) == before);
    }
    std::vector<uint8_t> bad = file;
    bad[0] ^= 1;
    refuse(bad, COVATTN_ERR_BAD_MAGIC);
    bad = file;
    bad[8] = 3;
    refuse(bad, COVATTN_ERR_VERSION);
    for (size_t at : {size_t{200}, file.size() / 2, file.size() - 20}) {
      bad = file;
      bad[at] ^= 0x10;
      refuse(bad, COVATTN_ERR_CHECKSUM);
    }
    bad = file;
    bad.push_back(0);
    refuse(bad, COVATTN_ERR_CORRUPT);
    CachePtr other = MakeCache(Config(heads, dim, 2, 31, 6, COVATTN_F16, 0.999f));
    CHECK(covattn_cache_load(other.get(), file.data(), file.size()) == COVATTN_ERR_SHAPE_MISMATCH);
    CHECK(covattn_cache_load(target.get(), nullptr, 10) == COVATTN_ERR_NULL_POINTER);
  });
}

TEST_CASE("files written before the cache was split into units still load, byte for byte") {
  struct File {
    const char* name;
    const unsigned char* bytes;
    size_t size;
    covattn_cache_config config;
    size_t n_tokens, block;
    uint64_t n_summarized, n_dropped;
    size_t n_exact;
  } files[] = {
      {"hybrid + outliers, f16", kHybridOutliersF16, sizeof(kHybridOutliersF16),
       Config(2, 4, 1, 3, 2, COVATTN_F16, 0.999f), 60, 7, 108, 0, 12},
      {"hybrid, f32", kHybridF32, sizeof(kHybridF32), Config(1, 2, 0, 2, 0), 10, 3, 8, 0, 2},
      {"sinks + window, bf16", kDropBF16, sizeof(kDropBF16),
       Config(1, 3, 1, 2, 0, COVATTN_BF16, 1.0f, COVATTN_CACHE_DROP_EVICTED), 9, 4, 0, 6, 3},
  };
  for (const File& f : files) {
    INFO(f.name);
    const std::vector<uint8_t> file(f.bytes, f.bytes + f.size);
    // The tokens the file was made from (cache_files.h), to rebuild it.
    const size_t row = f.config.n_kv_heads * f.config.head_dim;
    std::vector<float> k(f.n_tokens * row), v(f.n_tokens * row);
    for (size_t i = 0; i < k.size(); ++i) {
      k[i] = static_cast<float>(std::round(192.0 * std::sin(0.7 * i + 0.2)) / 64.0);
      v[i] = static_cast<float>(std::round(128.0 * std::cos(0.3 * i)) / 64.0);
    }
    Rng rng(31);
    const std::vector<float> q = RandomQueries(rng, 2 * row, 1.0);
    std::vector<float> first;  // the first target's decode of the loaded file
    ForEachTarget([&] {
      CachePtr loaded = MakeCache(f.config);
      REQUIRE(covattn_cache_load(loaded.get(), file.data(), file.size()) == COVATTN_OK);
      CHECK(Serialize(loaded.get()) == file);
      covattn_cache_info info;
      REQUIRE(covattn_cache_info_get(loaded.get(), &info) == COVATTN_OK);
      CHECK(info.n_tokens == f.n_tokens);
      CHECK(info.n_summarized == f.n_summarized);
      CHECK(info.n_dropped == f.n_dropped);
      CHECK(info.n_exact == f.n_exact);
      CachePtr rebuilt = MakeCache(f.config);
      for (size_t t = 0; t < f.n_tokens; t += f.block) {
        const size_t n = std::min(f.block, f.n_tokens - t);
        const covattn_kv_cache block{COVATTN_F32,
                                     k.data() + t * row,
                                     v.data() + t * row,
                                     n,
                                     f.config.n_kv_heads,
                                     f.config.head_dim,
                                     row,
                                     f.config.head_dim,
                                     row,
                                     f.config.head_dim,
                                     nullptr};
        REQUIRE(AppendStatus(rebuilt.get(), &block) == COVATTN_OK);
      }
      // The file's summary and outlier scores come from AVX3's kernels; other
      // targets round their sums and distances differently (and may keep
      // other outliers).
      const bool avx3 = std::string(covattn_target_name()) == "AVX3";
      if (avx3) CHECK(Serialize(rebuilt.get()) == file);
      // The loaded cache decodes alike on every target.
      const Decoded r = Decode(loaded.get(), q, 2 * f.config.n_kv_heads, f.config.head_dim);
      REQUIRE(r.status == COVATTN_OK);
      if (first.empty()) first = r.out;
      for (size_t i = 0; i < r.out.size(); ++i) {
        CHECK(r.out[i] == doctest::Approx(first[i]).epsilon(1e-5));
      }
      if (avx3) {
        CHECK(Decode(rebuilt.get(), q, 2 * f.config.n_kv_heads, f.config.head_dim).out == r.out);
      }
    });
  }
}
