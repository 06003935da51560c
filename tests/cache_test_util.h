// Helpers of the bounded cache's tests: caches that free themselves,
// configurations, scratch, appends and decodes with every diagnostic, files.
#ifndef COVATTN_TESTS_CACHE_TEST_UTIL_H_
#define COVATTN_TESTS_CACHE_TEST_UTIL_H_

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "covariance_test_util.h"
#include "covattn/cache.h"
#include "test_util.h"

namespace covattn_test {

struct CacheDeleter {
  void operator()(covattn_cache* c) const { covattn_cache_destroy(c); }
};
using CachePtr = std::unique_ptr<covattn_cache, CacheDeleter>;

inline CachePtr MakeCache(const covattn_cache_config& config) {
  covattn_cache* c = nullptr;
  REQUIRE(covattn_cache_create(&config, &c) == COVATTN_OK);
  return CachePtr(c);
}

inline covattn_cache_config Config(size_t heads, size_t dim, size_t sinks, size_t window,
                                   size_t outliers, uint32_t dtype = COVATTN_F32,
                                   float forgetting = 1.0f, uint32_t flags = 0) {
  return covattn_cache_config{heads, dim, dtype, sinks, window, outliers, forgetting,
                              flags, 0,   0,     0.0f,  0,      0};
}

// Scratch for every call on the cache with up to n_q_heads queries.
inline std::vector<uint8_t> Scratch(const covattn_cache* cache, size_t n_q_heads = 0) {
  covattn_cache_info info;
  REQUIRE(covattn_cache_info_get(cache, &info) == COVATTN_OK);
  size_t bytes = 0;
  const size_t n = n_q_heads != 0 ? n_q_heads : info.config.n_kv_heads;
  REQUIRE(covattn_cache_scratch_size(&info.config, n, &bytes) == COVATTN_OK);
  return std::vector<uint8_t>(bytes);
}

// One append scratch per thread, grown to the largest need seen (streams of
// small appends would otherwise allocate and clear a workspace per call).
inline covattn_status AppendStatus(covattn_cache* cache, const covattn_kv_cache* block) {
  thread_local std::vector<uint8_t> scratch;
  covattn_cache_info info;
  size_t bytes = 0;
  if (covattn_cache_info_get(cache, &info) != COVATTN_OK ||
      covattn_cache_scratch_size(&info.config, info.config.n_kv_heads, &bytes) != COVATTN_OK) {
    FAIL("covattn_cache_info_get or covattn_cache_scratch_size failed");
  }
  if (scratch.size() < bytes) scratch.resize(bytes);
  return covattn_cache_append(cache, block, scratch.data(), scratch.size());
}

// Appends tokens [t0, t0 + n) of a test cache; of an INT8 one, the f32
// values it quantised, which an int8 cache quantises the same way.
inline void Append(covattn_cache* cache, const TestCache& data, size_t t0, size_t n) {
  const covattn_kv_cache block = Slice(data.input_view(), t0, n);
  REQUIRE(AppendStatus(cache, &block) == COVATTN_OK);
}

// Appends all tokens of `data` in blocks of irregular sizes.
inline void AppendAll(covattn_cache* cache, const TestCache& data, uint64_t seed) {
  Rng rng(seed);
  for (size_t t = 0; t < data.n_tokens();) {
    const size_t n = std::min(data.n_tokens() - t, size_t(1 + rng.Uniform(0, 1) * 150));
    Append(cache, data, t, n);
    t += n;
  }
}

struct Decoded {
  covattn_status status;
  std::vector<float> out, share, ess, log_z;
};

inline Decoded Decode(const covattn_cache* cache, const std::vector<float>& q, size_t n_q_heads,
                      size_t dim, float scale = 0.0f) {
  std::vector<uint8_t> scratch = Scratch(cache, n_q_heads);
  Decoded r;
  r.out.assign(n_q_heads * dim, -1.0f);
  r.share.assign(n_q_heads, -1.0f), r.ess.assign(n_q_heads, -1.0f), r.log_z.assign(n_q_heads, 0);
  const covattn_cache_diagnostics diag{r.share.data(), r.ess.data(), r.log_z.data()};
  r.status = covattn_cache_decode(cache, q.data(), n_q_heads, scale, r.out.data(), &diag,
                                  scratch.data(), scratch.size());
  return r;
}

inline std::vector<float> RandomQueries(Rng& rng, size_t n, double std_dev) {
  std::vector<float> q(n);
  for (float& x : q) x = static_cast<float>(std_dev * rng.Normal());
  return q;
}

inline double RelativeL2(const float* got, const std::vector<double>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

inline std::vector<uint8_t> Serialize(const covattn_cache* cache) {
  size_t bytes = 0, written = 0;
  REQUIRE(covattn_cache_serialized_size(cache, &bytes) == COVATTN_OK);
  std::vector<uint8_t> buffer(bytes);
  REQUIRE(covattn_cache_serialize(cache, buffer.data(), buffer.size(), &written) == COVATTN_OK);
  REQUIRE(written == bytes);
  return buffer;
}

// A cache file with its checksum (FNV-1a of every byte before it) made to
// match again, so that a test's change reaches the checks behind it.
inline std::vector<uint8_t> Resealed(std::vector<uint8_t> file) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (size_t i = 0; i + 8 < file.size(); ++i) hash = (hash ^ file[i]) * 0x100000001b3ull;
  for (int i = 0; i < 8; ++i) file[file.size() - 8 + i] = static_cast<uint8_t>(hash >> (8 * i));
  return file;
}

}  // namespace covattn_test

#endif  // COVATTN_TESTS_CACHE_TEST_UTIL_H_
