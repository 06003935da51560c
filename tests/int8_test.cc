// int8 KV caches (MATH.md section 7): the quantiser against its definition,
// the statuses of int8 calls, non-finite scales, the covariance state's
// update of int8 blocks, covattn_convert's refusal of int8, and
// the error of int8 attention against f32. The kernels' results against the
// double references on the dequantised values are checked with the other
// dtypes in attention_test.cc, covariance_test.cc and threads_test.cc.
#include <doctest/doctest.h>

#include "covattn/covariance.h"
#include "test_util.h"

using namespace covattn_test;

TEST_CASE("covattn_quantize_int8 gives the documented bits") {
  Rng rng(81);
  const size_t dim = 37, n = 50, src_stride = 40, dst_stride = 45, scale_stride = 2;
  std::vector<float> x(n * src_stride, std::nanf(""));  // gaps must not be read
  for (size_t r = 0; r < n; ++r) {
    const double magnitude = std::pow(10.0, rng.Uniform(-38.0, 38.0));  // subnormal to huge
    for (size_t i = 0; i < dim; ++i) x[r * src_stride + i] = float(magnitude * rng.Normal());
  }
  for (size_t i = 0; i < dim; ++i) x[3 * src_stride + i] = 0.0f;              // all zero: scale 0
  for (size_t i = 0; i < dim; ++i) x[4 * src_stride + i] = float(i) - 18.0f;  // ties at 127/18 x
  x[5 * src_stride] = 1e-45f;  // a subnormal largest element
  for (size_t i = 1; i < dim; ++i) x[5 * src_stride + i] = 0.0f;
  std::vector<int8_t> q(n * dst_stride, 99);
  std::vector<float> scales(n * scale_stride, -1.0f);
  REQUIRE(covattn_quantize_int8(x.data(), n, dim, src_stride, q.data(), dst_stride, scales.data(),
                                scale_stride) == COVATTN_OK);
  for (size_t r = 0; r < n; ++r) {
    INFO("vector " << r);
    std::vector<int8_t> expect(dim);
    const float expect_scale = QuantizeInt8Reference(x.data() + r * src_stride, dim, expect.data());
    CHECK(scales[r * scale_stride] == expect_scale);
    CHECK(scales[r * scale_stride + 1] == -1.0f);  // between the scales: untouched
    for (size_t i = 0; i < dim; ++i) CHECK(q[r * dst_stride + i] == expect[i]);
    for (size_t i = dim; i < dst_stride && r + 1 < n; ++i) CHECK(q[r * dst_stride + i] == 99);
    // Dequantised, each element is within half a step of the input, plus the
    // rounding of the scale to f32 (relative u, or half the smallest
    // subnormal) times |q| <= 127.
    for (size_t i = 0; i < dim; ++i) {
      const double step = double(scales[r * scale_stride]);
      CHECK(std::fabs(step * q[r * dst_stride + i] - x[r * src_stride + i]) <=
            0.5 * step + 127 * (kU * step + 0.5 * 1.4013e-45));
    }
  }
  CHECK(scales[3 * scale_stride] == 0.0f);
  CHECK(q[5 * dst_stride] == 127);
}

TEST_CASE("covattn_quantize_int8 statuses; a failed call writes nothing") {
  const size_t dim = 8;
  std::vector<float> x(4 * dim, 1.0f);
  std::vector<int8_t> q(4 * dim, 5);
  std::vector<float> s(4, 7.0f);
  auto untouched = [&] {
    for (int8_t b : q) CHECK(b == 5);
    for (float f : s) CHECK(f == 7.0f);
  };
  CHECK(covattn_quantize_int8(x.data(), 4, 0, dim, q.data(), dim, s.data(), 1) ==
        COVATTN_ERR_INVALID_HEAD_DIM);
  CHECK(covattn_quantize_int8(x.data(), 4, COVATTN_MAX_HEAD_DIM + 1, dim, q.data(), dim, s.data(),
                              1) == COVATTN_ERR_INVALID_HEAD_DIM);
  CHECK(covattn_quantize_int8(nullptr, 0, dim, dim, nullptr, dim, nullptr, 1) == COVATTN_OK);
  CHECK(covattn_quantize_int8(nullptr, 4, dim, dim, q.data(), dim, s.data(), 1) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_quantize_int8(x.data(), 4, dim, dim, nullptr, dim, s.data(), 1) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_quantize_int8(x.data(), 4, dim, dim, q.data(), dim, nullptr, 1) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_quantize_int8(x.data(), 4, dim, dim - 1, q.data(), dim, s.data(), 1) ==
        COVATTN_ERR_INVALID_STRIDE);
  CHECK(covattn_quantize_int8(x.data(), 4, dim, dim, q.data(), dim - 1, s.data(), 1) ==
        COVATTN_ERR_INVALID_STRIDE);
  CHECK(covattn_quantize_int8(x.data(), 4, dim, dim, q.data(), dim, s.data(), 0) ==
        COVATTN_ERR_INVALID_STRIDE);
  CHECK(covattn_quantize_int8(x.data(), 1, dim, dim, q.data(), dim,
                              reinterpret_cast<float*>(reinterpret_cast<char*>(s.data()) + 1),
                              1) == COVATTN_ERR_MISALIGNED);
  CHECK(covattn_quantize_int8(x.data(), 4, dim, dim, reinterpret_cast<int8_t*>(x.data()), dim,
                              s.data(), 1) == COVATTN_ERR_ALIASING);
  CHECK(covattn_quantize_int8(x.data(), 2, dim, dim, q.data(), dim, x.data() + dim + 3, 1) ==
        COVATTN_ERR_ALIASING);
  CHECK(covattn_quantize_int8(x.data(), 2, dim, dim, q.data(), dim,
                              reinterpret_cast<float*>(q.data() + 4), 1) == COVATTN_ERR_ALIASING);
  untouched();
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity()}) {
    x[3 * dim + 2] = bad;
    CHECK(covattn_quantize_int8(x.data(), 4, dim, dim, q.data(), dim, s.data(), 1) ==
          COVATTN_ERR_NONFINITE);
    untouched();
  }
}

TEST_CASE("int8 caches: scales are validated like any tensor") {
  const size_t dim = 16, n = 20, heads = 2;
  Rng rng(82);
  TestCache cache(COVATTN_INT8, Layout::kTokenMajor, n, heads, dim);
  cache.FillRandom(rng);
  const std::vector<float> q = NormalFloats(rng, heads * dim, 1.0);
  std::vector<uint8_t> scratch = AttentionScratch(dim);
  std::vector<float> out(heads * dim, 3.0f);
  const covattn_int8_scales good = *cache.view().int8_scales;
  auto decode = [&](const covattn_kv_cache& kv) {
    return covattn_decode(&kv, q.data(), heads, nullptr, out.data(), scratch.data(),
                          scratch.size());
  };
  ForEachTarget([&] {
    covattn_kv_cache kv = cache.view();
    CHECK(decode(kv) == COVATTN_OK);
    kv.int8_scales = nullptr;
    CHECK(decode(kv) == COVATTN_ERR_NULL_POINTER);
    covattn_int8_scales s = good;
    kv.int8_scales = &s;
    s.v_scale = nullptr;
    CHECK(decode(kv) == COVATTN_ERR_NULL_POINTER);
    s = good;
    s.k_head_stride = 0;  // two heads share a scale
    CHECK(decode(kv) == COVATTN_ERR_INVALID_STRIDE);
    s = good;
    s.v_token_stride = 1;  // token t of head 1 is token t + 1 of head 0
    CHECK(decode(kv) == COVATTN_ERR_INVALID_STRIDE);
    s = good;
    s.k_scale = reinterpret_cast<const float*>(reinterpret_cast<const char*>(good.k_scale) + 2);
    CHECK(decode(kv) == COVATTN_ERR_MISALIGNED);
    s = good;
    s.k_token_stride = SIZE_MAX / 2;
    CHECK(decode(kv) == COVATTN_ERR_SIZE_OVERFLOW);
    // The output may not overlap the scales.
    s = good;
    std::vector<float> shared(heads * dim + n * heads, 1.0f);
    s.v_scale = shared.data() + 2;
    CHECK(covattn_decode(&kv, q.data(), heads, nullptr, shared.data(), scratch.data(),
                         scratch.size()) == COVATTN_ERR_ALIASING);
    // An empty cache needs no scales; other dtypes ignore the field.
    kv = cache.view();
    kv.n_tokens = 0;
    kv.int8_scales = nullptr;
    CHECK(decode(kv) == COVATTN_FULLY_MASKED);
  });
  TestCache f32(COVATTN_F32, Layout::kTokenMajor, n, heads, dim);
  f32.FillRandom(rng);
  covattn_kv_cache kv = f32.view();
  kv.int8_scales = &good;
  ForEachTarget([&] { CHECK(decode(kv) == COVATTN_OK); });
}

TEST_CASE("a NaN or infinite scale of a visible token fails the call; of a hidden one, not") {
  const size_t dim = 24, n = 200;
  Rng rng(83);
  const std::vector<float> q = NormalFloats(rng, 2 * dim, 1.0);
  std::vector<uint8_t> scratch = AttentionScratch(dim);
  for (bool in_key : {true, false}) {
    for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()}) {
      INFO((in_key ? "K" : "V") << " scale " << bad);
      TestCache cache(COVATTN_INT8, Layout::kHeadMajor, n, 1, dim);
      cache.FillRandom(rng);
      (in_key ? cache.KScale(150, 0) : cache.VScale(150, 0)) = bad;
      (in_key ? cache.KScale(3, 0) : cache.VScale(3, 0)) = bad;  // outside the window below
      ForEachTarget([&] {
        std::vector<float> out(2 * dim);
        CHECK(covattn_decode(&cache.view(), q.data(), 2, nullptr, out.data(), scratch.data(),
                             scratch.size()) == COVATTN_ERR_NONFINITE);
        (in_key ? cache.KScale(150, 0) : cache.VScale(150, 0)) = 1.0f;
        const covattn_attention_options window{0.0f, 100, 2, nullptr};
        CHECK(covattn_decode(&cache.view(), q.data(), 2, &window, out.data(), scratch.data(),
                             scratch.size()) == COVATTN_OK);
        (in_key ? cache.KScale(150, 0) : cache.VScale(150, 0)) = bad;
      });
    }
  }
}

TEST_CASE("the covariance state absorbs int8 blocks, and checks their scales") {
  const size_t dim = 24, n = 300, heads = 2;
  Rng rng(84);
  TestCache int8(COVATTN_INT8, Layout::kHeadMajor, n, heads, dim);
  int8.FillRandom(rng, 2.0, 0.5);
  TestCache f32(COVATTN_F32, Layout::kTokenMajor, n, heads, dim);  // the dequantised values
  for (size_t t = 0; t < n; ++t)
    for (size_t h = 0; h < heads; ++h)
      for (size_t i = 0; i < dim; ++i)
        f32.SetK(t, h, i, int8.K(t, h, i)), f32.SetV(t, h, i, int8.V(t, h, i));
  size_t bytes = 0;
  REQUIRE(covattn_cov_state_scratch_size(dim, &bytes) == COVATTN_OK);
  std::vector<uint8_t> work(bytes);
  auto exported = [&](covattn_cov_state* s, size_t h) {
    std::vector<float> mean_k(dim), mean_v(dim), c_kk(dim * dim), c_vk(dim * dim);
    double weight = 0.0;
    REQUIRE(covattn_cov_state_export(s, h, &weight, mean_k.data(), mean_v.data(), c_kk.data(),
                                     c_vk.data()) == COVATTN_OK);
    std::vector<float> all = mean_k;
    all.insert(all.end(), mean_v.begin(), mean_v.end());
    all.insert(all.end(), c_kk.begin(), c_kk.end());
    all.insert(all.end(), c_vk.begin(), c_vk.end());
    return all;
  };
  ForEachTarget([&] {
    covattn_cov_state *a = nullptr, *b = nullptr;
    REQUIRE(covattn_cov_state_create(heads, dim, 1.0f, &a) == COVATTN_OK);
    REQUIRE(covattn_cov_state_create(heads, dim, 1.0f, &b) == COVATTN_OK);
    CHECK(covattn_cov_state_update(a, &int8.view(), work.data(), work.size()) == COVATTN_OK);
    CHECK(covattn_cov_state_update(b, &f32.view(), work.data(), work.size()) == COVATTN_OK);
    for (size_t h = 0; h < heads; ++h) {
      const std::vector<float> x = exported(a, h), y = exported(b, h);
      double err = 0.0, norm = 0.0;
      for (size_t i = 0; i < x.size(); ++i)
        err += (x[i] - y[i]) * (x[i] - y[i]), norm += y[i] * y[i];
      CHECK(std::sqrt(err / norm) < 1e-5);  // the same values, rounded once more (s * q in f32)
    }
    // Bad scales are refused before anything changes.
    const std::vector<float> before = exported(a, 0);
    covattn_kv_cache kv = int8.view();
    covattn_int8_scales s = *kv.int8_scales;
    kv.int8_scales = &s;
    std::vector<float> bad_scales(n * heads);
    std::copy(s.k_scale, s.k_scale + n * heads, bad_scales.begin());
    for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity(), 0x1p34f}) {
      bad_scales[7] = bad;
      s.k_scale = bad_scales.data();
      CHECK(covattn_cov_state_update(a, &kv, work.data(), work.size()) == COVATTN_ERR_NONFINITE);
    }
    kv.int8_scales = nullptr;
    CHECK(covattn_cov_state_update(a, &kv, work.data(), work.size()) == COVATTN_ERR_NULL_POINTER);
    CHECK(exported(a, 0) == before);
    covattn_cov_state_destroy(a);
    covattn_cov_state_destroy(b);
  });
}

TEST_CASE("covattn_convert refuses int8") {
  // (The bounded cache stores int8 and refuses int8 blocks: cache_int8_test.cc.)
  float f[4] = {1, 2, 3, 4};
  int8_t b[4];
  CHECK(covattn_convert(b, COVATTN_INT8, f, COVATTN_F32, 4) == COVATTN_ERR_UNSUPPORTED_DTYPE);
  CHECK(covattn_convert(f, COVATTN_F32, b, COVATTN_INT8, 4) == COVATTN_ERR_UNSUPPORTED_DTYPE);
}

// The figure MATH.md section 7 quotes: per-vector int8 against f32 attention
// on Gaussian keys and values, d = 128, 4096 tokens, GQA 4:1.
TEST_CASE("int8 attention stays within 2e-2 (rel L2) of f32 attention on Gaussian data") {
  const size_t dim = 128, n = 4096, kv_heads = 2, group = 4, q_heads = kv_heads * group;
  Rng rng(85);
  TestCache f32(COVATTN_F32, Layout::kTokenMajor, n, kv_heads, dim);
  TestCache int8(COVATTN_INT8, Layout::kTokenMajor, n, kv_heads, dim);
  for (size_t t = 0; t < n; ++t)
    for (size_t h = 0; h < kv_heads; ++h)
      for (size_t i = 0; i < dim; ++i) {
        const double k = rng.Normal(), v = rng.Normal();
        f32.SetK(t, h, i, k), f32.SetV(t, h, i, v);
      }
  // The same values, quantised by the library.
  std::vector<float> row(dim);
  for (size_t t = 0; t < n; ++t)
    for (size_t h = 0; h < kv_heads; ++h) {
      for (size_t i = 0; i < dim; ++i) row[i] = float(f32.K(t, h, i));
      for (size_t i = 0; i < dim; ++i) int8.SetK(t, h, i, row[i]);
      for (size_t i = 0; i < dim; ++i) int8.SetV(t, h, i, f32.V(t, h, i));
    }
  const std::vector<float> q = NormalFloats(rng, q_heads * dim, 2.0);
  std::vector<uint8_t> scratch = AttentionScratch(dim);
  std::vector<float> exact(q_heads * dim), approx(q_heads * dim);
  REQUIRE(covattn_decode(&f32.view(), q.data(), q_heads, nullptr, exact.data(), scratch.data(),
                         scratch.size()) == COVATTN_OK);
  ForEachTarget([&] {
    REQUIRE(covattn_decode(&int8.view(), q.data(), q_heads, nullptr, approx.data(), scratch.data(),
                           scratch.size()) == COVATTN_OK);
    double err = 0.0, norm = 0.0;
    for (size_t i = 0; i < exact.size(); ++i) {
      err += (approx[i] - exact[i]) * (approx[i] - exact[i]);
      norm += exact[i] * exact[i];
    }
    const double rel = std::sqrt(err / norm);
    MESSAGE("int8 vs f32 rel L2 " << rel);
    CHECK(rel < 2e-2);
    CHECK(rel > 1e-4);  // it is int8: exactly f32 results would mean the scales were not used
  });
}
