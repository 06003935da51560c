// The bounded cache's files, format 2 (include/covattn/cache.h,
// src/cache_serialize.cc): retained slots with their scores, the compact
// summary and the RoPE layout round-trip bit for bit and the loaded cache
// goes on exactly as the original; configurations covattn 0.1 had still
// write format 1; a file of one configuration never loads into another; a
// file whose checksum holds but whose contents could not have been written
// is refused, and the cache is left as it was.
#include <doctest/doctest.h>

#include "cache_test_util.h"

using namespace covattn_test;

namespace {

covattn_cache_config Format2(size_t heads, size_t dim, size_t sinks, size_t window, size_t retained,
                             uint32_t summary, uint32_t rope) {
  covattn_cache_config c = Config(heads, dim, sinks, window, 0);
  c.n_retained = retained;
  c.summary = summary;
  c.rope = rope;
  return c;
}

// Appends, decodes and observes the tokens [t0, t1) one block at a time.
void Run(covattn_cache* cache, const TestCache& data, size_t t0, size_t t1, uint64_t seed) {
  covattn_cache_info info;
  REQUIRE(covattn_cache_info_get(cache, &info) == COVATTN_OK);
  const size_t n_q = 2 * info.config.n_kv_heads, d = info.config.head_dim;
  std::vector<uint8_t> scratch = Scratch(cache, n_q);
  Rng rng(seed);
  for (size_t t = t0; t < t1; t += 3) {
    Append(cache, data, t, std::min<size_t>(3, t1 - t));
    const std::vector<float> q = RandomQueries(rng, n_q * d, 2.0);
    const Decoded r = Decode(cache, q, n_q, d);
    REQUIRE(r.status == COVATTN_OK);
    REQUIRE(covattn_cache_observe(cache, q.data(), n_q, 0.0f, r.log_z.data(), scratch.data(),
                                  scratch.size()) == COVATTN_OK);
  }
}

void PutU32(std::vector<uint8_t>* file, size_t at, uint32_t x) {
  for (int i = 0; i < 4; ++i) file->at(at + i) = static_cast<uint8_t>(x >> (8 * i));
}
void PutF32(std::vector<uint8_t>* file, size_t at, float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  PutU32(file, at, bits);
}

}  // namespace

TEST_CASE("format 2: bit-exact round trips, and the loaded cache goes on as the original") {
  const covattn_cache_config configs[] = {
      Format2(2, 8, 1, 4, 3, COVATTN_SUMMARY_COMPACT, COVATTN_ROPE_INTERLEAVED),
      Format2(2, 8, 2, 5, 4, COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_HALF_SPLIT),
      Format2(1, 6, 0, 3, 2, COVATTN_SUMMARY_NONE, COVATTN_ROPE_NONE),
      Format2(2, 4, 1, 2, 0, COVATTN_SUMMARY_COMPACT, COVATTN_ROPE_NONE),
      Format2(2, 4, 1, 2, 0, COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_INTERLEAVED),
  };
  Rng rng(7);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 200, 2, 8);
  data.FillRandom(rng, 1.0, 0.3);
  for (const covattn_cache_config& base : configs) {
    for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_INT8}) {
      covattn_cache_config config = base;
      config.dtype = dtype;
      config.n_outliers = dtype != COVATTN_F32 && config.summary != COVATTN_SUMMARY_NONE ? 2 : 0;
      INFO("summary " << config.summary << " rope " << config.rope << " retained "
                      << config.n_retained << " dtype " << dtype);
      TestCache mine(COVATTN_F32, Layout::kTokenMajor, 200, config.n_kv_heads, config.head_dim);
      for (size_t t = 0; t < 200; ++t)
        for (size_t h = 0; h < config.n_kv_heads; ++h)
          for (size_t i = 0; i < config.head_dim; ++i) {
            mine.SetK(t, h, i, data.K(t, h, i));
            mine.SetV(t, h, i, data.V(t, h, i));
          }
      ForEachTarget([&] {
        CachePtr source = MakeCache(config);
        Run(source.get(), mine, 0, 120, 1);
        const std::vector<uint8_t> file = Serialize(source.get());
        CHECK(file[8] == 2);  // the format
        CachePtr copy = MakeCache(config);
        REQUIRE(covattn_cache_load(copy.get(), file.data(), file.size()) == COVATTN_OK);
        CHECK(Serialize(copy.get()) == file);
        // Scores, slots and summary came along: the same future.
        Run(source.get(), mine, 120, 200, 2);
        Run(copy.get(), mine, 120, 200, 2);
        CHECK(Serialize(copy.get()) == Serialize(source.get()));
      });
    }
  }
}

TEST_CASE("configurations of covattn 0.1 write format 1; files never cross configurations") {
  Rng rng(8);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 60, 2, 8);
  data.FillRandom(rng);
  CachePtr old_kind = MakeCache(Config(2, 8, 1, 4, 2));
  Append(old_kind.get(), data, 0, 60);
  const std::vector<uint8_t> v1 = Serialize(old_kind.get());
  CHECK(v1[8] == 1);
  for (size_t i = 104; i < 128; ++i) CHECK(v1[i] == 0);
  // A format-1 file loads into the same configuration whatever its
  // (meaningless) retention settings, not into one with retained slots,
  // RoPE or a compact summary.
  covattn_cache_config same = Config(2, 8, 1, 4, 2);
  same.retention = COVATTN_RETENTION_TOVA;
  CachePtr ok = MakeCache(same);
  CHECK(covattn_cache_load(ok.get(), v1.data(), v1.size()) == COVATTN_OK);
  const covattn_cache_config others[] = {
      Format2(2, 8, 1, 4, 1, COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_NONE),
      Format2(2, 8, 1, 4, 0, COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_INTERLEAVED),
      Format2(2, 8, 1, 4, 0, COVATTN_SUMMARY_COMPACT, COVATTN_ROPE_NONE),
  };
  for (covattn_cache_config other : others) {
    other.n_outliers = 2;
    CachePtr target = MakeCache(other);
    const std::vector<uint8_t> before = Serialize(target.get());
    CHECK(covattn_cache_load(target.get(), v1.data(), v1.size()) == COVATTN_ERR_SHAPE_MISMATCH);
    CHECK(Serialize(target.get()) == before);
  }
  // A format-2 file and a configuration that differs in one format-2 field.
  covattn_cache_config config = Format2(2, 8, 1, 4, 3, COVATTN_SUMMARY_COMPACT, 1);
  CachePtr source = MakeCache(config);
  Run(source.get(), data, 0, 60, 3);
  const std::vector<uint8_t> v2 = Serialize(source.get());
  covattn_cache_config changed[5] = {config, config, config, config, config};
  changed[0].n_retained = 2;
  changed[1].retention = COVATTN_RETENTION_H2O;
  changed[2].retention_decay = 0.8f;
  changed[3].summary = COVATTN_SUMMARY_COVARIANCE;
  changed[4].rope = COVATTN_ROPE_HALF_SPLIT;
  for (const covattn_cache_config& c : changed) {
    CachePtr target = MakeCache(c);
    CHECK(covattn_cache_load(target.get(), v2.data(), v2.size()) == COVATTN_ERR_SHAPE_MISMATCH);
  }
}

TEST_CASE("format 2 contents that could not have been written are refused, untouched") {
  // 2 heads, d 4, f32, 1 sink, window 3, no outliers, 2 retained slots, a
  // compact summary: after 40 tokens every region is full, and the payload's
  // layout is fixed.
  const size_t heads = 2, d = 4, row = heads * d * 4;
  const covattn_cache_config config =
      Format2(heads, d, 1, 3, 2, COVATTN_SUMMARY_COMPACT, COVATTN_ROPE_INTERLEAVED);
  Rng rng(9);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 40, heads, d);
  data.FillRandom(rng);
  CachePtr source = MakeCache(config);
  Run(source.get(), data, 0, 40, 4);
  const std::vector<uint8_t> file = Serialize(source.get());
  const size_t retained_counts = 128 + 2 * row + 2 * 3 * row + 4 * heads;
  const size_t head0 = retained_counts + 4 * heads;  // scores, stamps, K, V of 2 residents
  const size_t head_bytes = 2 * (4 + 8 + 2 * d * 4);
  const size_t window_scores = head0 + heads * head_bytes;
  const size_t folds = window_scores + 4 * heads * 3;
  const size_t blob = folds + 16 * heads + 8;
  REQUIRE(file.size() == blob + heads * 8 * (1 + 3 * d) + 8);
  CachePtr target = MakeCache(config);
  Run(target.get(), data, 0, 10, 5);
  const std::vector<uint8_t> before = Serialize(target.get());
  auto refuse = [&](std::vector<uint8_t> bad) {
    bad = Resealed(std::move(bad));
    CHECK(covattn_cache_load(target.get(), bad.data(), bad.size()) == COVATTN_ERR_CORRUPT);
    CHECK(Serialize(target.get()) == before);
  };
  REQUIRE(covattn_cache_load(target.get(), Resealed(file).data(), file.size()) == COVATTN_OK);
  REQUIRE(covattn_cache_load(target.get(), before.data(), before.size()) == COVATTN_OK);
  std::vector<uint8_t> bad = file;
  PutU32(&bad, retained_counts, 3);  // more residents than slots
  refuse(bad);
  for (float score : {-1.0f, std::nanf(""), INFINITY}) {
    bad = file;
    PutF32(&bad, head0, score);
    refuse(bad);
    bad = file;
    PutF32(&bad, window_scores + 4, score);
    refuse(bad);
  }
  for (uint32_t stamp : {0u, 38u, 1000u}) {  // a sink, a window token, a future token
    bad = file;
    PutU32(&bad, head0 + 8, stamp);
    refuse(bad);
  }
  bad = file;
  PutF32(&bad, head0 + 24, std::nanf(""));  // a retained key
  refuse(bad);
  bad = file;
  PutF32(&bad, blob + 4, -1.0f);  // the compact summary's weight (an f64's high half)
  refuse(bad);
  bad = file;
  PutU32(&bad, blob + 8 * (1 + 2 * d) + 4, 0xBFF00000u);  // a negative second moment
  refuse(bad);
}
