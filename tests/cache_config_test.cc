// The bounded cache's configuration and memory (include/covattn/cache.h):
// the persistent-size formula of the header against covattn_cache_size, the
// covariance state's formula against covattn_cov_state_size, zero fields
// meaning the defaults, one status and one description per broken budget
// rule, and the caller's scratch: sized once per configuration, shared by
// caches, checked on every call.
#include <doctest/doctest.h>

#include <cstring>
#include <string>

#include "cache_test_util.h"

using namespace covattn_test;

namespace {

size_t R(size_t x) { return (x + 63) / 64 * 64; }

// The formula of covattn_cache_size's comment in include/covattn/cache.h.
size_t HeaderFormula(const covattn_cache_config& c) {
  const size_t H = c.n_kv_heads, d = c.head_dim;
  // v: the bytes of a stored vector; int8 pads to 4 bytes and adds its scale.
  const size_t v =
      c.dtype == COVATTN_INT8 ? (d + 3) / 4 * 4 + 4 : d * (c.dtype == COVATTN_F32 ? 4 : 2);
  const size_t S = c.n_sinks, W = c.window, N = c.n_retained, O = c.n_outliers;
  size_t bytes = 576 + 2 * R(S * H * v) + 2 * R(W * H * v);
  if (N != 0) bytes += 2 * R(N * H * v) + R(4 * N * H) + R(8 * N * H) + R(4 * H) + R(4 * W * H);
  bytes += 2 * R(O * H * v) + R(4 * O * H) + R(4 * H);
  if (O != 0) bytes += R(2 * H * d * d) + R(4 * H * d);
  bytes += R(16 * H);
  const bool none = c.summary == COVATTN_SUMMARY_NONE || (c.flags & COVATTN_CACHE_DROP_EVICTED);
  if (none) return bytes;
  if (c.summary == COVATTN_SUMMARY_COMPACT) return bytes + H * R(8 * (1 + 3 * d));
  return bytes + R(191 + H * (R(8 * (1 + 2 * d)) + R(8 * d * d + 256)));
}

covattn_cache_config Full(size_t heads, size_t dim, uint32_t dtype, size_t sinks, size_t window,
                          size_t outliers, size_t retained, uint32_t summary, uint32_t rope = 0) {
  covattn_cache_config c{};
  c.n_kv_heads = heads, c.head_dim = dim, c.dtype = dtype;
  c.n_sinks = sinks, c.window = window, c.n_outliers = outliers;
  c.n_retained = retained;
  c.summary = summary;
  c.rope = rope;
  return c;
}

}  // namespace

TEST_CASE("covattn_cache_size is the header's formula") {
  const covattn_cache_config configs[] = {
      Full(1, 1, COVATTN_F32, 0, 0, 0, 0, COVATTN_SUMMARY_COVARIANCE),
      Full(2, 64, COVATTN_F32, 4, 60, 0, 0, COVATTN_SUMMARY_COVARIANCE),
      Full(2, 64, COVATTN_F16, 4, 28, 0, 32, COVATTN_SUMMARY_COMPACT, COVATTN_ROPE_INTERLEAVED),
      Full(3, 40, COVATTN_BF16, 1, 7, 5, 3, COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_HALF_SPLIT),
      Full(8, 128, COVATTN_F32, 4, 252, 16, 0, COVATTN_SUMMARY_COVARIANCE),
      Full(1, 9, COVATTN_F16, 2, 3, 0, 5, COVATTN_SUMMARY_NONE),
      Full(4, COVATTN_MAX_HEAD_DIM, COVATTN_F32, 0, 1, 1, 1, COVATTN_SUMMARY_COMPACT),
      Full(2, 16, COVATTN_F32, 0, 10, 0, 0, COVATTN_SUMMARY_NONE),
      Full(3, 42, COVATTN_INT8, 4, 60, 6, 8, COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_INTERLEAVED),
      Full(1, 7, COVATTN_INT8, 1, 5, 0, 0, COVATTN_SUMMARY_NONE),
  };
  for (const covattn_cache_config& c : configs) {
    INFO("H " << c.n_kv_heads << " d " << c.head_dim << " S/W/O/N " << c.n_sinks << "/" << c.window
              << "/" << c.n_outliers << "/" << c.n_retained << " summary " << c.summary);
    size_t bytes = 0;
    REQUIRE(covattn_cache_size(&c, &bytes) == COVATTN_OK);
    CHECK(bytes == HeaderFormula(c));
    // The flag and the summary kind NONE are the same cache.
    if (c.summary == COVATTN_SUMMARY_NONE) {
      covattn_cache_config flagged = c;
      flagged.summary = COVATTN_SUMMARY_COVARIANCE;
      flagged.flags = COVATTN_CACHE_DROP_EVICTED;
      size_t flagged_bytes = 0;
      REQUIRE(covattn_cache_size(&flagged, &flagged_bytes) == COVATTN_OK);
      CHECK(flagged_bytes == bytes);
    }
    CachePtr cache = MakeCache(c);
    covattn_cache_info info;
    REQUIRE(covattn_cache_info_get(cache.get(), &info) == COVATTN_OK);
    CHECK(info.bytes == bytes);
  }
  // The header's worked figures at d = 64, f32: 512 bytes a token and head,
  // 34112 for the covariance summary of a head, 1600 for the compact one.
  size_t base = 0, one_token = 0, covariance = 0, compact = 0;
  covattn_cache_config c = Full(1, 64, COVATTN_F32, 0, 1, 0, 0, COVATTN_SUMMARY_NONE);
  REQUIRE(covattn_cache_size(&c, &base) == COVATTN_OK);
  c.window = 2;
  REQUIRE(covattn_cache_size(&c, &one_token) == COVATTN_OK);
  CHECK(one_token - base == 512);
  c.summary = COVATTN_SUMMARY_COMPACT;
  REQUIRE(covattn_cache_size(&c, &compact) == COVATTN_OK);
  CHECK(compact - one_token == 1600);
  c.summary = COVATTN_SUMMARY_COVARIANCE;
  REQUIRE(covattn_cache_size(&c, &covariance) == COVATTN_OK);
  CHECK(covariance - one_token == R(191 + 34112));
}

TEST_CASE("covattn_cov_state_size is the header's formula and holds no workspace") {
  for (size_t heads : {1, 2, 7}) {
    for (size_t d : {size_t{1}, size_t{8}, size_t{33}, size_t{64}, size_t{COVATTN_MAX_HEAD_DIM}}) {
      size_t bytes = 0, scratch = 0;
      REQUIRE(covattn_cov_state_size(heads, d, &bytes) == COVATTN_OK);
      CHECK(bytes == 191 + heads * (R(8 * (1 + 2 * d)) + R(8 * d * d + 256)));
      REQUIRE(covattn_cov_state_scratch_size(d, &scratch) == COVATTN_OK);
      CHECK(scratch > 0);
    }
  }
  size_t bytes = 0;
  CHECK(covattn_cov_state_scratch_size(0, &bytes) == COVATTN_ERR_INVALID_HEAD_DIM);
  CHECK(covattn_cov_state_scratch_size(8, nullptr) == COVATTN_ERR_NULL_POINTER);
}

TEST_CASE("zero fields mean the defaults") {
  covattn_cache_config zero{};
  zero.n_kv_heads = 2;
  zero.head_dim = 8;
  zero.dtype = COVATTN_F32;
  CHECK(covattn_cache_config_error(&zero) == nullptr);
  CachePtr cache = MakeCache(zero);
  covattn_cache_info info;
  REQUIRE(covattn_cache_info_get(cache.get(), &info) == COVATTN_OK);
  CHECK(info.config.forgetting == 1.0f);
  CHECK(info.config.retention_decay == 0.9f);
  CHECK(info.config.summary == COVATTN_SUMMARY_COVARIANCE);
  CHECK(info.config.rope == COVATTN_ROPE_NONE);
  CHECK(info.config.flags == 0);
  // The pure covariance readout: a zero config and forgetting 1 behave alike.
  covattn_cache_config explicit_one = zero;
  explicit_one.forgetting = 1.0f;
  explicit_one.retention_decay = 0.9f;
  CachePtr other = MakeCache(explicit_one);
  Rng rng(4);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 50, 2, 8);
  data.FillRandom(rng);
  Append(cache.get(), data, 0, 50);
  Append(other.get(), data, 0, 50);
  CHECK(Serialize(cache.get()) == Serialize(other.get()));
  // The flag and the summary kind agree in what info reports.
  covattn_cache_config dropped = zero;
  dropped.window = 4;
  dropped.flags = COVATTN_CACHE_DROP_EVICTED;
  CachePtr flagged = MakeCache(dropped);
  REQUIRE(covattn_cache_info_get(flagged.get(), &info) == COVATTN_OK);
  CHECK(info.config.summary == COVATTN_SUMMARY_NONE);
  dropped.flags = 0;
  dropped.summary = COVATTN_SUMMARY_NONE;
  CachePtr by_kind = MakeCache(dropped);
  REQUIRE(covattn_cache_info_get(by_kind.get(), &info) == COVATTN_OK);
  CHECK(info.config.flags == COVATTN_CACHE_DROP_EVICTED);
  // The reported config makes the same cache.
  CachePtr again = MakeCache(info.config);
  covattn_cache_info again_info;
  REQUIRE(covattn_cache_info_get(again.get(), &again_info) == COVATTN_OK);
  const covattn_cache_config& a = again_info.config;
  const covattn_cache_config& b = info.config;
  CHECK((a.n_kv_heads == b.n_kv_heads && a.head_dim == b.head_dim && a.dtype == b.dtype &&
         a.n_sinks == b.n_sinks && a.window == b.window && a.n_outliers == b.n_outliers &&
         a.forgetting == b.forgetting && a.flags == b.flags && a.n_retained == b.n_retained &&
         a.retention == b.retention && a.retention_decay == b.retention_decay &&
         a.summary == b.summary && a.rope == b.rope));
}

TEST_CASE("each broken budget rule has its status and a description") {
  struct Case {
    covattn_cache_config config;
    covattn_status status;
    const char* words;  // a part of the description
  };
  covattn_cache_config base = Config(2, 16, 1, 4, 2);
  auto with = [&](auto change) {
    covattn_cache_config c = base;
    change(c);
    return c;
  };
  const Case cases[] = {
      {with([](auto& c) { c.dtype = 7; }), COVATTN_ERR_UNSUPPORTED_DTYPE, "dtype"},
      {with([](auto& c) { c.head_dim = 0; }), COVATTN_ERR_INVALID_HEAD_DIM, "head_dim"},
      {with([](auto& c) { c.head_dim = COVATTN_MAX_HEAD_DIM + 1; }), COVATTN_ERR_INVALID_HEAD_DIM,
       "head_dim"},
      {with([](auto& c) { c.n_kv_heads = 0; }), COVATTN_ERR_INVALID_HEAD_COUNT, "n_kv_heads"},
      {with([](auto& c) { c.rope = 3; }), COVATTN_ERR_INVALID_BUDGET, "rope"},
      {with([](auto& c) { c.head_dim = 15, c.rope = COVATTN_ROPE_INTERLEAVED; }),
       COVATTN_ERR_INVALID_HEAD_DIM, "even"},
      {with([](auto& c) { c.forgetting = 1.5f; }), COVATTN_ERR_INVALID_FORGETTING, "forgetting"},
      {with([](auto& c) { c.forgetting = -1.0f; }), COVATTN_ERR_INVALID_FORGETTING, "forgetting"},
      {with([](auto& c) { c.retention_decay = 2.0f; }), COVATTN_ERR_INVALID_FORGETTING,
       "retention_decay"},
      {with([](auto& c) { c.flags = 0x80; }), COVATTN_ERR_INVALID_BUDGET, "flags"},
      {with([](auto& c) { c.summary = 3; }), COVATTN_ERR_INVALID_BUDGET, "summary"},
      {with([](auto& c) { c.retention = 3; }), COVATTN_ERR_INVALID_BUDGET, "retention"},
      {with([](auto& c) { c.flags = COVATTN_CACHE_DROP_EVICTED, c.summary = 1; }),
       COVATTN_ERR_INVALID_BUDGET, "compact"},
      {with([](auto& c) { c.flags = COVATTN_CACHE_DROP_EVICTED; }), COVATTN_ERR_INVALID_BUDGET,
       "outlier"},
      {with([](auto& c) {
         c.summary = COVATTN_SUMMARY_NONE, c.n_outliers = 0, c.n_sinks = 0, c.window = 0;
       }),
       COVATTN_ERR_INVALID_BUDGET, "exact slots"},
      {with([](auto& c) { c.n_sinks = SIZE_MAX / 4; }), COVATTN_ERR_SIZE_OVERFLOW, "size_t"},
  };
  for (const Case& k : cases) {
    INFO("expected " << k.status << " (" << k.words << ")");
    covattn_cache* cache = nullptr;
    size_t bytes = 0;
    CHECK(covattn_cache_create(&k.config, &cache) == k.status);
    CHECK(covattn_cache_size(&k.config, &bytes) == k.status);
    CHECK(covattn_cache_scratch_size(&k.config, 2, &bytes) == k.status);
    const char* error = covattn_cache_config_error(&k.config);
    REQUIRE(error != nullptr);
    CHECK(std::string(error).find(k.words) != std::string::npos);
  }
  CHECK(covattn_cache_config_error(&base) == nullptr);
  CHECK(covattn_cache_config_error(nullptr) != nullptr);
  // Forgetting means nothing without a summary: any value is accepted.
  covattn_cache_config window_only = base;
  window_only.n_outliers = 0;
  window_only.summary = COVATTN_SUMMARY_NONE;
  window_only.forgetting = 7.0f;
  CHECK(covattn_cache_config_error(&window_only) == nullptr);
}

TEST_CASE("one scratch serves every cache of a configuration; bad scratch changes nothing") {
  const size_t heads = 2, dim = 16, group = 2, n_q = heads * group;
  covattn_cache_config config = Full(heads, dim, COVATTN_F16, 2, 8, 3, 4,
                                     COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_INTERLEAVED);
  size_t bytes = 0, small = 0;
  REQUIRE(covattn_cache_scratch_size(&config, n_q, &bytes) == COVATTN_OK);
  REQUIRE(covattn_cache_scratch_size(&config, heads, &small) == COVATTN_OK);
  CHECK(small <= bytes);
  std::vector<uint8_t> scratch(bytes);
  Rng rng(5);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 200, heads, dim);
  data.FillRandom(rng);
  const std::vector<float> q = RandomQueries(rng, n_q * dim, 1.0);
  ForEachTarget([&] {
    CachePtr a = MakeCache(config), b = MakeCache(config);
    for (size_t t = 0; t < 200; t += 25) {
      const covattn_kv_cache block = Slice(data.view(), t, 25);
      REQUIRE(covattn_cache_append(a.get(), &block, scratch.data(), scratch.size()) == COVATTN_OK);
      REQUIRE(covattn_cache_append(b.get(), &block, scratch.data(), scratch.size()) == COVATTN_OK);
    }
    CHECK(Serialize(a.get()) == Serialize(b.get()));
    std::vector<float> out(n_q * dim), log_z(n_q);
    const covattn_cache_diagnostics diag{nullptr, nullptr, log_z.data()};
    REQUIRE(covattn_cache_decode(a.get(), q.data(), n_q, 0.0f, out.data(), &diag, scratch.data(),
                                 scratch.size()) == COVATTN_OK);
    REQUIRE(covattn_cache_observe(a.get(), q.data(), n_q, 0.0f, log_z.data(), scratch.data(),
                                  scratch.size()) == COVATTN_OK);
    // Too small, null, overlapping the cache or the block: refused, nothing changed.
    const std::vector<uint8_t> before = Serialize(b.get());
    const covattn_kv_cache block = Slice(data.view(), 0, 10);
    CHECK(covattn_cache_append(b.get(), &block, nullptr, scratch.size()) ==
          COVATTN_ERR_SCRATCH_TOO_SMALL);
    CHECK(covattn_cache_append(b.get(), &block, scratch.data(), small / 4) ==
          COVATTN_ERR_SCRATCH_TOO_SMALL);
    void* block_k = const_cast<void*>(block.k);
    CHECK(covattn_cache_append(b.get(), &block, block_k, scratch.size()) == COVATTN_ERR_ALIASING);
    CHECK(covattn_cache_decode(b.get(), q.data(), n_q, 0.0f, out.data(), nullptr, scratch.data(),
                               16) == COVATTN_ERR_SCRATCH_TOO_SMALL);
    CHECK(covattn_cache_observe(b.get(), q.data(), n_q, 0.0f, log_z.data(), nullptr, 0) ==
          COVATTN_ERR_SCRATCH_TOO_SMALL);
    CHECK(Serialize(b.get()) == before);
  });
}
