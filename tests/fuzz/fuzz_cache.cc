// Fuzz target for the bounded-memory cache (covattn/cache.h): its file loader
// and the calls that change or read a cache.
//
// The input picks one of three modes:
//  0: load arbitrary bytes into a cache that already holds tokens;
//  1: serialize a valid cache, damage the bytes (truncate, flip bits,
//     overwrite), then load them into a cache of the same configuration;
//  2: a sequence of calls (append hostile blocks in any float dtype and layout,
//     decode with hostile queries, scales and scratch, prefill hostile blocks
//     with hostile strided queries, reset) on caches in exactly sized caller
//     memory.
// Checked: statuses are ones the header allows; a failed call leaves the
// cache exactly as it was (compared through its serialization); a loaded
// cache serializes back to the same bytes; an undamaged file loads; decode
// outputs of a successful call are finite, and the diagnostics are in range;
// a successful prefill leaves the cache as append of its block would.
#include <algorithm>
#include <cmath>
#include <vector>

#include "covattn/cache.h"
#include "fuzz_util.h"

using namespace covattn_fuzz;

namespace {

// A cache in an exactly sized heap block (ASan sees any access past it).
struct OwnedCache {
  Block memory;
  covattn_cache* cache = nullptr;
  bool Create(const covattn_cache_config& config) {
    size_t bytes = 0;
    if (covattn_cache_size(&config, &bytes) != COVATTN_OK) return false;
    if (bytes > (size_t{64} << 20)) return false;
    memory = Block(bytes);
    return covattn_cache_init(memory.data(), bytes, &config, &cache) == COVATTN_OK;
  }
};

std::vector<uint8_t> Serialize(const covattn_cache* cache) {
  size_t bytes = 0;
  FUZZ_CHECK(covattn_cache_serialized_size(cache, &bytes) == COVATTN_OK, "serialized size");
  std::vector<uint8_t> out(bytes);
  size_t written = 0;
  const covattn_status status = covattn_cache_serialize(cache, out.data(), bytes, &written);
  FUZZ_CHECK(status == COVATTN_OK && written == bytes, "serialize: status %d, %zu of %zu bytes",
             status, written, bytes);
  return out;
}

bool OneOf(covattn_status status, std::initializer_list<covattn_status> allowed) {
  return std::find(allowed.begin(), allowed.end(), status) != allowed.end();
}

// Loads `size` bytes (from an exactly sized copy) into `c`; checks the contract.
covattn_status LoadChecked(OwnedCache& c, const covattn_cache_config& config, const uint8_t* data,
                           size_t size) {
  const std::vector<uint8_t> before = Serialize(c.cache);
  Block copy(size);
  if (size) std::memcpy(copy.data(), data, size);
  const covattn_status status = covattn_cache_load(c.cache, copy.data(), size);
  if (status != COVATTN_OK) {
    FUZZ_CHECK(OneOf(status, {COVATTN_ERR_TRUNCATED, COVATTN_ERR_BAD_MAGIC, COVATTN_ERR_VERSION,
                              COVATTN_ERR_CHECKSUM, COVATTN_ERR_CORRUPT, COVATTN_ERR_SHAPE_MISMATCH,
                              COVATTN_ERR_INVALID_FORGETTING, COVATTN_ERR_NONFINITE}),
               "load returned %d (%s)", status, StatusName(status));
    FUZZ_CHECK(Serialize(c.cache) == before, "a refused load changed the cache");
    return status;
  }
  // A loaded cache is a cache: it serializes, reloads, and serializes the same.
  const std::vector<uint8_t> once = Serialize(c.cache);
  OwnedCache again;
  FUZZ_CHECK(again.Create(config), "create");
  FUZZ_CHECK(covattn_cache_load(again.cache, once.data(), once.size()) == COVATTN_OK,
             "a serialized cache does not load");
  FUZZ_CHECK(Serialize(again.cache) == once, "round trip is not bit-exact");
  covattn_cache_info info{};
  FUZZ_CHECK(covattn_cache_info_get(c.cache, &info) == COVATTN_OK, "info");
  return status;
}

// Scratch for every call with up to n_q query heads on a cache of `config`.
std::vector<uint8_t> Scratch(const covattn_cache_config& config, size_t n_q) {
  size_t bytes = 0;
  FUZZ_CHECK(covattn_cache_scratch_size(&config, n_q, &bytes) == COVATTN_OK, "scratch size");
  return std::vector<uint8_t>(bytes);
}

// A block of `n_tokens` tokens built from the input: values of one magnitude
// in the given dtype, sometimes a planted special, sometimes a wrong shape.
struct HostileBlock {
  std::vector<uint8_t> k, v;
  covattn_kv_cache block;
  bool wrong_shape = false;
  // A planted value the cache must refuse before anything changes: not
  // finite, above 2^40 or, for an f16 cache, beyond f16 (cache.h's append).
  // Other specials (zeros, subnormals, 65504) are values like any other.
  bool refused_value = false;
};

void BuildBlock(ByteReader& in, const covattn_cache_config& config, size_t n_tokens,
                HostileBlock* out) {
  const uint32_t dtype = in.U8() % 3;  // f32, f16, bf16
  const size_t heads = config.n_kv_heads, dim = config.head_dim;
  const size_t elem = ElemSize(dtype);
  // Token-major or head-major; a wrong head count or head_dim now and then.
  const bool head_major = in.U8() % 2;
  const uint8_t shape = in.U8();
  const size_t block_heads = shape >= 0xF8 ? heads + 1 : heads;
  const size_t block_dim = shape >= 0xF0 && shape < 0xF8 ? dim + 1 : dim;
  out->wrong_shape = block_heads != heads || block_dim != dim;
  out->k.assign(std::max<size_t>(1, n_tokens * block_heads * block_dim * elem), 0);
  out->v.assign(out->k.size(), 0);
  Prng rng{in.U64()};
  // Magnitudes up to 2^40: large enough to matter, small enough that f16
  // overflows are the planted kind (f16 saturates to infinity at 65504).
  const double magnitude = std::ldexp(1.0, static_cast<int>(in.U8() % 56) - 40);
  const size_t n_elems = n_tokens * block_heads * block_dim;
  for (size_t i = 0; i < n_elems; ++i) {
    StoreElement(out->k.data(), dtype, i, static_cast<float>(magnitude * (2 * rng.Uniform() - 1)));
    StoreElement(out->v.data(), dtype, i, static_cast<float>(magnitude * (2 * rng.Uniform() - 1)));
  }
  if (n_elems > 0 && in.U8() >= 0xF0) {
    uint8_t* tensor = in.U8() % 2 ? out->k.data() : out->v.data();
    const size_t at = in.U32() % n_elems;
    StoreElement(tensor, dtype, at, ByteReader::Special(in.U8()));
    const double x = std::fabs(LoadElement(tensor, dtype, at));  // as the block holds it
    out->refused_value =
        !std::isfinite(x) || x > 0x1p40 || (config.dtype == COVATTN_F16 && x >= 65520.0);
  }
  covattn_kv_cache& block = out->block;
  block = covattn_kv_cache{
      dtype, out->k.data(), out->v.data(), n_tokens, block_heads, block_dim, 0, 0, 0, 0, nullptr};
  block.k_token_stride = block.v_token_stride = head_major ? block_dim : block_heads * block_dim;
  block.k_head_stride = block.v_head_stride = head_major ? n_tokens * block_dim : block_dim;
  if (head_major && n_tokens == 0) block.k_head_stride = block.v_head_stride = block_dim;
}

// Appends a hostile block; checks the contract.
covattn_status Append(ByteReader& in, OwnedCache& c, const covattn_cache_config& config,
                      size_t n_tokens) {
  HostileBlock b;
  BuildBlock(in, config, n_tokens, &b);
  const std::vector<uint8_t> before = Serialize(c.cache);
  std::vector<uint8_t> scratch = Scratch(config, config.n_kv_heads);
  const covattn_status status =
      covattn_cache_append(c.cache, &b.block, scratch.data(), scratch.size());
  if (status != COVATTN_OK) {
    FUZZ_CHECK(OneOf(status, {COVATTN_ERR_SHAPE_MISMATCH, COVATTN_ERR_NONFINITE,
                              COVATTN_ERR_INVALID_STRIDE}),
               "append returned %d (%s)", status, StatusName(status));
    FUZZ_CHECK(status != COVATTN_ERR_SHAPE_MISMATCH || b.wrong_shape,
               "a block of the right shape refused as a shape mismatch");
    FUZZ_CHECK(Serialize(c.cache) == before, "a refused append changed the cache");
  } else {
    FUZZ_CHECK(!b.wrong_shape, "a block of the wrong shape appended");
  }
  return status;
}

// Prefills a hostile block with hostile queries (strided), scale, outputs
// and scratch. A failure leaves the cache as it was, and writes no output
// unless the computation itself overflowed; a success leaves the cache as
// append of the block would, with finite outputs.
void CheckPrefill(ByteReader& in, OwnedCache& c, const covattn_cache_config& config) {
  HostileBlock b;
  BuildBlock(in, config, in.U8() % 70, &b);
  const size_t n = b.block.n_tokens, dim = config.head_dim;
  const size_t group = 1 + in.U8() % 4;
  const bool wrong_heads = in.U8() >= 0xF8 && config.n_kv_heads > 1;  // not a multiple
  const size_t n_q = config.n_kv_heads * group + (wrong_heads ? 1 : 0);
  const bool wrong_positions = n > 0 && in.U8() >= 0xF8;
  const size_t n_positions = wrong_positions ? n - 1 : n;
  const size_t pad = in.U8() % 3;  // head stride dim + pad
  const size_t head_stride = dim + pad, token_stride = n_q * head_stride;
  std::vector<float> q(std::max<size_t>(1, n_positions * token_stride));
  for (float& x : q) x = in.U8() >= 0xFC ? in.Float() : (static_cast<int8_t>(in.U8()) / 64.0f);
  bool bad_query = false;
  for (size_t t = 0; t < n_positions; ++t)
    for (size_t h = 0; h < n_q; ++h)
      for (size_t i = 0; i < dim; ++i)
        bad_query |= !std::isfinite(q[t * token_stride + h * head_stride + i]);
  const float scale = in.U8() >= 0xF0 ? in.Float() : 0.0f;
  std::vector<float> out(std::max<size_t>(1, n * n_q * dim), 7.0f),
      log_z(std::max<size_t>(1, n * n_q), 7.0f);
  const bool with_log_z = in.U8() % 2;
  size_t scratch_bytes = 64;
  if (!wrong_heads) {
    FUZZ_CHECK(covattn_cache_scratch_size(&config, n_q, &scratch_bytes) == COVATTN_OK,
               "scratch size");
  }
  const bool short_scratch = in.U8() >= 0xF0;
  const size_t given = short_scratch ? scratch_bytes / 2 : scratch_bytes;
  Block scratch(std::max<size_t>(given, 1));
  const covattn_queries queries{q.data(), n_positions, n_q, token_stride, head_stride};
  const covattn_outputs outputs{out.data(), n_q * dim, dim, with_log_z ? log_z.data() : nullptr};
  const std::vector<uint8_t> before = Serialize(c.cache);
  const covattn_status status =
      covattn_cache_prefill(c.cache, &b.block, &queries, scale, &outputs, scratch.data(), given);
  if (Verbose()) std::fprintf(stderr, "prefill of %zu tokens: %s\n", n, StatusName(status));
  std::vector<covattn_status> faults;
  if (b.wrong_shape || wrong_positions) faults.push_back(COVATTN_ERR_SHAPE_MISMATCH);
  if (wrong_heads) faults.push_back(COVATTN_ERR_HEAD_MISMATCH);
  if (short_scratch) faults.push_back(COVATTN_ERR_SCRATCH_TOO_SMALL);
  if (!std::isfinite(scale)) faults.push_back(COVATTN_ERR_INVALID_SCALE);
  const bool bad_values = b.refused_value || bad_query;
  if (status == COVATTN_OK) {
    FUZZ_CHECK(faults.empty(), "prefill with %zu planted faults succeeded", faults.size());
    for (float x : out) FUZZ_CHECK(std::isfinite(x) && (n > 0 || x == 7.0f), "output %g", x);
    // The cache ends as append of the block leaves it.
    OwnedCache appended;
    FUZZ_CHECK(appended.Create(config), "create");
    FUZZ_CHECK(covattn_cache_load(appended.cache, before.data(), before.size()) == COVATTN_OK,
               "load");
    std::vector<uint8_t> append_scratch = Scratch(config, config.n_kv_heads);
    FUZZ_CHECK(covattn_cache_append(appended.cache, &b.block, append_scratch.data(),
                                    append_scratch.size()) == COVATTN_OK,
               "append of a block prefill took");
    FUZZ_CHECK(Serialize(appended.cache) == Serialize(c.cache), "prefill did not append the block");
    return;
  }
  FUZZ_CHECK(Serialize(c.cache) == before, "a refused prefill changed the cache");
  if (!faults.empty()) {
    FUZZ_CHECK(std::find(faults.begin(), faults.end(), status) != faults.end(),
               "prefill with %zu planted faults returned %d (%s)", faults.size(), status,
               StatusName(status));
  } else {
    FUZZ_CHECK(status == COVATTN_ERR_NONFINITE, "prefill of a valid call returned %d (%s)", status,
               StatusName(status));
  }
  // Refused before anything was written, unless the computation overflowed.
  if (status != COVATTN_ERR_NONFINITE || bad_values) {
    for (float x : out) FUZZ_CHECK(x == 7.0f, "a refused prefill wrote");
    for (float x : log_z) FUZZ_CHECK(x == 7.0f, "a refused prefill wrote log Z");
  }
}

// Folds a decode into the retention scores, sometimes with a planted NaN
// log Z: refused untouched, or accepted.
void CheckObserve(ByteReader& in, OwnedCache& c, const std::vector<float>& q, size_t n_q,
                  float scale, std::vector<float>* log_z, Block& scratch) {
  const bool planted = in.U8() >= 0xF0;
  if (planted) (*log_z)[in.U8() % n_q] = std::nanf("");
  const std::vector<uint8_t> before = Serialize(c.cache);
  const covattn_status status = covattn_cache_observe(c.cache, q.data(), n_q, scale, log_z->data(),
                                                      scratch.data(), scratch.size());
  // A decode of an empty cache succeeds (FULLY_MASKED) whatever its queries
  // hold; observe refuses queries that are not finite, as cache.h says.
  bool bad_query = false;
  for (float x : q) bad_query |= !std::isfinite(x);
  if (planted || bad_query) {
    FUZZ_CHECK(status == COVATTN_ERR_NONFINITE, "observe of a NaN log Z or query: %d", status);
    FUZZ_CHECK(Serialize(c.cache) == before, "a refused observe changed the cache");
  } else {
    FUZZ_CHECK(status == COVATTN_OK, "observe of a decode's own log Z: %d (%s)", status,
               StatusName(status));
  }
}

void CheckDecode(ByteReader& in, OwnedCache& c, const covattn_cache_config& config) {
  const size_t group = 1 + in.U8() % 4;
  const bool wrong_heads = in.U8() >= 0xF8 && config.n_kv_heads > 1;  // not a multiple
  const size_t n_q = config.n_kv_heads * group + (wrong_heads ? 1 : 0);
  std::vector<float> q(n_q * config.head_dim), out(q.size(), 7.0f);
  std::vector<float> share(n_q, 7.0f), ess(n_q, 7.0f), log_z(n_q, 7.0f);
  for (float& x : q) x = in.U8() >= 0xFC ? in.Float() : (static_cast<int8_t>(in.U8()) / 64.0f);
  const float scale = in.U8() >= 0xF0 ? in.Float() : 0.0f;
  size_t scratch_bytes = 0;
  const covattn_status size_status = covattn_cache_scratch_size(&config, n_q, &scratch_bytes);
  if (wrong_heads) {
    FUZZ_CHECK(size_status == COVATTN_ERR_HEAD_MISMATCH, "scratch size for %zu heads: %d", n_q,
               size_status);
    scratch_bytes = 64;
  } else {
    FUZZ_CHECK(size_status == COVATTN_OK, "scratch size: %d", size_status);
  }
  // Scratch serves every call; decode needs less than append: 16 bytes is
  // short of what any decode needs.
  const bool short_scratch = scratch_bytes > 0 && in.U8() >= 0xF0;
  const size_t given = short_scratch ? 16 : scratch_bytes;
  Block scratch(std::max<size_t>(given, 1));
  const covattn_cache_diagnostics diagnostics{share.data(), ess.data(), log_z.data()};
  const std::vector<uint8_t> before = Serialize(c.cache);
  const bool diagnose = in.U8() % 2;
  const covattn_status status =
      covattn_cache_decode(c.cache, q.data(), n_q, scale, out.data(),
                           diagnose ? &diagnostics : nullptr, scratch.data(), given);
  FUZZ_CHECK(Serialize(c.cache) == before, "a decode changed the cache");
  // With faults planted, the status names one of them (the order of the
  // checks is the library's); without, no argument error may come back.
  std::vector<covattn_status> faults;
  if (wrong_heads) faults.push_back(COVATTN_ERR_HEAD_MISMATCH);
  if (short_scratch) faults.push_back(COVATTN_ERR_SCRATCH_TOO_SMALL);
  if (!std::isfinite(scale)) faults.push_back(COVATTN_ERR_INVALID_SCALE);
  if (!faults.empty()) {
    FUZZ_CHECK(std::find(faults.begin(), faults.end(), status) != faults.end(),
               "decode with %zu planted faults returned %d (%s)", faults.size(), status,
               StatusName(status));
  } else {
    FUZZ_CHECK(
        status == COVATTN_OK || status == COVATTN_FULLY_MASKED || status == COVATTN_ERR_NONFINITE,
        "decode of a valid call returned %d (%s)", status, StatusName(status));
  }
  if (status == COVATTN_OK || status == COVATTN_FULLY_MASKED) {
    for (float x : out) FUZZ_CHECK(std::isfinite(x), "output %g with status %d", x, status);
    for (size_t i = 0; i < n_q; ++i) {
      if (share[i] == 7.0f) continue;  // diagnostics not asked for
      FUZZ_CHECK(share[i] >= 0.0f && share[i] <= 1.0f, "summary share %g", share[i]);
      FUZZ_CHECK(ess[i] >= 0.0f && !std::isnan(ess[i]), "summary ess %g", ess[i]);
      FUZZ_CHECK(!std::isnan(log_z[i]), "log Z is NaN");
    }
    if (status == COVATTN_FULLY_MASKED) {
      for (float x : out) FUZZ_CHECK(x == 0.0f, "a fully masked decode gave %g", x);
    }
    if (diagnose && faults.empty()) CheckObserve(in, c, q, n_q, scale, &log_z, scratch);
  } else {
    FUZZ_CHECK(OneOf(status, {COVATTN_ERR_HEAD_MISMATCH, COVATTN_ERR_SCRATCH_TOO_SMALL,
                              COVATTN_ERR_INVALID_SCALE, COVATTN_ERR_NONFINITE}),
               "decode returned %d (%s)", status, StatusName(status));
    if (status != COVATTN_ERR_NONFINITE) {
      for (float x : out) FUZZ_CHECK(x == 7.0f, "a refused decode wrote");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteReader in(data, size);
  PickTarget(in);
  const uint8_t mode = in.U8() % 3;
  covattn_cache_config config{};
  config.n_kv_heads = 1 + in.U8() % 3;
  config.head_dim = 1 + in.U8() % 40;
  config.dtype = in.U8() % 4;  // f32, f16, bf16, int8 (blocks are float: Append)
  config.n_sinks = in.U8() % 4;
  config.window = in.U8() % 12;
  config.n_outliers = in.U8() % 5;
  config.forgetting = in.U8() < 0xC0 ? 1.0f : 0.5f + (in.U8() % 128) / 256.0f;
  // Format 2's fields: retained slots and their policy, the summary kind,
  // RoPE (even head_dim only).
  config.n_retained = in.U8() % 5;
  config.retention = in.U8() % 3;
  config.retention_decay = in.U8() < 0x80 ? 0.0f : 0.5f + (in.U8() % 128) / 256.0f;
  config.summary = in.U8() % 2;  // covariance or compact
  config.rope = config.head_dim % 2 == 0 ? in.U8() % 3 : 0;
  if (in.U8() >= 0xE0) {  // no summary: then no outlier slots, and some exact slots
    config.flags = COVATTN_CACHE_DROP_EVICTED;
    config.summary = COVATTN_SUMMARY_NONE;
    config.n_outliers = 0;
    if (config.n_sinks + config.window + config.n_retained == 0) config.window = 1;
  }
  OwnedCache a;
  FUZZ_CHECK(a.Create(config), "creating a cache (%zu heads, d %zu)", config.n_kv_heads,
             config.head_dim);
  Append(in, a, config, in.U8() % 40);

  if (mode == 0) {
    std::vector<uint8_t> bytes(in.remaining());
    for (uint8_t& b : bytes) b = in.U8();
    LoadChecked(a, config, bytes.data(), bytes.size());
    return 0;
  }

  if (mode == 1) {
    std::vector<uint8_t> file = Serialize(a.cache);
    OwnedCache b;
    FUZZ_CHECK(b.Create(config), "create");
    const size_t damages = DamageFile(in, &file);
    const covattn_status status = LoadChecked(b, config, file.data(), file.size());
    if (damages == 0) FUZZ_CHECK(status == COVATTN_OK, "an undamaged file: status %d", status);
    return 0;
  }

  // Mode 2: a sequence of calls; every failure leaves the cache as it was.
  for (int step = 0; step < 8 && in.remaining() > 0; ++step) {
    switch (in.U8() % 5) {
      case 0:
      case 1:
        Append(in, a, config, in.U8() % 80);
        break;
      case 2:
        CheckDecode(in, a, config);
        break;
      case 4:
        CheckPrefill(in, a, config);
        break;
      default: {
        FUZZ_CHECK(covattn_cache_reset(a.cache) == COVATTN_OK, "reset");
        covattn_cache_info info{};
        FUZZ_CHECK(covattn_cache_info_get(a.cache, &info) == COVATTN_OK && info.n_tokens == 0 &&
                       info.n_exact == 0,
                   "a reset cache holds tokens");
        break;
      }
    }
  }
  // Every cache a sequence leaves behind round-trips through its file.
  const std::vector<uint8_t> file = Serialize(a.cache);
  OwnedCache b;
  FUZZ_CHECK(b.Create(config), "create");
  const covattn_status status = LoadChecked(b, config, file.data(), file.size());
  FUZZ_CHECK(status == COVATTN_OK, "a cache's own file: %d (%s)", status, StatusName(status));
  return 0;
}
