// Every bad input to the covariance-state entry points gets its own status
// and leaves the state byte for byte as it was; every corrupt serialized
// file is refused with its own status; caller memory of any alignment works
// and is never written outside.
#include <doctest/doctest.h>

#include "covariance_test_util.h"

using namespace covattn_test;

namespace {

constexpr size_t kDim = 12, kHeads = 2;
constexpr float kSentinel = 12345.0f;

// A state in caller memory at a chosen misalignment, with guard bytes
// around it, filled with some tokens.
class CallerState {
 public:
  CallerState(size_t offset, float forgetting = 1.0f, size_t n_heads = kHeads, size_t dim = kDim)
      : offset_(offset) {
    REQUIRE(covattn_cov_state_size(n_heads, dim, &bytes_) == COVATTN_OK);
    buffer_.assign(bytes_ + offset + 2 * kGuard, 0xA5);
    REQUIRE(covattn_cov_state_init(memory(), bytes_, n_heads, dim, forgetting, &state_) ==
            COVATTN_OK);
  }
  void Fill(const TestCache& cache, size_t n) { Update(state_, cache.view(), 0, n); }
  covattn_cov_state* get() { return state_; }
  unsigned char* memory() { return buffer_.data() + kGuard + offset_; }
  std::vector<uint8_t> Snapshot() const { return buffer_; }
  bool Unchanged(const std::vector<uint8_t>& before) const { return buffer_ == before; }
  bool GuardsIntact() const {
    for (size_t i = 0; i < kGuard + offset_; ++i)
      if (buffer_[i] != 0xA5) return false;
    for (size_t i = kGuard + offset_ + bytes_; i < buffer_.size(); ++i)
      if (buffer_[i] != 0xA5) return false;
    return true;
  }
  size_t bytes() const { return bytes_; }

 private:
  static constexpr size_t kGuard = 64;
  size_t offset_, bytes_ = 0;
  std::vector<uint8_t> buffer_;
  covattn_cov_state* state_ = nullptr;
};

// A token-major cache of n tokens (kHeads x kDim), deterministic per (n, dtype).
struct Cache : TestCache {
  explicit Cache(size_t n, uint32_t dtype = COVATTN_F32)
      : TestCache(dtype, Layout::kTokenMajor, n, kHeads, kDim) {
    Rng rng(n + dtype);
    FillRandom(rng, 1.0, 2.0);
  }
};

// An f32-aligned address at least `offset` bytes into p.
template <typename T = float>
T* AlignedInside(unsigned char* p, size_t offset) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + offset + 7) & ~uintptr_t{7});
}

std::vector<uint8_t> Serialize(const covattn_cov_state* s) {
  size_t bytes = 0;
  REQUIRE(covattn_cov_state_serialized_size(s, &bytes) == COVATTN_OK);
  std::vector<uint8_t> file(bytes);
  REQUIRE(covattn_cov_state_serialize(s, file.data(), bytes, nullptr) == COVATTN_OK);
  return file;
}

// The file format's checksum, written here independently: FNV-1a 64 over
// everything but the last 8 bytes, stored little-endian in them.
void Reseal(std::vector<uint8_t>& file) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (size_t i = 0; i + 8 < file.size(); ++i) hash = (hash ^ file[i]) * 0x100000001b3ull;
  for (size_t i = 0; i < 8; ++i) file[file.size() - 8 + i] = static_cast<uint8_t>(hash >> (8 * i));
}

template <typename T>
void Put(std::vector<uint8_t>& file, size_t offset, T value) {
  std::memcpy(file.data() + offset, &value, sizeof(T));  // tests run on little-endian hosts
}

// Offsets in the documented format (docs/covariance.md).
constexpr size_t kPayload = 64;
size_t WeightOffset(size_t head) {
  return kPayload + head * (8 * (1 + 2 * kDim) + 8 * kDim * kDim);
}
size_t MeanOffset(size_t head, size_t i) { return WeightOffset(head) + 8 * (1 + i); }
size_t MomentOffset(size_t head, size_t row, size_t col) {
  return WeightOffset(head) + 8 * (1 + 2 * kDim) + 4 * (row * 2 * kDim + col);
}

}  // namespace

TEST_CASE("size: a fixed formula, and its argument checks") {
  size_t one = 0, two = 0, three = 0;
  REQUIRE(covattn_cov_state_size(1, 128, &one) == COVATTN_OK);
  REQUIRE(covattn_cov_state_size(2, 128, &two) == COVATTN_OK);
  REQUIRE(covattn_cov_state_size(3, 128, &three) == COVATTN_OK);
  CHECK(three - two == two - one);  // linear in the head count
  // Per head: the 2 d^2 f32 co-moments and 2 d + 1 doubles, padded.
  CHECK(two - one >= 4 * 2 * 128 * 128 + 8 * (1 + 2 * 128));
  CHECK(two - one <= 4 * 2 * 128 * 128 + 8 * (1 + 2 * 128) + 512);
  size_t bytes = 7;
  CHECK(covattn_cov_state_size(1, 64, nullptr) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_size(0, 64, &bytes) == COVATTN_ERR_INVALID_HEAD_COUNT);
  CHECK(covattn_cov_state_size(1, 0, &bytes) == COVATTN_ERR_INVALID_HEAD_DIM);
  CHECK(covattn_cov_state_size(1, COVATTN_MAX_HEAD_DIM + 1, &bytes) ==
        COVATTN_ERR_INVALID_HEAD_DIM);
  CHECK(covattn_cov_state_size(SIZE_MAX / 1000, 64, &bytes) == COVATTN_ERR_SIZE_OVERFLOW);
  CHECK(bytes == 7);
}

TEST_CASE("init and create: argument checks") {
  covattn_cov_state* s = nullptr;
  size_t bytes = 0;
  REQUIRE(covattn_cov_state_size(kHeads, kDim, &bytes) == COVATTN_OK);
  std::vector<uint8_t> memory(bytes + 64);
  CHECK(covattn_cov_state_init(nullptr, bytes, kHeads, kDim, 1.0f, &s) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_init(memory.data(), bytes, kHeads, kDim, 1.0f, nullptr) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_init(memory.data(), bytes - 1, kHeads, kDim, 1.0f, &s) ==
        COVATTN_ERR_BUFFER_TOO_SMALL);
  CHECK(covattn_cov_state_init(memory.data(), bytes, 0, kDim, 1.0f, &s) ==
        COVATTN_ERR_INVALID_HEAD_COUNT);
  CHECK(covattn_cov_state_init(memory.data(), bytes, kHeads, 0, 1.0f, &s) ==
        COVATTN_ERR_INVALID_HEAD_DIM);
  for (float bad : {0.0f, -0.5f, 1.0f + 1e-6f, 2.0f, std::nanf(""), INFINITY}) {
    INFO("forgetting " << bad);
    CHECK(covattn_cov_state_init(memory.data(), bytes, kHeads, kDim, bad, &s) ==
          COVATTN_ERR_INVALID_FORGETTING);
    CHECK(covattn_cov_state_create(kHeads, kDim, bad, &s) == COVATTN_ERR_INVALID_FORGETTING);
  }
  CHECK(s == nullptr);
  CHECK(covattn_cov_state_create(kHeads, kDim, 1.0f, nullptr) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_create(0, kDim, 1.0f, &s) == COVATTN_ERR_INVALID_HEAD_COUNT);
  CHECK(covattn_cov_state_create(kHeads, 513, 1.0f, &s) == COVATTN_ERR_INVALID_HEAD_DIM);
  CHECK(covattn_cov_state_create(SIZE_MAX / 1000, kDim, 1.0f, &s) == COVATTN_ERR_SIZE_OVERFLOW);
  CHECK(s == nullptr);
  // The extremes of the forgetting factor are valid.
  for (float ok : {1.0f, 1e-30f}) {
    REQUIRE(covattn_cov_state_create(kHeads, kDim, ok, &s) == COVATTN_OK);
    covattn_cov_state_destroy(s);
  }
  covattn_cov_state_destroy(nullptr);
}

TEST_CASE("caller memory of any alignment: results identical, nothing written outside") {
  const Cache cache(300, COVATTN_F16);
  std::vector<float> q(2 * kHeads * kDim), expected(q.size()), out(q.size());
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.37f * i);
  StatePtr heap = MakeState(kHeads, kDim, 0.99f);
  Update(heap.get(), cache.view(), 0, 300);
  REQUIRE(covattn_cov_readout(heap.get(), q.data(), 2 * kHeads, 0.0f, expected.data(), nullptr,
                              nullptr) == COVATTN_OK);
  const std::vector<uint8_t> file = Serialize(heap.get());
  for (size_t offset = 0; offset < 64; offset += 1) {
    INFO("offset " << offset);
    CallerState s(offset, 0.99f);
    s.Fill(cache, 300);
    REQUIRE(covattn_cov_readout(s.get(), q.data(), 2 * kHeads, 0.0f, out.data(), nullptr,
                                nullptr) == COVATTN_OK);
    CHECK(out == expected);
    CHECK(Serialize(s.get()) == file);
    covattn_cov_state_destroy(s.get());  // a no-op for caller memory
    CHECK(s.GuardsIntact());
  }
}

TEST_CASE("update: every bad input has its status and leaves the state unchanged") {
  Cache cache(40);
  CallerState s(3);
  s.Fill(cache, 20);
  const std::vector<uint8_t> before = s.Snapshot();
  auto expect = [&](covattn_kv_cache block, covattn_status status) {
    CHECK(UpdateStatus(s.get(), &block) == status);
    CHECK(s.Unchanged(before));
  };
  const covattn_kv_cache good = cache.view();
  std::vector<uint8_t> w = CovScratch(s.get());
  CHECK(covattn_cov_state_update(nullptr, &good, w.data(), w.size()) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_update(s.get(), nullptr, w.data(), w.size()) == COVATTN_ERR_NULL_POINTER);
  // Scratch: present, large enough, overlapping neither the state nor the block.
  CHECK(covattn_cov_state_update(s.get(), &good, nullptr, w.size()) ==
        COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(covattn_cov_state_update(s.get(), &good, w.data(), w.size() - 1) ==
        COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(s.Unchanged(before));
  void* block_k = const_cast<void*>(good.k);
  CHECK(covattn_cov_state_update(s.get(), &good, block_k, w.size()) == COVATTN_ERR_ALIASING);
  CHECK(covattn_cov_state_update(s.get(), &good, s.memory(), w.size()) == COVATTN_ERR_ALIASING);
  CHECK(s.Unchanged(before));
  covattn_kv_cache b = good;
  b.dtype = 4;  // the first value after COVATTN_INT8
  expect(b, COVATTN_ERR_UNSUPPORTED_DTYPE);
  b.dtype = COVATTN_INT8;  // an f32 block's bytes, but no scales
  expect(b, COVATTN_ERR_NULL_POINTER);
  b = good, b.n_heads = 1;
  expect(b, COVATTN_ERR_SHAPE_MISMATCH);
  b = good, b.head_dim = kDim + 1;
  expect(b, COVATTN_ERR_SHAPE_MISMATCH);
  b = good, b.k = nullptr;
  expect(b, COVATTN_ERR_NULL_POINTER);
  b = good, b.v = nullptr;
  expect(b, COVATTN_ERR_NULL_POINTER);
  b = good, b.k = static_cast<const uint8_t*>(good.k) + 1;
  expect(b, COVATTN_ERR_MISALIGNED);
  b = good, b.k_head_stride = kDim - 1;  // heads overlap
  expect(b, COVATTN_ERR_INVALID_STRIDE);
  b = good, b.v_token_stride = SIZE_MAX / 8;
  expect(b, COVATTN_ERR_SIZE_OVERFLOW);
  b = good, b.k = AlignedInside(s.memory(), 256), b.n_tokens = 1;  // inside the state
  expect(b, COVATTN_ERR_ALIASING);
  // An empty block is valid with any pointers, and changes nothing.
  b = good, b.n_tokens = 0, b.k = nullptr, b.v = nullptr;
  expect(b, COVATTN_OK);
}

TEST_CASE("update: NaN, infinity and out-of-range values are refused before any write") {
  for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_BF16}) {
    // Positions in the first head, the middle, and the very last element of
    // the last head (the scalar tail for kDim = 12 on wide vectors).
    const size_t positions[][3] = {{0, 0, 0}, {17, 1, 5}, {39, 1, kDim - 1}};
    std::vector<double> bad = {std::nan(""), INFINITY, -INFINITY};
    if (dtype != COVATTN_F16) bad.push_back(std::ldexp(1.0, 41));  // beyond 2^40
    for (double value : bad) {
      for (const auto& pos : positions) {
        for (bool in_v : {false, true}) {
          INFO(DtypeName(dtype) << " value " << value << " at token " << pos[0] << " head "
                                << pos[1] << " dim " << pos[2] << (in_v ? " of V" : " of K"));
          Cache cache(40, dtype);
          ForEachTarget([&] {
            CallerState s(5);
            s.Fill(cache, 10);
            Cache broken(40, dtype);
            in_v ? broken.SetV(pos[0], pos[1], pos[2], value)
                 : broken.SetK(pos[0], pos[1], pos[2], value);
            const std::vector<uint8_t> before = s.Snapshot();
            const covattn_kv_cache block = broken.view();
            CHECK(UpdateStatus(s.get(), &block) == COVATTN_ERR_NONFINITE);
            CHECK(s.Unchanged(before));
          });
        }
      }
    }
  }
  // The limit itself is accepted (f32 and bf16 represent 2^40 exactly).
  for (uint32_t dtype : {COVATTN_F32, COVATTN_BF16}) {
    Cache cache(3, dtype);
    cache.SetK(1, 0, 0, -std::ldexp(1.0, 40));
    StatePtr s = MakeState(kHeads, kDim);
    const covattn_kv_cache block = cache.view();
    CHECK(UpdateStatus(s.get(), &block) == COVATTN_OK);
  }
}

TEST_CASE("merge: argument checks leave both states unchanged") {
  Cache cache(30);
  CallerState a(1), b(2), other_lambda(3, 0.5f), other_heads(4, 1.0f, 1),
      other_dim(5, 1.0f, kHeads, 8);
  a.Fill(cache, 30);
  b.Fill(cache, 10);
  const std::vector<uint8_t> a0 = a.Snapshot(), b0 = b.Snapshot();
  std::vector<uint8_t> w = CovScratch(a.get());
  CHECK(covattn_cov_state_merge(nullptr, b.get(), w.data(), w.size()) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_merge(a.get(), nullptr, w.data(), w.size()) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_merge(a.get(), b.get(), nullptr, 0) == COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(covattn_cov_state_merge(a.get(), b.get(), w.data(), w.size() - 1) ==
        COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(MergeStatus(a.get(), other_lambda.get()) == COVATTN_ERR_SHAPE_MISMATCH);
  CHECK(MergeStatus(a.get(), other_heads.get()) == COVATTN_ERR_SHAPE_MISMATCH);
  CHECK(MergeStatus(a.get(), other_dim.get()) == COVATTN_ERR_SHAPE_MISMATCH);
  CHECK(MergeStatus(other_lambda.get(), a.get()) == COVATTN_ERR_SHAPE_MISMATCH);
  CHECK(a.Unchanged(a0));
  CHECK(b.Unchanged(b0));
  // Merging an empty state changes nothing, byte for byte.
  CallerState empty(6);
  CHECK(MergeStatus(a.get(), empty.get()) == COVATTN_OK);
  CHECK(a.Unchanged(a0));
  // Into an empty state: a copy of the other's statistics.
  CHECK(MergeStatus(empty.get(), b.get()) == COVATTN_OK);
  CHECK(Serialize(empty.get()) == Serialize(b.get()));
}

TEST_CASE("readout: argument checks, aliasing, empty state, non-finite results") {
  Cache cache(50);
  CallerState s(7);
  s.Fill(cache, 50);
  const size_t n_q = 2 * kHeads;
  std::vector<float> q(n_q * kDim, 0.5f), out(n_q * kDim + 8, kSentinel), lz(n_q, kSentinel),
      ess(n_q, kSentinel);
  auto untouched = [&] {
    for (float x : out)
      if (x != kSentinel) return false;
    for (float x : lz)
      if (x != kSentinel) return false;
    return true;
  };
  const std::vector<uint8_t> before = s.Snapshot();
  float* o = out.data();
  CHECK(covattn_cov_readout(nullptr, q.data(), n_q, 0, o, nullptr, nullptr) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_readout(s.get(), nullptr, n_q, 0, o, nullptr, nullptr) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_readout(s.get(), q.data(), n_q, 0, nullptr, nullptr, nullptr) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_readout(s.get(), q.data(), 0, 0, o, nullptr, nullptr) ==
        COVATTN_ERR_INVALID_HEAD_COUNT);
  CHECK(covattn_cov_readout(s.get(), q.data(), 3, 0, o, nullptr, nullptr) ==
        COVATTN_ERR_HEAD_MISMATCH);
  CHECK(covattn_cov_readout(s.get(), q.data(), n_q, NAN, o, nullptr, nullptr) ==
        COVATTN_ERR_INVALID_SCALE);
  CHECK(covattn_cov_readout(s.get(), q.data(), n_q, INFINITY, o, nullptr, nullptr) ==
        COVATTN_ERR_INVALID_SCALE);
  CHECK(covattn_cov_readout(s.get(), q.data(), n_q, 0, o + 1, nullptr, nullptr) == COVATTN_OK);
  std::fill(out.begin(), out.end(), kSentinel);
  CHECK(covattn_cov_readout(s.get(), q.data(), n_q, 0,
                            reinterpret_cast<float*>(reinterpret_cast<uintptr_t>(o) + 2), nullptr,
                            nullptr) == COVATTN_ERR_MISALIGNED);
  CHECK(covattn_cov_readout(s.get(), q.data(), n_q, 0, q.data() + 3, nullptr, nullptr) ==
        COVATTN_ERR_ALIASING);
  CHECK(covattn_cov_readout(s.get(), q.data(), n_q, 0, o, o + 5, nullptr) == COVATTN_ERR_ALIASING);
  CHECK(covattn_cov_readout(s.get(), q.data(), n_q, 0, o, lz.data(), lz.data()) ==
        COVATTN_ERR_ALIASING);
  CHECK(covattn_cov_readout(s.get(), q.data(), n_q, 0, o, nullptr,
                            AlignedInside(s.memory(), 512)) == COVATTN_ERR_ALIASING);
  CHECK(untouched());
  // q may come from anywhere, even the state's own memory (read-only).
  CHECK(covattn_cov_readout(s.get(), reinterpret_cast<const float*>(s.memory() + 4096), 2, 0, o,
                            nullptr, nullptr) != COVATTN_ERR_ALIASING);
  std::fill(out.begin(), out.end(), kSentinel);
  CallerState empty(8);
  CHECK(covattn_cov_readout(empty.get(), q.data(), n_q, 0, o, lz.data(), ess.data()) ==
        COVATTN_ERR_EMPTY_STATE);
  CHECK(untouched());
  // A query so large that a^T C a overflows: reported, not hidden.
  std::vector<float> huge(q.size(), 1e30f);
  CHECK(covattn_cov_readout(s.get(), huge.data(), n_q, 1.0f, o, lz.data(), nullptr) ==
        COVATTN_ERR_NONFINITE);
  CHECK(s.Unchanged(before));
}

TEST_CASE("export: argument checks and optional outputs") {
  Cache cache(20);
  CallerState s(9), empty(10);
  s.Fill(cache, 20);
  std::vector<float> a(kDim * kDim), b(kDim * kDim);
  double w = -1.0;
  CHECK(covattn_cov_state_export(nullptr, 0, &w, nullptr, nullptr, nullptr, nullptr) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_export(s.get(), kHeads, &w, nullptr, nullptr, nullptr, nullptr) ==
        COVATTN_ERR_INVALID_RANGE);
  CHECK(covattn_cov_state_export(empty.get(), 0, &w, nullptr, nullptr, nullptr, nullptr) ==
        COVATTN_ERR_EMPTY_STATE);
  CHECK(covattn_cov_state_export(s.get(), 0, nullptr, a.data(), a.data() + 3, nullptr, nullptr) ==
        COVATTN_ERR_ALIASING);
  CHECK(covattn_cov_state_export(s.get(), 0, nullptr, nullptr, nullptr, a.data(), a.data()) ==
        COVATTN_ERR_ALIASING);
  CHECK(covattn_cov_state_export(s.get(), 0, reinterpret_cast<double*>(a.data() + 1), nullptr,
                                 nullptr, nullptr, nullptr) == COVATTN_ERR_MISALIGNED);
  CHECK(w == -1.0);
  CHECK(covattn_cov_state_export(s.get(), 1, &w, nullptr, nullptr, nullptr, b.data()) ==
        COVATTN_OK);
  CHECK(w == 20.0);
  CHECK(covattn_cov_state_export(s.get(), 1, nullptr, nullptr, nullptr, nullptr, nullptr) ==
        COVATTN_OK);
}

TEST_CASE("serialize: argument checks") {
  Cache cache(20);
  CallerState s(11);
  s.Fill(cache, 20);
  size_t bytes = 0, written = 99;
  CHECK(covattn_cov_state_serialized_size(nullptr, &bytes) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_serialized_size(s.get(), nullptr) == COVATTN_ERR_NULL_POINTER);
  REQUIRE(covattn_cov_state_serialized_size(s.get(), &bytes) == COVATTN_OK);
  CHECK(bytes == 64 + kHeads * (8 * (1 + 2 * kDim) + 8 * kDim * kDim) + 8);
  std::vector<uint8_t> file(bytes, 0x5A);
  CHECK(covattn_cov_state_serialize(nullptr, file.data(), bytes, &written) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_serialize(s.get(), nullptr, bytes, &written) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_serialize(s.get(), file.data(), bytes - 1, &written) ==
        COVATTN_ERR_BUFFER_TOO_SMALL);
  CHECK(covattn_cov_state_serialize(s.get(), s.memory() + 100, bytes, &written) ==
        COVATTN_ERR_ALIASING);
  CHECK(written == 99);
  CHECK(std::all_of(file.begin(), file.end(), [](uint8_t x) { return x == 0x5A; }));
}

// Loading: every corrupt, truncated, foreign or mismatched file is refused
// and leaves the destination, which holds tokens of its own, untouched.
class LoadTest {
 public:
  LoadTest() : cache_(60), dst_(13, 0.95f) {
    StatePtr source = MakeState(kHeads, kDim, 0.95f);
    Update(source.get(), cache_.view(), 0, 60);
    good_ = Serialize(source.get());
    dst_.Fill(cache_, 7);
    before_ = dst_.Snapshot();
  }

 protected:
  void Expect(const std::vector<uint8_t>& file, covattn_status status, size_t size) {
    CHECK(covattn_cov_state_load(dst_.get(), file.data(), size) == status);
    CHECK(dst_.Unchanged(before_));
  }
  void ExpectFile(const std::vector<uint8_t>& file, covattn_status status) {
    Expect(file, status, file.size());
  }
  // The good file with one field replaced and the checksum made valid again.
  template <typename T>
  void ExpectPatched(size_t offset, T value, covattn_status status) {
    std::vector<uint8_t> f = good_;
    Put(f, offset, value);
    Reseal(f);
    INFO("patched offset " << offset);
    ExpectFile(f, status);
  }

  Cache cache_;
  CallerState dst_;
  std::vector<uint8_t> good_, before_;
};

TEST_CASE_FIXTURE(LoadTest, "load: null pointers and every truncation") {
  CHECK(covattn_cov_state_load(nullptr, good_.data(), good_.size()) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_load(dst_.get(), nullptr, good_.size()) == COVATTN_ERR_NULL_POINTER);
  for (size_t size = 0; size < good_.size(); ++size) {
    INFO("size " << size);
    Expect(good_, COVATTN_ERR_TRUNCATED, size);
  }
}

TEST_CASE_FIXTURE(LoadTest, "load: foreign data, other versions, inconsistent headers") {
  for (size_t i = 0; i < 8; ++i) {
    std::vector<uint8_t> f = good_;
    f[i] ^= 0x20;
    ExpectFile(f, COVATTN_ERR_BAD_MAGIC);
    Expect(f, COVATTN_ERR_BAD_MAGIC, i + 1);  // a truncated foreign file is foreign
  }
  for (uint32_t version : {0u, 2u, 0xFFFFFFFFu}) ExpectPatched(8, version, COVATTN_ERR_VERSION);
  auto corrupt_header = [&](size_t offset, auto value) {
    ExpectPatched(offset, value, COVATTN_ERR_CORRUPT);
  };
  corrupt_header(12, uint32_t{63});  // header size
  corrupt_header(36, uint32_t{2});   // an unknown flag
  // A state with independent heads (the bounded cache's summary) is a
  // different kind of state: valid, but not this destination's.
  ExpectPatched(36, uint32_t{1}, COVATTN_ERR_SHAPE_MISMATCH);
  corrupt_header(16, uint64_t{0});           // n_heads
  corrupt_header(16, uint64_t{1} << 62);     // absurd n_heads: sizes overflow
  corrupt_header(16, uint64_t{kHeads + 1});  // disagrees with the payload
  corrupt_header(24, uint64_t{0});           // head_dim
  corrupt_header(24, uint64_t{COVATTN_MAX_HEAD_DIM + 1});
  corrupt_header(32, 0.0f);  // forgetting
  corrupt_header(32, 1.5f);
  corrupt_header(32, std::nanf(""));
  corrupt_header(48, uint64_t{12345});                  // payload elements
  corrupt_header(56, uint64_t{good_.size() - 72 + 4});  // payload bytes
  std::vector<uint8_t> longer = good_;
  longer.push_back(0);
  ExpectFile(longer, COVATTN_ERR_CORRUPT);  // trailing bytes
}

TEST_CASE_FIXTURE(LoadTest, "load: any changed bit fails the checksum") {
  // From the token count on (the fields before it are checked first).
  for (size_t byte = 42; byte < good_.size(); byte += 29) {
    std::vector<uint8_t> f = good_;
    f[byte] ^= static_cast<uint8_t>(1u << (byte % 8));
    INFO("byte " << byte);
    ExpectFile(f, COVATTN_ERR_CHECKSUM);
  }
  std::vector<uint8_t> f = good_;
  f.back() ^= 0x80;
  ExpectFile(f, COVATTN_ERR_CHECKSUM);
}

TEST_CASE_FIXTURE(LoadTest, "load: values no update could produce, with a valid checksum") {
  auto corrupt_value = [&](size_t offset, auto value) {
    ExpectPatched(offset, value, COVATTN_ERR_CORRUPT);
  };
  corrupt_value(MomentOffset(1, 3, 20), std::nanf(""));
  corrupt_value(MomentOffset(0, 0, 0), INFINITY);
  corrupt_value(MeanOffset(1, 2), std::nan(""));
  corrupt_value(MeanOffset(0, kDim + 1), -std::numeric_limits<double>::infinity());
  corrupt_value(WeightOffset(0), -1.0);  // negative weight
  for (double w : {1e9, 0.5, 0.0}) {     // above the token count, below one token, none
    std::vector<uint8_t> f = good_;
    for (size_t h = 0; h < kHeads; ++h) Put(f, WeightOffset(h), w);
    Reseal(f);
    INFO("weight " << w);
    ExpectFile(f, COVATTN_ERR_CORRUPT);
  }
  corrupt_value(MomentOffset(0, 2, 5), 3.0f);   // C_kk no longer symmetric
  corrupt_value(MomentOffset(0, 4, 4), -1.0f);  // negative variance, kept symmetric
  double w;                                     // heads that saw different weights
  std::memcpy(&w, good_.data() + WeightOffset(1), 8);
  corrupt_value(WeightOffset(1), w * 0.5);
  corrupt_value(40, uint64_t{0});  // "no tokens" with statistics
}

TEST_CASE_FIXTURE(LoadTest, "load: a valid file for another shape, or inside the destination") {
  StatePtr other = MakeState(kHeads, kDim, 0.5f);
  CHECK(covattn_cov_state_load(other.get(), good_.data(), good_.size()) ==
        COVATTN_ERR_SHAPE_MISMATCH);
  StatePtr heads = MakeState(kHeads + 1, kDim, 0.95f), dims = MakeState(kHeads, kDim + 1, 0.95f);
  CHECK(covattn_cov_state_load(heads.get(), good_.data(), good_.size()) ==
        COVATTN_ERR_SHAPE_MISMATCH);
  CHECK(covattn_cov_state_load(dims.get(), good_.data(), good_.size()) ==
        COVATTN_ERR_SHAPE_MISMATCH);
  // In the workspace at the end of the state's memory, which holds no state.
  unsigned char* inside = dst_.memory() + dst_.bytes() - good_.size();
  std::memcpy(inside, good_.data(), good_.size());
  CHECK(covattn_cov_state_load(dst_.get(), inside, good_.size()) == COVATTN_ERR_ALIASING);
}

TEST_CASE_FIXTURE(LoadTest, "load: valid files load, a full state and an empty one") {
  CHECK(covattn_cov_state_load(dst_.get(), good_.data(), good_.size()) == COVATTN_OK);
  CHECK(Serialize(dst_.get()) == good_);
  StatePtr empty = MakeState(kHeads, kDim, 0.95f);
  const std::vector<uint8_t> empty_file = Serialize(empty.get());
  CHECK(covattn_cov_state_load(dst_.get(), empty_file.data(), empty_file.size()) == COVATTN_OK);
  covattn_cov_info info;
  REQUIRE(covattn_cov_state_info(dst_.get(), &info) == COVATTN_OK);
  CHECK(info.n_tokens == 0);
}

TEST_CASE("info: argument checks") {
  StatePtr s = MakeState(3, 5, 0.25f);
  covattn_cov_info info;
  CHECK(covattn_cov_state_info(nullptr, &info) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cov_state_info(s.get(), nullptr) == COVATTN_ERR_NULL_POINTER);
  REQUIRE(covattn_cov_state_info(s.get(), &info) == COVATTN_OK);
  CHECK(info.n_heads == 3);
  CHECK(info.head_dim == 5);
  CHECK(info.forgetting == 0.25f);
  CHECK(info.n_tokens == 0);
  CHECK(covattn_cov_state_reset(nullptr) == COVATTN_ERR_NULL_POINTER);
}

TEST_CASE("a handle that is not a state is refused by every entry point, which write nothing") {
  // The state's magic used to be neither set nor checked: any memory passed
  // as a state was read (and written) as one.
  Cache cache(20);
  CallerState good(3);
  good.Fill(cache, 20);
  std::vector<uint64_t> junk(good.bytes() / 8, 0);  // zeros: what a cleared buffer holds
  auto* bad = reinterpret_cast<covattn_cov_state*>(junk.data());
  const std::vector<uint64_t> junk0 = junk;
  const std::vector<uint8_t> good0 = good.Snapshot();
  const covattn_kv_cache block = cache.view();
  std::vector<float> q(kHeads * kDim, 0.5f), out(kHeads * kDim), mean(kDim);
  std::vector<uint8_t> file = Serialize(good.get());
  covattn_cov_info info;
  size_t bytes = 0;
  double weight = 0.0;
  CHECK(covattn_cov_state_reset(bad) == COVATTN_ERR_CORRUPT);
  CHECK(covattn_cov_state_info(bad, &info) == COVATTN_ERR_CORRUPT);
  std::vector<uint8_t> w = CovScratch(good.get());
  CHECK(covattn_cov_state_update(bad, &block, w.data(), w.size()) == COVATTN_ERR_CORRUPT);
  CHECK(covattn_cov_state_merge(bad, good.get(), w.data(), w.size()) == COVATTN_ERR_CORRUPT);
  CHECK(covattn_cov_state_merge(good.get(), bad, w.data(), w.size()) == COVATTN_ERR_CORRUPT);
  CHECK(covattn_cov_readout(bad, q.data(), kHeads, 0.0f, out.data(), nullptr, nullptr) ==
        COVATTN_ERR_CORRUPT);
  CHECK(covattn_cov_state_export(bad, 0, &weight, mean.data(), nullptr, nullptr, nullptr) ==
        COVATTN_ERR_CORRUPT);
  CHECK(covattn_cov_state_serialized_size(bad, &bytes) == COVATTN_ERR_CORRUPT);
  CHECK(covattn_cov_state_serialize(bad, file.data(), file.size(), nullptr) == COVATTN_ERR_CORRUPT);
  CHECK(covattn_cov_state_load(bad, file.data(), file.size()) == COVATTN_ERR_CORRUPT);
  covattn_cov_state_destroy(bad);
  CHECK(junk == junk0);
  CHECK(good.Unchanged(good0));
  CHECK(file == Serialize(good.get()));
}

TEST_CASE("destroy leaves a state in caller memory as it was, and usable") {
  Cache cache(40);
  CallerState s(5);
  s.Fill(cache, 20);
  const std::vector<uint8_t> before = s.Snapshot();
  covattn_cov_state_destroy(s.get());
  CHECK(s.Unchanged(before));
  s.Fill(cache, 20);
  covattn_cov_info info;
  REQUIRE(covattn_cov_state_info(s.get(), &info) == COVATTN_OK);
  CHECK(info.n_tokens == 40);
}
