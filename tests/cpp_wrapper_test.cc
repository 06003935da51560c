// The header-only C++ wrapper: the same results as the C calls, owning
// objects, and statuses turned into covattn::Error.
#include <doctest/doctest.h>

#include "covattn/covattn.hpp"
#include "test_util.h"

using namespace covattn_test;

TEST_CASE("the wrapper computes what the C API computes and throws the C API's statuses") {
  const size_t dim = 32, heads = 2, group = 2, n = 300;
  Rng rng(1);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, n, heads, dim);
  data.FillRandom(rng);
  std::vector<float> q(heads * group * dim);
  for (float& x : q) x = static_cast<float>(rng.Normal());

  covattn::Attention attention;
  std::vector<float> out(q.size()), expected(q.size());
  CHECK(attention.Decode(data.view(), q.data(), heads * group, out.data()) == COVATTN_OK);
  size_t bytes = 0;
  REQUIRE(covattn_attention_scratch_size(dim, &bytes) == COVATTN_OK);
  std::vector<uint8_t> scratch(bytes);
  REQUIRE(covattn_decode(&data.view(), q.data(), heads * group, nullptr, expected.data(),
                         scratch.data(), scratch.size()) == COVATTN_OK);
  CHECK(out == expected);
  try {
    attention.Decode(data.view(), q.data(), 3, out.data());
    FAIL("no exception");
  } catch (const covattn::Error& e) {
    CHECK(e.status() == COVATTN_ERR_HEAD_MISMATCH);
    CHECK(std::string(e.what()).find("multiple") != std::string::npos);
  }

  covattn::Scratch work;
  covattn::CovState state(heads, dim);
  state.Update(data.view(), work);
  CHECK(state.Info().n_tokens == n);
  state.Readout(q.data(), heads * group, out.data());
  covattn::CovState copy(heads, dim);
  copy.Load(state.Serialize());
  copy.Readout(q.data(), heads * group, expected.data());
  CHECK(out == expected);
  CHECK_THROWS_AS(covattn::CovState(heads, dim, 2.0f), covattn::Error);

  covattn::Cache cache(
      covattn_cache_config{heads, dim, COVATTN_F16, 2, 16, 4, 1.0f, 0, 0, 0, 0.0f, 0, 0});
  cache.Append(data.view(), work);
  CHECK(cache.Info().n_tokens == n);
  const covattn::Cache& reader = cache;
  CHECK(reader.Decode(q.data(), heads * group, 0.0f, out.data(), nullptr, work) == COVATTN_OK);
  for (float x : out) CHECK(std::isfinite(x));
  covattn::Cache loaded(cache.Info().config);
  loaded.Load(cache.Serialize());
  CHECK(loaded.Decode(q.data(), heads * group, 0.0f, expected.data(), nullptr, work) == COVATTN_OK);
  CHECK(out == expected);
  // The same call through the C API, in the same argument order.
  size_t bytes_c = 0;
  const covattn_cache_config config = cache.Info().config;
  REQUIRE(covattn_cache_scratch_size(&config, heads * group, &bytes_c) == COVATTN_OK);
  std::vector<uint8_t> scratch_c(bytes_c);
  REQUIRE(covattn_cache_decode(cache.get(), q.data(), heads * group, 0.0f, expected.data(), nullptr,
                               scratch_c.data(), scratch_c.size()) == COVATTN_OK);
  CHECK(out == expected);
}
