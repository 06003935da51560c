// Fuzz target for the covariance state (covattn/covariance.h): its file
// loader and the calls that change or read a state.
//
// The input picks one of three modes:
//  0: load arbitrary bytes into a state that already holds tokens;
//  1: serialize a valid state, damage the bytes (truncate, flip bits,
//     overwrite), then load them;
//  2: a sequence of calls (update with hostile blocks, merge, reset,
//     readout, export) on states living in exactly sized caller memory.
// Checked: statuses are ones the header allows; a failed call leaves every
// state exactly as it was (compared through its serialization); a loaded
// state serializes back to the same bytes; an undamaged file loads; readouts
// of a non-empty state are finite or COVATTN_ERR_NONFINITE.
#include <algorithm>
#include <vector>

#include "covattn/covariance.h"
#include "fuzz_util.h"

using namespace covattn_fuzz;

namespace {

// A state in an exactly sized heap block (ASan sees any access past it).
struct OwnedState {
  Block memory;
  covattn_cov_state* state = nullptr;
  bool Create(size_t n_heads, size_t head_dim, float forgetting) {
    size_t bytes = 0;
    if (covattn_cov_state_size(n_heads, head_dim, &bytes) != COVATTN_OK) return false;
    if (bytes > (size_t{64} << 20)) return false;
    memory = Block(bytes);
    return covattn_cov_state_init(memory.data(), bytes, n_heads, head_dim, forgetting, &state) ==
           COVATTN_OK;
  }
};

std::vector<uint8_t> Serialize(const covattn_cov_state* state) {
  size_t bytes = 0;
  FUZZ_CHECK(covattn_cov_state_serialized_size(state, &bytes) == COVATTN_OK, "serialized size");
  std::vector<uint8_t> out(bytes);
  size_t written = 0;
  const covattn_status status = covattn_cov_state_serialize(state, out.data(), bytes, &written);
  FUZZ_CHECK(status == COVATTN_OK && written == bytes, "serialize: status %d, %zu of %zu bytes",
             status, written, bytes);
  return out;
}

// Loads `bytes` (from an exactly sized copy) into `s`; checks the contract.
covattn_status LoadChecked(OwnedState& s, const uint8_t* data, size_t size) {
  const std::vector<uint8_t> before = Serialize(s.state);
  Block copy(size);
  if (size) std::memcpy(copy.data(), data, size);
  const covattn_status status = covattn_cov_state_load(s.state, copy.data(), size);
  if (status != COVATTN_OK) {
    static const covattn_status kLoadErrors[] = {
        COVATTN_ERR_TRUNCATED,    COVATTN_ERR_BAD_MAGIC,
        COVATTN_ERR_VERSION,      COVATTN_ERR_CHECKSUM,
        COVATTN_ERR_CORRUPT,      COVATTN_ERR_SHAPE_MISMATCH,
        COVATTN_ERR_NULL_POINTER, COVATTN_ERR_INVALID_FORGETTING,
        COVATTN_ERR_NONFINITE};
    FUZZ_CHECK(
        std::find(std::begin(kLoadErrors), std::end(kLoadErrors), status) != std::end(kLoadErrors),
        "load returned %d (%s)", status, StatusName(status));
    FUZZ_CHECK(Serialize(s.state) == before, "a refused load changed the state");
    return status;
  }
  // A loaded state is a state: it serializes, reloads, and serializes the same.
  const std::vector<uint8_t> once = Serialize(s.state);
  covattn_cov_info info{};
  FUZZ_CHECK(covattn_cov_state_info(s.state, &info) == COVATTN_OK, "info");
  OwnedState again;
  FUZZ_CHECK(again.Create(info.n_heads, info.head_dim, info.forgetting), "create");
  FUZZ_CHECK(covattn_cov_state_load(again.state, once.data(), once.size()) == COVATTN_OK,
             "a serialized state does not load");
  FUZZ_CHECK(Serialize(again.state) == once, "round trip is not bit-exact");
  return status;
}

// Scratch for updates and merges of states of head_dim.
std::vector<uint8_t> Scratch(size_t head_dim) {
  size_t bytes = 0;
  FUZZ_CHECK(covattn_cov_state_scratch_size(head_dim, &bytes) == COVATTN_OK, "scratch size");
  return std::vector<uint8_t>(bytes);
}

// Feeds `n_tokens` tokens of values from the input into every head.
covattn_status Feed(ByteReader& in, OwnedState& s, size_t n_heads, size_t head_dim,
                    size_t n_tokens) {
  std::vector<float> k(n_tokens * n_heads * head_dim), v(k.size());
  Prng rng{in.U64()};
  const double magnitude = std::ldexp(1.0, static_cast<int>(in.U8() % 80) - 40);
  for (float& x : k) x = static_cast<float>(magnitude * (2 * rng.Uniform() - 1));
  for (float& x : v) x = static_cast<float>(magnitude * (2 * rng.Uniform() - 1));
  if (!k.empty() && in.U8() >= 0xF0) k[in.U32() % k.size()] = ByteReader::Special(in.U8());
  const covattn_kv_cache block{
      COVATTN_F32,        k.data(), v.data(),           n_tokens, n_heads, head_dim,
      n_heads * head_dim, head_dim, n_heads * head_dim, head_dim, nullptr};
  const std::vector<uint8_t> before = Serialize(s.state);
  std::vector<uint8_t> scratch = Scratch(head_dim);
  const covattn_status status =
      covattn_cov_state_update(s.state, &block, scratch.data(), scratch.size());
  if (status != COVATTN_OK) FUZZ_CHECK(Serialize(s.state) == before, "a refused update wrote");
  return status;
}

void CheckReadout(ByteReader& in, OwnedState& s, size_t n_heads, size_t head_dim) {
  const size_t group = 1 + in.U8() % 4;
  std::vector<float> q(n_heads * group * head_dim), out(q.size(), 7.0f);
  std::vector<float> log_z(n_heads * group), ess(n_heads * group);
  for (float& x : q) x = in.Float();
  const std::vector<uint8_t> before = Serialize(s.state);
  const covattn_status status = covattn_cov_readout(s.state, q.data(), n_heads * group, in.Float(),
                                                    out.data(), log_z.data(), ess.data());
  FUZZ_CHECK(Serialize(s.state) == before, "a readout changed the state");
  covattn_cov_info info{};
  FUZZ_CHECK(covattn_cov_state_info(s.state, &info) == COVATTN_OK, "info");
  if (status == COVATTN_OK) {
    for (float x : out) FUZZ_CHECK(std::isfinite(x), "readout %g with status OK", x);
    for (size_t i = 0; i < ess.size(); ++i) {
      FUZZ_CHECK(std::isfinite(log_z[i]) && ess[i] >= 0.0f, "log Z %g, ess %g", log_z[i], ess[i]);
    }
  } else {
    FUZZ_CHECK(status == COVATTN_ERR_EMPTY_STATE || status == COVATTN_ERR_INVALID_SCALE ||
                   status == COVATTN_ERR_NONFINITE,
               "readout returned %d (%s)", status, StatusName(status));
    if (status == COVATTN_ERR_EMPTY_STATE) FUZZ_CHECK(info.n_tokens == 0, "empty with tokens");
    if (status != COVATTN_ERR_NONFINITE) {
      for (float x : out) FUZZ_CHECK(x == 7.0f, "a refused readout wrote");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteReader in(data, size);
  PickTarget(in);
  const uint8_t mode = in.U8() % 3;
  const size_t n_heads = 1 + in.U8() % 4, head_dim = 1 + in.U8() % 48;
  const float forgetting = in.U8() < 0xC0 ? 1.0f : 0.5f + (in.U8() % 128) / 256.0f;
  OwnedState a;
  FUZZ_CHECK(a.Create(n_heads, head_dim, forgetting), "creating a %zu x %zu state", n_heads,
             head_dim);
  Feed(in, a, n_heads, head_dim, in.U8() % 70);

  if (mode == 0) {
    const size_t rest = in.remaining();
    std::vector<uint8_t> bytes(rest);
    for (uint8_t& b : bytes) b = in.U8();
    LoadChecked(a, bytes.data(), bytes.size());
    return 0;
  }

  if (mode == 1) {
    std::vector<uint8_t> file = Serialize(a.state);
    OwnedState b;
    FUZZ_CHECK(b.Create(n_heads, head_dim, forgetting), "create");
    const size_t damages = DamageFile(in, &file);
    const covattn_status status = LoadChecked(b, file.data(), file.size());
    if (damages == 0) FUZZ_CHECK(status == COVATTN_OK, "an undamaged file: status %d", status);
    return 0;
  }

  // Mode 2: calls on two states; every failure leaves both as they were.
  OwnedState b;
  FUZZ_CHECK(b.Create(n_heads, head_dim, forgetting), "create");
  for (int step = 0; step < 8 && in.remaining() > 0; ++step) {
    switch (in.U8() % 6) {
      case 0:
        Feed(in, in.U8() % 2 ? a : b, n_heads, head_dim, in.U8() % 200);
        break;
      case 1: {
        const std::vector<uint8_t> before = Serialize(a.state), other = Serialize(b.state);
        std::vector<uint8_t> scratch = Scratch(head_dim);
        const covattn_status status =
            covattn_cov_state_merge(a.state, b.state, scratch.data(), scratch.size());
        FUZZ_CHECK(Serialize(b.state) == other, "merge changed `other`");
        if (status != COVATTN_OK) FUZZ_CHECK(Serialize(a.state) == before, "refused merge wrote");
        break;
      }
      case 2: {  // a state merged into itself: accepted or refused, never half done
        const std::vector<uint8_t> before = Serialize(a.state);
        std::vector<uint8_t> scratch = Scratch(head_dim);
        if (covattn_cov_state_merge(a.state, a.state, scratch.data(), scratch.size()) !=
            COVATTN_OK) {
          FUZZ_CHECK(Serialize(a.state) == before, "refused self-merge wrote");
        }
        break;
      }
      case 3:
        CheckReadout(in, in.U8() % 2 ? a : b, n_heads, head_dim);
        break;
      case 4: {
        std::vector<float> mean(head_dim), cov(head_dim * head_dim);
        double weight = -1;
        const std::vector<uint8_t> before = Serialize(a.state);
        const covattn_status status = covattn_cov_state_export(
            a.state, in.U8() % (n_heads + 1), &weight, mean.data(), nullptr, cov.data(), nullptr);
        FUZZ_CHECK(Serialize(a.state) == before, "export changed the state");
        if (status == COVATTN_OK) {
          FUZZ_CHECK(std::isfinite(weight) && weight >= 0, "exported weight %g", weight);
        } else {
          FUZZ_CHECK(status < 0 && weight == -1, "export: status %d, weight %g", status, weight);
        }
        break;
      }
      default:
        FUZZ_CHECK(covattn_cov_state_reset(b.state) == COVATTN_OK, "reset");
        break;
    }
  }
  // Every state a sequence leaves behind round-trips through its file.
  const std::vector<uint8_t> file = Serialize(a.state);
  FUZZ_CHECK(LoadChecked(b, file.data(), file.size()) == COVATTN_OK, "a state's file");
  return 0;
}
