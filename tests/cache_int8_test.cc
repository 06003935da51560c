// The bounded cache storing int8 (include/covattn/cache.h, MATH.md section
// 7): every stored vector quantised as covattn_quantize_int8 does, with its
// scale beside it. Fed token by token, an int8 cache makes every decision an
// f32 cache fed the dequantised tokens makes (both see the same f32 values
// wherever a decision is taken, up to rounding in the retention scores), so
// its state is that cache's and its decode differs by the kernels' rounding; sinks + window is
// exact attention over the dequantised kept tokens; files round-trip bit for bit and a file holding
// an int8 vector the cache could not have stored is refused; int8 blocks are refused, float ones of
// any dtype taken.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cache_test_util.h"
#include "covattn/cache.h"
#include "test_util.h"

using namespace covattn_test;

namespace {

// The dequantised values of an INT8 test cache, as an f32 test cache.
TestCache Dequantised(const TestCache& data) {
  TestCache f32(COVATTN_F32, Layout::kTokenMajor, data.n_tokens(), data.n_heads(), data.dim());
  for (size_t t = 0; t < data.n_tokens(); ++t)
    for (size_t h = 0; h < data.n_heads(); ++h)
      for (size_t i = 0; i < data.dim(); ++i) {
        f32.SetK(t, h, i, data.K(t, h, i));
        f32.SetV(t, h, i, data.V(t, h, i));
      }
  return f32;
}

covattn_cache_config WithSlots(covattn_cache_config c, size_t retained, uint32_t summary) {
  c.n_retained = retained;
  c.summary = summary;
  return c;
}

covattn_cache_info Info(const covattn_cache* cache) {
  covattn_cache_info info;
  REQUIRE(covattn_cache_info_get(cache, &info) == COVATTN_OK);
  return info;
}

}  // namespace

TEST_CASE("an int8 cache is the f32 cache of the dequantised tokens, to the kernels' rounding") {
  const size_t heads = 2, group = 2, n_q = heads * group, n = 260;
  for (size_t dim : {size_t{6}, size_t{40}}) {
    Rng rng(91 + dim);
    TestCache data(COVATTN_INT8, Layout::kTokenMajor, n, heads, dim);
    data.FillRandom(rng, 1.2, 0.3);
    const TestCache dequantised = Dequantised(data);
    const std::vector<float> q = RandomQueries(rng, n_q * dim, 1.0);
    const covattn_cache_config configs[] = {
        Config(heads, dim, 2, 24, 6),  // hybrid + outliers, covariance summary
        WithSlots(Config(heads, dim, 1, 16, 0), 5, COVATTN_SUMMARY_COMPACT),
        WithSlots(Config(heads, dim, 0, 20, 0), 6, COVATTN_SUMMARY_NONE),
        Config(heads, dim, 3, 30, 0, COVATTN_F32, 1.0f, COVATTN_CACHE_DROP_EVICTED),
    };
    for (const covattn_cache_config& base : configs) {
      INFO("d " << dim << " sinks/window/outliers/retained " << base.n_sinks << "/" << base.window
                << "/" << base.n_outliers << "/" << base.n_retained << " summary " << base.summary);
      covattn_cache_config int8_config = base;
      int8_config.dtype = COVATTN_INT8;
      ForEachTarget([&] {
        CachePtr int8 = MakeCache(int8_config), f32 = MakeCache(base);
        std::vector<uint8_t> scratch = Scratch(int8.get(), n_q);
        double worst = 0.0, worst_log_z = 0.0, worst_share = 0.0;
        for (size_t t = 0; t < n; ++t) {
          Append(int8.get(), data, t, 1);  // the f32 values before quantisation
          Append(f32.get(), dequantised, t, 1);
          if (t % 13 != 12) continue;
          const Decoded a = Decode(int8.get(), q, n_q, dim), b = Decode(f32.get(), q, n_q, dim);
          REQUIRE(a.status == COVATTN_OK);
          REQUIRE(b.status == COVATTN_OK);
          for (size_t h = 0; h < n_q; ++h) {
            std::vector<double> ref(b.out.begin() + h * dim, b.out.begin() + (h + 1) * dim);
            worst = std::max(worst, RelativeL2(a.out.data() + h * dim, ref));
            worst_log_z = std::max(worst_log_z, std::fabs(double(a.log_z[h]) - b.log_z[h]));
            worst_share = std::max(worst_share, std::fabs(double(a.share[h]) - b.share[h]));
          }
          // The retained slots' scores: weights recomputed from the stored keys
          // (int8: with their scales), equal to rounding, so the same slots win.
          REQUIRE(covattn_cache_observe(int8.get(), q.data(), n_q, 0.0f, a.log_z.data(),
                                        scratch.data(), scratch.size()) == COVATTN_OK);
          REQUIRE(covattn_cache_observe(f32.get(), q.data(), n_q, 0.0f, b.log_z.data(),
                                        scratch.data(), scratch.size()) == COVATTN_OK);
        }
        const covattn_cache_info ia = Info(int8.get()), ib = Info(f32.get());
        CHECK(ia.n_exact == ib.n_exact);
        CHECK(ia.n_summarized == ib.n_summarized);
        CHECK(ia.n_dropped == ib.n_dropped);
        CHECK(ia.bytes < ib.bytes);
        // The exact parts differ by where the scale is applied (the int8
        // kernel scales each score and weight, the f32 one reads s q
        // rounded): a few f32 roundings per score, ~1e-6 of the row.
        INFO("worst rel L2 " << worst << ", |d log Z| " << worst_log_z << ", |d share| "
                             << worst_share);
        CHECK(worst <= 1e-5);
        CHECK(worst_log_z <= 1e-5);
        CHECK(worst_share <= 1e-5);
      });
    }
  }
}

TEST_CASE("int8 sinks + window is exact attention over the dequantised kept tokens") {
  const size_t heads = 2, group = 3, dim = 21, n = 300, sinks = 3, window = 40;
  Rng rng(92);
  TestCache data(COVATTN_INT8, Layout::kTokenMajor, n, heads, dim);
  data.FillRandom(rng, 2.0, 0.5);
  const std::vector<float> q = RandomQueries(rng, heads * group * dim, 1.0);
  ForEachTarget([&] {
    CachePtr cache = MakeCache(
        Config(heads, dim, sinks, window, 0, COVATTN_INT8, 1.0f, COVATTN_CACHE_DROP_EVICTED));
    AppendAll(cache.get(), data, 5);  // blocks longer than the window too
    const Decoded r = Decode(cache.get(), q, heads * group, dim);
    REQUIRE(r.status == COVATTN_OK);
    for (size_t h = 0; h < heads * group; ++h) {
      const ReferenceRow ref = ReferenceAttention(
          data, q.data() + h * dim, 1.0f / std::sqrt(float(dim)), h / group, n - 1, window, sinks);
      CheckRow(r.out.data() + h * dim, ref, dim);
      CHECK(std::fabs(r.log_z[h] - ref.log_z) <= ref.log_z_bound);
    }
  });
}

TEST_CASE("int8 cache files round-trip, and a vector the cache could not store is refused") {
  const size_t heads = 2, dim = 6, n = 150;  // 6 int8 elements, 2 bytes of padding, the scale
  covattn_cache_config config =
      WithSlots(Config(heads, dim, 2, 8, 3, COVATTN_INT8), 4, COVATTN_SUMMARY_COVARIANCE);
  Rng rng(93);
  TestCache data(COVATTN_INT8, Layout::kTokenMajor, n, heads, dim);
  data.FillRandom(rng);
  const std::vector<float> q = RandomQueries(rng, 2 * heads * dim, 1.0);
  ForEachTarget([&] {
    CachePtr cache = MakeCache(config);
    std::vector<uint8_t> scratch = Scratch(cache.get(), 2 * heads);
    for (size_t t = 0; t < n; t += 7) {
      Append(cache.get(), data, t, std::min<size_t>(7, n - t));
      const Decoded r = Decode(cache.get(), q, 2 * heads, dim);
      REQUIRE(r.status == COVATTN_OK);
      REQUIRE(covattn_cache_observe(cache.get(), q.data(), 2 * heads, 0.0f, r.log_z.data(),
                                    scratch.data(), scratch.size()) == COVATTN_OK);
    }
    const std::vector<uint8_t> file = Serialize(cache.get());
    CHECK(file[8] == 2);  // int8 needs format 2
    CachePtr copy = MakeCache(config);
    REQUIRE(covattn_cache_load(copy.get(), file.data(), file.size()) == COVATTN_OK);
    CHECK(Serialize(copy.get()) == file);
    const Decoded a = Decode(cache.get(), q, 2 * heads, dim),
                  b = Decode(copy.get(), q, 2 * heads, dim);
    CHECK(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)) == 0);

    // The payload starts with the first sink's K vector of head 0: bytes
    // 128 .. 133 its elements, 134 .. 135 padding, 136 .. 139 its scale.
    const size_t at = 128;
    struct Corruption {
      const char* what;
      size_t offset;
      std::vector<uint8_t> bytes;
    };
    const float nan = std::nanf(""), negative = -1.0f, huge = 0x1p34f;
    auto bytes_of = [](float x) {
      std::vector<uint8_t> b(4);
      std::memcpy(b.data(), &x, 4);  // little-endian hosts only, as the other file tests
      return b;
    };
    const Corruption corruptions[] = {
        {"element -128", at + 1, {0x80}},
        {"padding not zero", at + 7, {0x01}},
        {"NaN scale", at + 8, bytes_of(nan)},
        {"negative scale", at + 8, bytes_of(negative)},
        {"scale above 2^33", at + 8, bytes_of(huge)},
    };
    CachePtr target = MakeCache(config);
    Append(target.get(), data, 0, 20);
    const std::vector<uint8_t> before = Serialize(target.get());
    for (const Corruption& c : corruptions) {
      INFO(c.what);
      std::vector<uint8_t> bad = file;
      std::copy(c.bytes.begin(), c.bytes.end(), bad.begin() + c.offset);
      bad = Resealed(bad);
      CHECK(covattn_cache_load(target.get(), bad.data(), bad.size()) == COVATTN_ERR_CORRUPT);
      CHECK(Serialize(target.get()) == before);
    }
  });
}

TEST_CASE("an int8 cache takes blocks of every float dtype and refuses int8 blocks") {
  const size_t dim = 8, n = 30;
  Rng rng(94);
  TestCache int8_block(COVATTN_INT8, Layout::kTokenMajor, n, 1, dim);
  int8_block.FillRandom(rng);
  CachePtr cache = MakeCache(Config(1, dim, 1, 8, 2, COVATTN_INT8));
  std::vector<uint8_t> scratch = Scratch(cache.get());
  CHECK(covattn_cache_append(cache.get(), &int8_block.view(), scratch.data(), scratch.size()) ==
        COVATTN_ERR_UNSUPPORTED_DTYPE);
  CHECK(Info(cache.get()).n_tokens == 0);
  for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_BF16}) {
    TestCache block(dtype, Layout::kHeadMajor, n, 1, dim);
    block.FillRandom(rng);
    CHECK(covattn_cache_append(cache.get(), &block.view(), scratch.data(), scratch.size()) ==
          COVATTN_OK);
  }
  CHECK(Info(cache.get()).n_tokens == 3 * n);
}
