// covattn_cache_prefill (include/covattn/cache.h) on every target, f32, f16,
// bf16 and int8 (where the block is read as given), GQA 4:1 and MHA, an even and an odd head_dim: a
// prompt into an empty cache is covattn_prefill; while the block evicts nothing it is append +
// decode token by token; with the summary, the slots and the ring in use it is the exact merge of
// decode on the cache before the block and a double-precision softmax over the causal block; the
// cache ends as append leaves it; every status, and a failed call changes nothing.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "cache_test_util.h"
#include "covariance_test_util.h"
#include "covattn/cache.h"
#include "covattn/covattn.hpp"
#include "test_util.h"

using namespace covattn_test;

namespace {

// Queries of n positions, [t][h][dim], padded (odd strides) or contiguous.
struct Queries {
  size_t n, heads, dim, token_stride, head_stride;
  std::vector<float> data;
  Queries(Rng& rng, size_t n_, size_t heads_, size_t dim_, bool padded, double std_dev)
      : n(n_), heads(heads_), dim(dim_) {
    head_stride = padded ? dim + 3 : dim;
    token_stride = heads * head_stride + (padded ? 5 : 0);
    data.assign(std::max<size_t>(1, n * token_stride), std::nanf(""));  // NaN in the gaps
    for (size_t t = 0; t < n; ++t)
      for (size_t h = 0; h < heads; ++h)
        for (size_t i = 0; i < dim; ++i)
          data[t * token_stride + h * head_stride + i] = float(std_dev * rng.Normal());
  }
  const float* At(size_t t, size_t h) const {
    return data.data() + t * token_stride + h * head_stride;
  }
  // Position t's queries, [heads][dim] contiguous (what decode takes).
  std::vector<float> Position(size_t t) const {
    std::vector<float> q(heads * dim);
    for (size_t h = 0; h < heads; ++h) std::copy(At(t, h), At(t, h) + dim, q.data() + h * dim);
    return q;
  }
  covattn_queries view() const {
    return covattn_queries{data.data(), n, heads, token_stride, head_stride};
  }
};

// Outputs laid out like padded queries, filled with a sentinel.
struct Outputs {
  size_t heads, dim, token_stride, head_stride;
  std::vector<float> data, log_z;
  Outputs(size_t n, size_t heads_, size_t dim_) : heads(heads_), dim(dim_) {
    head_stride = dim + 1;
    token_stride = heads * head_stride + 2;
    data.assign(std::max<size_t>(1, n * token_stride), 7.0f);
    log_z.assign(std::max<size_t>(1, n * heads), 7.0f);
  }
  const float* At(size_t t, size_t h) const {
    return data.data() + t * token_stride + h * head_stride;
  }
  float LogZ(size_t t, size_t h) const { return log_z[t * heads + h]; }
  covattn_outputs view() {
    return covattn_outputs{data.data(), token_stride, head_stride, log_z.data()};
  }
};

covattn_status Prefill(covattn_cache* cache, const covattn_kv_cache& block, const Queries& q,
                       Outputs* out, float scale = 0.0f) {
  std::vector<uint8_t> scratch = Scratch(cache, q.heads);
  const covattn_queries qv = q.view();
  const covattn_outputs ov = out->view();
  return covattn_cache_prefill(cache, &block, &qv, scale, &ov, scratch.data(), scratch.size());
}

// A cache of the same configuration holding the same state.
CachePtr Copy(const covattn_cache* cache) {
  covattn_cache_info info;
  REQUIRE(covattn_cache_info_get(cache, &info) == COVATTN_OK);
  CachePtr copy = MakeCache(info.config);
  const std::vector<uint8_t> bytes = Serialize(cache);
  REQUIRE(covattn_cache_load(copy.get(), bytes.data(), bytes.size()) == COVATTN_OK);
  return copy;
}

covattn_cache_config FullConfig(size_t heads, size_t dim, uint32_t dtype, size_t sinks,
                                size_t window, size_t outliers, size_t retained, uint32_t summary,
                                uint32_t rope) {
  covattn_cache_config c = Config(heads, dim, sinks, window, outliers, dtype);
  c.n_retained = retained;
  c.summary = summary;
  c.rope = rope;
  return c;
}

struct Shape {
  size_t heads, group, dim;
};
// GQA 4:1 with an even head_dim, MHA with an odd one.
constexpr Shape kShapes[] = {{2, 4, 64}, {3, 1, 33}};

// The f32 values an INT8 test cache quantised, as an f32 test cache: what an
// int8 bounded cache's prefill reads of a block (the block as given).
TestCache InputsOf(const TestCache& data) {
  const covattn_kv_cache& in = data.input_view();
  TestCache f32(COVATTN_F32, Layout::kTokenMajor, data.n_tokens(), data.n_heads(), data.dim());
  for (size_t t = 0; t < data.n_tokens(); ++t)
    for (size_t h = 0; h < data.n_heads(); ++h)
      for (size_t i = 0; i < data.dim(); ++i) {
        const size_t at = t * in.k_token_stride + h * in.k_head_stride + i;
        f32.SetK(t, h, i, static_cast<const float*>(in.k)[at]);
        f32.SetV(t, h, i, static_cast<const float*>(in.v)[at]);
      }
  return f32;
}

double RowRelativeL2(const float* got, const double* ref, size_t dim) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < dim; ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST_CASE("a prompt into an empty cache is covattn_prefill over the prompt") {
  const size_t n = 150;
  // int8: the cache quantises what it stores; the prompt is read as given (f32).
  for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_BF16, COVATTN_INT8}) {
    for (const Shape& shape : kShapes) {
      INFO("dtype " << DtypeName(dtype) << ", " << shape.heads << " KV heads x " << shape.group
                    << ", d " << shape.dim);
      const size_t n_q = shape.heads * shape.group, d = shape.dim;
      Rng rng(11 + d);
      TestCache data(dtype, d % 2 ? Layout::kHeadMajor : Layout::kPadded, n, shape.heads, d);
      data.FillRandom(rng, 1.0, 0.2);
      const Queries q(rng, n, n_q, d, /*padded=*/d % 2 == 0, 1.0);
      size_t bytes = 0;
      REQUIRE(covattn_attention_scratch_size(d, &bytes) == COVATTN_OK);
      std::vector<uint8_t> attention_scratch(bytes);
      ForEachTarget([&] {
        Outputs expected(n, n_q, d);
        const covattn_queries qv = q.view();
        const covattn_outputs ev = expected.view();
        REQUIRE(covattn_prefill(&data.input_view(), &qv, 0, nullptr, &ev, attention_scratch.data(),
                                attention_scratch.size()) == COVATTN_OK);
        // The window overflows during the block or not; with or without a summary.
        for (const covattn_cache_config& config :
             {Config(shape.heads, d, 4, 40, 8, dtype), Config(shape.heads, d, 0, 200, 0, dtype),
              Config(shape.heads, d, 2, 16, 0, dtype, 1.0f, COVATTN_CACHE_DROP_EVICTED)}) {
          INFO("window " << config.window);
          CachePtr cache = MakeCache(config), appended = MakeCache(config);
          Outputs got(n, n_q, d);
          REQUIRE(Prefill(cache.get(), data.input_view(), q, &got) == COVATTN_OK);
          double worst = 0.0, worst_log_z = 0.0;
          for (size_t t = 0; t < n; ++t) {
            for (size_t h = 0; h < n_q; ++h) {
              std::vector<double> ref(expected.At(t, h), expected.At(t, h) + d);
              worst = std::max(worst, RowRelativeL2(got.At(t, h), ref.data(), d));
              const double lz = expected.LogZ(t, h);
              worst_log_z =
                  std::max(worst_log_z, std::fabs(got.LogZ(t, h) - lz) / (1 + std::fabs(lz)));
            }
          }
          CHECK(worst <= 1e-6);
          CHECK(worst_log_z <= 1e-6);
          Append(appended.get(), data, 0, n);
          CHECK(Serialize(cache.get()) == Serialize(appended.get()));
        }
      });
    }
  }
}

TEST_CASE("while the block evicts nothing, prefill is append and decode token by token") {
  const size_t before = 30, n = 70;  // 100 tokens: 4 sinks + 96 window
  // Not int8: decode sees the stored (quantised) tokens, prefill the f32 block.
  for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_BF16}) {
    for (const Shape& shape : kShapes) {
      INFO("dtype " << DtypeName(dtype) << ", " << shape.heads << " KV heads x " << shape.group
                    << ", d " << shape.dim);
      const size_t n_q = shape.heads * shape.group, d = shape.dim;
      const float scale = 0.8f / std::sqrt(float(d));
      Rng rng(21 + d);
      TestCache data(dtype, Layout::kTokenMajor, before + n, shape.heads, d);
      data.FillRandom(rng, 1.3, 0.3);
      const Queries q(rng, n, n_q, d, /*padded=*/d % 2 == 1, 1.0);
      ForEachTarget([&] {
        const covattn_cache_config config = FullConfig(
            shape.heads, d, dtype, 4, 96, 8, 4, COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_NONE);
        CachePtr cache = MakeCache(config), stepped = MakeCache(config);
        Append(cache.get(), data, 0, before);
        Append(stepped.get(), data, 0, before);
        Outputs got(n, n_q, d);
        REQUIRE(Prefill(cache.get(), Slice(data.view(), before, n), q, &got, scale) == COVATTN_OK);
        for (size_t t = 0; t < n; ++t) {
          Append(stepped.get(), data, before + t, 1);
          const Decoded r = Decode(stepped.get(), q.Position(t), n_q, d, scale);
          REQUIRE(r.status == COVATTN_OK);
          for (size_t h = 0; h < n_q; ++h) {
            INFO("position " << t << ", head " << h);
            // Both are exact attention over tokens 0 .. before + t: each within
            // the f32 bound of the double reference, so within twice of each other.
            const ReferenceRow ref =
                ReferenceAttention(data, q.At(t, h), scale, h / shape.group, before + t, 0, 0);
            CheckRow(got.At(t, h), ref, d);
            for (size_t i = 0; i < d; ++i) {
              CHECK(std::fabs(got.At(t, h)[i] - r.out[h * d + i]) <= 2 * ref.bound[i]);
            }
            CHECK(std::fabs(got.LogZ(t, h) - ref.log_z) <= ref.log_z_bound);
            CHECK(std::fabs(got.LogZ(t, h) - r.log_z[h]) <= 2 * ref.log_z_bound);
          }
        }
        CHECK(Serialize(cache.get()) == Serialize(stepped.get()));
      });
    }
  }
}

// Decode of the cache before the block (out, log Z) merged exactly with a
// double-precision softmax over the block's tokens 0 .. t (MATH.md section 4).
TEST_CASE("with summary, slots and ring in use, prefill is decode merged with the causal block") {
  const size_t before = 300, n = 90;  // the block is longer than the window
  for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_BF16, COVATTN_INT8}) {
    for (const Shape& shape : kShapes) {
      for (uint32_t summary : {COVATTN_SUMMARY_COVARIANCE, COVATTN_SUMMARY_COMPACT}) {
        INFO("dtype " << DtypeName(dtype) << ", " << shape.heads << " KV heads x " << shape.group
                      << ", d " << shape.dim << ", summary " << summary);
        const size_t n_q = shape.heads * shape.group, d = shape.dim;
        Rng rng(31 + d + summary);
        TestCache data(dtype, Layout::kHeadMajor, before + n, shape.heads, d);
        data.FillRandom(rng, 1.0, 0.4);
        // The block as prefill reads it (int8: the f32 values before quantisation).
        std::optional<TestCache> inputs;
        if (dtype == COVATTN_INT8) inputs.emplace(InputsOf(data));
        const TestCache& exact_block = inputs ? *inputs : data;
        const Queries q(rng, n, n_q, d, /*padded=*/true, 1.0);
        const std::vector<float> probe = RandomQueries(rng, n_q * d, 1.0);
        const float scale = 1.0f / std::sqrt(float(d));
        const uint32_t rope = d % 2 == 0 ? COVATTN_ROPE_INTERLEAVED : COVATTN_ROPE_NONE;
        ForEachTarget([&] {
          const covattn_cache_config config =
              FullConfig(shape.heads, d, dtype, 4, 24, 6, 6, summary, rope);
          CachePtr cache = MakeCache(config);
          for (size_t t = 0; t < before; t += 37) {
            Append(cache.get(), data, t, std::min<size_t>(37, before - t));
            // Observed decodes give the retained slots scores.
            const Decoded r = Decode(cache.get(), probe, n_q, d);
            REQUIRE(r.status == COVATTN_OK);
            std::vector<uint8_t> scratch = Scratch(cache.get(), n_q);
            REQUIRE(covattn_cache_observe(cache.get(), probe.data(), n_q, 0.0f, r.log_z.data(),
                                          scratch.data(), scratch.size()) == COVATTN_OK);
          }
          covattn_cache_info info;
          REQUIRE(covattn_cache_info_get(cache.get(), &info) == COVATTN_OK);
          REQUIRE(info.n_summarized > 0);
          CachePtr pre = Copy(cache.get()), appended = Copy(cache.get());
          Outputs got(n, n_q, d);
          REQUIRE(Prefill(cache.get(), Slice(data.input_view(), before, n), q, &got) == COVATTN_OK);
          double worst = 0.0, worst_log_z = 0.0, share_sum = 0.0;
          for (size_t t = 0; t < n; ++t) {
            const Decoded a = Decode(pre.get(), q.Position(t), n_q, d);
            REQUIRE(a.status == COVATTN_OK);
            for (size_t h = 0; h < n_q; ++h) {
              const ReferenceRow b =
                  ReferenceAttention(exact_block, q.At(t, h), scale, h / shape.group, before + t, 0,
                                     0, before, before + t + 1);
              const double m = std::max<double>(a.log_z[h], b.log_z);
              const double w_a = std::exp(a.log_z[h] - m), w_b = std::exp(b.log_z - m);
              std::vector<double> merged(d);
              for (size_t i = 0; i < d; ++i) {
                merged[i] = (w_a * a.out[h * d + i] + w_b * b.out[i]) / (w_a + w_b);
              }
              const double log_z = m + std::log(w_a + w_b);
              worst = std::max(worst, RowRelativeL2(got.At(t, h), merged.data(), d));
              worst_log_z =
                  std::max(worst_log_z, std::fabs(got.LogZ(t, h) - log_z) / (1 + std::fabs(log_z)));
              share_sum += w_a / (w_a + w_b);
            }
          }
          // f32 rounding of sums over a few hundred tokens: ~1e-6; a wrong
          // merge or a missed part is off by far more.
          CHECK(worst <= 1e-5);
          CHECK(worst_log_z <= 1e-5);
          INFO("mean weight of the cache before the block " << share_sum / (n * n_q));
          CHECK(share_sum / (n * n_q) > 0.05);  // both parts matter
          Append(appended.get(), data, before, n);
          CHECK(Serialize(cache.get()) == Serialize(appended.get()));
        });
      }
    }
  }
}

TEST_CASE("every status of prefill, and a failed call changes nothing") {
  const size_t heads = 2, group = 2, n_q = heads * group, d = 16, n = 20;
  Rng rng(41);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 60 + n, heads, d);
  data.FillRandom(rng);
  const covattn_cache_config config =
      FullConfig(heads, d, COVATTN_F16, 2, 8, 3, 2, COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_NONE);
  size_t cache_bytes = 0, scratch_bytes = 0;
  REQUIRE(covattn_cache_size(&config, &cache_bytes) == COVATTN_OK);
  REQUIRE(covattn_cache_scratch_size(&config, n_q, &scratch_bytes) == COVATTN_OK);
  std::vector<uint8_t> memory(cache_bytes);
  const covattn_kv_cache good = Slice(data.view(), 60, n);
  const Queries q(rng, n, n_q, d, /*padded=*/false, 1.0);
  ForEachTarget([&] {
    covattn_cache* cache = nullptr;
    REQUIRE(covattn_cache_init(memory.data(), memory.size(), &config, &cache) == COVATTN_OK);
    Append(cache, data, 0, 60);
    const std::vector<uint8_t> before = Serialize(cache);
    std::vector<uint8_t> scratch(scratch_bytes);
    Outputs out(n, n_q, d);
    // One call with one fault: its status, and neither cache nor outputs change.
    auto expect = [&](covattn_status want, covattn_cache* c, const covattn_kv_cache* block,
                      const covattn_queries* qv, float scale, const covattn_outputs* ov, void* work,
                      size_t work_bytes) {
      CHECK(covattn_cache_prefill(c, block, qv, scale, ov, work, work_bytes) == want);
      CHECK(Serialize(cache) == before);
      CHECK(std::all_of(out.data.begin(), out.data.end(), [](float x) { return x == 7.0f; }));
      CHECK(std::all_of(out.log_z.begin(), out.log_z.end(), [](float x) { return x == 7.0f; }));
    };
    const covattn_queries qv = q.view();
    const covattn_outputs ov = out.view();
    uint8_t* w = scratch.data();
    const size_t wb = scratch.size();
    expect(COVATTN_ERR_NULL_POINTER, nullptr, &good, &qv, 0.0f, &ov, w, wb);
    expect(COVATTN_ERR_NULL_POINTER, cache, nullptr, &qv, 0.0f, &ov, w, wb);
    expect(COVATTN_ERR_NULL_POINTER, cache, &good, nullptr, 0.0f, &ov, w, wb);
    expect(COVATTN_ERR_NULL_POINTER, cache, &good, &qv, 0.0f, nullptr, w, wb);
    covattn_kv_cache block = good;
    block.dtype = 9;
    expect(COVATTN_ERR_UNSUPPORTED_DTYPE, cache, &block, &qv, 0.0f, &ov, w, wb);
    block = good, block.n_heads = 3;
    expect(COVATTN_ERR_SHAPE_MISMATCH, cache, &block, &qv, 0.0f, &ov, w, wb);
    block = good, block.head_dim = d + 1;
    expect(COVATTN_ERR_SHAPE_MISMATCH, cache, &block, &qv, 0.0f, &ov, w, wb);
    block = good, block.k_head_stride = d - 1;
    expect(COVATTN_ERR_INVALID_STRIDE, cache, &block, &qv, 0.0f, &ov, w, wb);
    block = good, block.n_tokens = n - 1;  // queries for n positions
    expect(COVATTN_ERR_SHAPE_MISMATCH, cache, &block, &qv, 0.0f, &ov, w, wb);
    covattn_queries bad_q = qv;
    bad_q.n_heads = 0;
    expect(COVATTN_ERR_INVALID_HEAD_COUNT, cache, &good, &bad_q, 0.0f, &ov, w, wb);
    bad_q = qv, bad_q.n_heads = 3;
    expect(COVATTN_ERR_HEAD_MISMATCH, cache, &good, &bad_q, 0.0f, &ov, w, wb);
    expect(COVATTN_ERR_INVALID_SCALE, cache, &good, &qv, std::nanf(""), &ov, w, wb);
    expect(COVATTN_ERR_INVALID_SCALE, cache, &good, &qv, INFINITY, &ov, w, wb);
    bad_q = qv, bad_q.head_stride = d - 1;
    expect(COVATTN_ERR_INVALID_STRIDE, cache, &good, &bad_q, 0.0f, &ov, w, wb);
    bad_q = qv,
    bad_q.data =
        reinterpret_cast<const float*>(reinterpret_cast<const uint8_t*>(q.data.data()) + 1);
    expect(COVATTN_ERR_MISALIGNED, cache, &good, &bad_q, 0.0f, &ov, w, wb);
    covattn_outputs bad_out = ov;
    bad_out.token_stride = 1;
    expect(COVATTN_ERR_INVALID_STRIDE, cache, &good, &qv, 0.0f, &bad_out, w, wb);
    expect(COVATTN_ERR_SCRATCH_TOO_SMALL, cache, &good, &qv, 0.0f, &ov, nullptr, wb);
    expect(COVATTN_ERR_SCRATCH_TOO_SMALL, cache, &good, &qv, 0.0f, &ov, w, wb - 1);
    // Aliasing: outputs over the queries, the block or the cache; outputs,
    // log Z and scratch over each other.
    std::vector<float> shared(std::max(out.data.size(), q.data.size()) + 64, 1.0f);
    covattn_queries shared_q = qv;
    shared_q.data = shared.data();
    bad_out = ov, bad_out.data = shared.data() + 8;
    expect(COVATTN_ERR_ALIASING, cache, &good, &shared_q, 0.0f, &bad_out, w, wb);
    bad_out = ov, bad_out.log_z = out.data.data() + 3;
    expect(COVATTN_ERR_ALIASING, cache, &good, &qv, 0.0f, &bad_out, w, wb);
    std::vector<uint8_t> big(out.data.size() * sizeof(float) + wb + 64);
    bad_out = ov, bad_out.data = reinterpret_cast<float*>(big.data());
    expect(COVATTN_ERR_ALIASING, cache, &good, &qv, 0.0f, &bad_out, big.data() + 64, wb);
    std::vector<float> kv_out(out.data.size() + 64, 1.0f);
    block = good, block.k = kv_out.data();  // K is read, the output written over it
    bad_out = ov, bad_out.data = kv_out.data() + 4;
    expect(COVATTN_ERR_ALIASING, cache, &block, &qv, 0.0f, &bad_out, w, wb);
    bad_out = ov,
    bad_out.data = reinterpret_cast<float*>(memory.data() + 64 * ((cache_bytes / 2) / 64));
    expect(COVATTN_ERR_ALIASING, cache, &good, &qv, 0.0f, &bad_out, w, wb);
    expect(COVATTN_ERR_ALIASING, cache, &good, &qv, 0.0f, &ov, memory.data(), wb);
    // Values: a NaN or an f16 overflow in the block, a query that is not finite.
    TestCache hostile(COVATTN_F32, Layout::kTokenMajor, n, heads, d);
    hostile.FillRandom(rng);
    hostile.SetV(n - 1, 1, d - 1, std::nan(""));
    expect(COVATTN_ERR_NONFINITE, cache, &hostile.view(), &qv, 0.0f, &ov, w, wb);
    hostile.SetV(n - 1, 1, d - 1, 70000.0);  // the cache stores f16
    expect(COVATTN_ERR_NONFINITE, cache, &hostile.view(), &qv, 0.0f, &ov, w, wb);
    Queries bad_values = q;
    bad_values.data[(n - 1) * bad_values.token_stride + 5] = INFINITY;
    const covattn_queries bv = bad_values.view();
    expect(COVATTN_ERR_NONFINITE, cache, &good, &bv, 0.0f, &ov, w, wb);
    // Scores that overflow though every input is finite: refused, cache untouched.
    Queries huge = q;
    for (float& x : huge.data) x = 3e38f;
    const covattn_queries hv = huge.view();
    CHECK(covattn_cache_prefill(cache, &good, &hv, 0.0f, &ov, w, wb) == COVATTN_ERR_NONFINITE);
    CHECK(Serialize(cache) == before);
    // An empty block checks its arguments and does nothing.
    std::fill(out.data.begin(), out.data.end(), 7.0f);
    std::fill(out.log_z.begin(), out.log_z.end(), 7.0f);
    block = good, block.n_tokens = 0;
    covattn_queries none = qv;
    none.n_tokens = 0;
    expect(COVATTN_OK, cache, &block, &none, 0.0f, &ov, w, wb);
    expect(COVATTN_ERR_INVALID_SCALE, cache, &block, &none, std::nanf(""), &ov, w, wb);
    // And the call itself succeeds with the same arguments.
    CHECK(covattn_cache_prefill(cache, &good, &qv, 0.0f, &ov, w, wb) == COVATTN_OK);
    for (float x : out.data) CHECK(std::isfinite(x));
  });
}

TEST_CASE("Cache::Prefill is covattn_cache_prefill in the same argument order") {
  const size_t heads = 2, group = 4, n_q = heads * group, d = 32, n = 50;
  Rng rng(51);
  TestCache data(COVATTN_BF16, Layout::kTokenMajor, 100 + n, heads, d);
  data.FillRandom(rng);
  const Queries q(rng, n, n_q, d, /*padded=*/true, 1.0);
  const covattn_cache_config config = FullConfig(heads, d, COVATTN_BF16, 4, 20, 4, 4,
                                                 COVATTN_SUMMARY_COMPACT, COVATTN_ROPE_HALF_SPLIT);
  ForEachTarget([&] {
    covattn::Cache wrapped(config);
    CachePtr plain = MakeCache(config);
    covattn::Scratch work;
    wrapped.Append(Slice(data.view(), 0, 100), work);
    Append(plain.get(), data, 0, 100);
    Outputs a(n, n_q, d), b(n, n_q, d);
    wrapped.Prefill(Slice(data.view(), 100, n), q.view(), 0.0f, a.view(), work);
    REQUIRE(Prefill(plain.get(), Slice(data.view(), 100, n), q, &b) == COVATTN_OK);
    CHECK(a.data == b.data);
    CHECK(a.log_z == b.log_z);
    CHECK(wrapped.Serialize() == Serialize(plain.get()));
    covattn_queries wrong = q.view();
    wrong.n_heads = 3;
    CHECK_THROWS_AS(wrapped.Prefill(Slice(data.view(), 100, n), wrong, 0.0f, a.view(), work),
                    covattn::Error);
  });
}
