// Shared machinery of the fuzz targets: reading arguments from the fuzz
// input, element values with controlled magnitudes and planted specials,
// exactly sized heap blocks whose unused bytes are poisoned for ASan, and an
// independent model of the tensor rules of covattn.h that says which error
// statuses a call may return.
//
// Every target follows one pattern: build a call from the input, ask the
// model which statuses are legitimate, make sure memory behind every tensor
// a valid call would touch really exists (otherwise force a failure the
// library must detect before touching anything), call, then check the status
// and that nothing outside the outputs changed.
#ifndef COVATTN_TESTS_FUZZ_FUZZ_UTIL_H_
#define COVATTN_TESTS_FUZZ_FUZZ_UTIL_H_

#include <sanitizer/asan_interface.h>  // the poisoning macros are no-ops without ASan

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "covattn/covattn.h"
#include "float16.h"  // tests/: the encoders and decoders of 16-bit elements

// Aborts with a message; libFuzzer then saves the input as a crash.
#define FUZZ_CHECK(cond, ...)                                                                  \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "\nfuzz check failed at %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                       \
      std::fputc('\n', stderr);                                                                \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

namespace covattn_fuzz {

using u128 = unsigned __int128;

// ---------------------------------------------------------------------------
// Reading the fuzz input: little-endian fields from the front, zeros once it
// is exhausted (so every input, even an empty one, is a complete call).

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  uint8_t U8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint64_t Bytes(int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t{U8()} << (8 * i);
    return v;
  }
  uint16_t U16() { return static_cast<uint16_t>(Bytes(2)); }
  uint32_t U32() { return static_cast<uint32_t>(Bytes(4)); }
  uint64_t U64() { return Bytes(8); }

  // A count or stride. The first byte picks the kind: below 0xA0 a small
  // value (13 bits, reduced modulo small_limit + 1), then edge values around
  // powers of two and the top of size_t, then raw 32- and 64-bit values.
  size_t Size(size_t small_limit) {
    static constexpr size_t kEdges[] = {0,
                                        1,
                                        2,
                                        3,
                                        4,
                                        7,
                                        8,
                                        15,
                                        16,
                                        17,
                                        31,
                                        32,
                                        33,
                                        63,
                                        64,
                                        65,
                                        127,
                                        128,
                                        255,
                                        256,
                                        511,
                                        512,
                                        513,
                                        1023,
                                        1024,
                                        4095,
                                        4096,
                                        65535,
                                        65536,
                                        size_t{1} << 31,
                                        size_t{1} << 32,
                                        (size_t{1} << 32) - 1,
                                        (size_t{1} << 32) + 1,
                                        size_t{1} << 48,
                                        size_t{1} << 61,
                                        size_t{1} << 62,
                                        size_t{1} << 63,
                                        SIZE_MAX,
                                        SIZE_MAX - 1,
                                        SIZE_MAX / 2,
                                        SIZE_MAX / 2 + 1,
                                        SIZE_MAX / 4,
                                        SIZE_MAX / 4 + 1,
                                        SIZE_MAX / 8 + 1,
                                        SIZE_MAX / 16,
                                        SIZE_MAX / 3};
    const uint8_t kind = U8();
    if (kind < 0xA0) {
      const size_t v = (size_t{kind & 31u} << 8) | U8();
      return v % (small_limit + 1);
    }
    if (kind < 0xC0) return kEdges[U8() % (sizeof(kEdges) / sizeof(kEdges[0]))];
    if (kind < 0xE0) return U32();
    return U64();
  }

  // A float that is mostly ordinary and sometimes special.
  float Float() {
    const uint8_t kind = U8();
    if (kind < 0xC0) return static_cast<float>(static_cast<int8_t>(U8())) / 16.0f;
    if (kind < 0xF0) return Special(U8());
    const uint32_t bits = U32();
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  }

  static float Special(uint8_t index) {
    constexpr float kInf = std::numeric_limits<float>::infinity();
    static const float kSpecials[] = {0.0f,
                                      -0.0f,
                                      std::numeric_limits<float>::quiet_NaN(),
                                      -std::numeric_limits<float>::quiet_NaN(),
                                      kInf,
                                      -kInf,
                                      std::numeric_limits<float>::max(),
                                      std::numeric_limits<float>::lowest(),
                                      1e30f,
                                      -1e30f,
                                      1e19f,
                                      -1e19f,
                                      std::numeric_limits<float>::min(),
                                      std::numeric_limits<float>::denorm_min(),
                                      -std::numeric_limits<float>::denorm_min(),
                                      1e-40f,
                                      65504.0f,
                                      65520.0f,  // the smallest f32 that rounds to f16 inf
                                      -65536.0f,
                                      6e-8f,  // about the smallest f16 subnormal
                                      1.0f,
                                      -1.0f,
                                      1e4f,
                                      -1e4f};
    return kSpecials[index % (sizeof(kSpecials) / sizeof(kSpecials[0]))];
  }

  size_t remaining() const { return size_ - pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// SplitMix64: bulk element values from a seed in the input, so that large
// tensors do not need large inputs.
struct Prng {
  uint64_t state;
  uint64_t Next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * (1.0 / 9007199254740992.0); }
};

// ---------------------------------------------------------------------------
// Element types, written here independently of the library.

inline size_t ElemSize(uint32_t dtype) {
  return dtype == COVATTN_F32                              ? 4
         : (dtype == COVATTN_F16 || dtype == COVATTN_BF16) ? 2
         : dtype == COVATTN_INT8                           ? 1
                                                           : 0;
}

// Element `index` of a tensor of `dtype` at `base`.
inline double LoadElement(const void* base, uint32_t dtype, size_t index) {
  const uint8_t* p = static_cast<const uint8_t*>(base) + index * ElemSize(dtype);
  if (dtype == COVATTN_F32) {
    float f;
    std::memcpy(&f, p, sizeof(f));
    return f;
  }
  if (dtype == COVATTN_INT8) return static_cast<int8_t>(*p);  // without its scale
  uint16_t bits;
  std::memcpy(&bits, p, sizeof(bits));
  return dtype == COVATTN_F16 ? covattn_test::DoubleFromF16(bits)
                              : covattn_test::DoubleFromBF16(bits);
}

inline void StoreElement(void* base, uint32_t dtype, size_t index, float value) {
  uint8_t* p = static_cast<uint8_t*>(base) + index * ElemSize(dtype);
  if (dtype == COVATTN_F32) {
    std::memcpy(p, &value, sizeof(value));
    return;
  }
  if (dtype == COVATTN_INT8) {  // saturated; NaN as 0 (int8 has no special values)
    const float clamped = std::isnan(value) ? 0.0f : std::fmin(127.0f, std::fmax(-128.0f, value));
    *p = static_cast<uint8_t>(static_cast<int8_t>(std::nearbyint(clamped)));
    return;
  }
  const uint16_t bits = dtype == COVATTN_F16 ? covattn_test::F16FromDouble(value)
                                             : covattn_test::BF16FromFloat(value);
  std::memcpy(p, &bits, sizeof(bits));
}

inline void StoreBits(void* base, uint32_t dtype, size_t index, uint32_t bits) {
  uint8_t* p = static_cast<uint8_t*>(base) + index * ElemSize(dtype);
  if (dtype == COVATTN_F32) {
    std::memcpy(p, &bits, 4);
  } else if (dtype == COVATTN_INT8) {
    *p = static_cast<uint8_t>(bits);
  } else {
    const uint16_t b = static_cast<uint16_t>(bits);
    std::memcpy(p, &b, 2);
  }
}

// ---------------------------------------------------------------------------
// Statuses a call may legitimately return, as a set of error codes.

class StatusSet {
 public:
  void Add(covattn_status s) { bits_ |= uint64_t{1} << (-static_cast<int>(s) & 63); }
  bool Has(covattn_status s) const {
    return s < 0 && (bits_ >> (-static_cast<int>(s) & 63) & 1) != 0;
  }
  bool empty() const { return bits_ == 0; }
  // The codes, for messages.
  void Print(char* buf, size_t size) const {
    size_t n = 0;
    buf[0] = '\0';
    for (int code = 1; code < 64 && n + 8 < size; ++code) {
      if (bits_ >> code & 1)
        n += static_cast<size_t>(std::snprintf(buf + n, size - n, "%d ", -code));
    }
  }

 private:
  uint64_t bits_ = 0;
};

// ---------------------------------------------------------------------------
// Tensors: n_outer x n_inner vectors of `dim` contiguous elements, vector
// (a, b) at element a * outer_stride + b * inner_stride (covattn.h).

struct Tensor {
  const void* base = nullptr;
  size_t elem = 4;
  size_t n_outer = 0, outer_stride = 0, n_inner = 0, inner_stride = 0, dim = 0;

  bool Empty() const { return n_outer == 0 || n_inner == 0 || dim == 0; }
  // Elements from the first to one past the last; exact up to 2^100, which
  // is far beyond anything size_t can hold (so the sum cannot wrap).
  static u128 Saturated(u128 x) { return std::min(x, u128{1} << 100); }
  u128 SpanElements() const {
    return Saturated(u128(n_outer - 1) * outer_stride) +
           Saturated(u128(n_inner - 1) * inner_stride) + dim;
  }
  u128 SpanBytes() const { return SpanElements() * elem; }
  // True when, strides sorted, each axis with more than one vector steps
  // over everything the smaller ones span: the rule covattn.h states.
  bool Nested() const {
    struct Axis {
      size_t count, stride;
    } axes[2] = {{n_outer, outer_stride}, {n_inner, inner_stride}};
    if (axes[0].stride > axes[1].stride) std::swap(axes[0], axes[1]);
    u128 span = dim;
    for (const Axis& a : axes) {
      if (a.count == 1) continue;
      if (u128(a.stride) < span) return false;
      span += Saturated(u128(a.count - 1) * a.stride);
    }
    return true;
  }
  // Element offset of vector (a, b).
  size_t Offset(size_t a, size_t b) const { return a * outer_stride + b * inner_stride; }
};

// A tensor shape without memory yet (base is set by Place).
inline Tensor Shape(size_t elem, size_t n_outer, size_t outer_stride, size_t n_inner,
                    size_t inner_stride, size_t dim) {
  Tensor t;
  t.elem = elem;
  t.n_outer = n_outer, t.outer_stride = outer_stride;
  t.n_inner = n_inner, t.inner_stride = inner_stride;
  t.dim = dim;
  return t;
}

// Byte range of a tensor, empty for an empty tensor; valid only when the
// tensor passed TensorErrors.
struct Range {
  u128 begin = 0, end = 0;
  bool Overlaps(const Range& o) const {
    return begin < end && o.begin < o.end && begin < o.end && o.begin < end;
  }
};

inline Range RangeOf(const Tensor& t) {
  if (t.Empty()) return Range{};
  const u128 begin = reinterpret_cast<uintptr_t>(t.base);
  return Range{begin, begin + t.SpanBytes()};
}

inline Range RangeOfBytes(const void* p, size_t bytes) {
  const u128 begin = reinterpret_cast<uintptr_t>(p);
  return Range{begin, begin + bytes};
}

// The errors the tensor rules allow for one tensor; false if there is any.
inline bool TensorErrors(const Tensor& t, StatusSet* errors) {
  if (t.Empty()) return true;
  if (t.base == nullptr) {
    errors->Add(COVATTN_ERR_NULL_POINTER);
    return false;
  }
  if (reinterpret_cast<uintptr_t>(t.base) % t.elem != 0) {
    errors->Add(COVATTN_ERR_MISALIGNED);
    return false;
  }
  bool ok = true;
  if (!t.Nested()) {
    errors->Add(COVATTN_ERR_INVALID_STRIDE);
    ok = false;
  }
  const u128 bytes = t.SpanBytes();
  if (bytes > SIZE_MAX || u128(reinterpret_cast<uintptr_t>(t.base)) + bytes > UINTPTR_MAX) {
    errors->Add(COVATTN_ERR_SIZE_OVERFLOW);
    ok = false;
  }
  return ok;
}

// Checks the model against brute force on small tensors: vectors that
// overlap must be reported as a stride error.
inline void CheckStrideModel(const Tensor& t) {
  if (t.Empty() || u128(t.n_outer) * t.n_inner > 256) return;
  StatusSet errors;
  TensorErrors(Tensor{reinterpret_cast<const void*>(uintptr_t{64}), 1, t.n_outer, t.outer_stride,
                      t.n_inner, t.inner_stride, t.dim},
               &errors);
  bool overlap = false;
  for (size_t a = 0; a < t.n_outer && !overlap; ++a)
    for (size_t b = 0; b < t.n_inner && !overlap; ++b)
      for (size_t c = 0; c < t.n_outer && !overlap; ++c)
        for (size_t e = 0; e < t.n_inner && !overlap; ++e) {
          if (a == c && b == e) continue;
          const u128 x = u128(a) * t.outer_stride + u128(b) * t.inner_stride;
          const u128 y = u128(c) * t.outer_stride + u128(e) * t.inner_stride;
          overlap = x < y + t.dim && y < x + t.dim;
        }
  FUZZ_CHECK(!overlap || errors.Has(COVATTN_ERR_INVALID_STRIDE),
             "overlapping vectors pass the stride model");
}

// ---------------------------------------------------------------------------
// Memory: exactly sized heap blocks, so that ASan reports any access past
// their end, with bytes no tensor uses poisoned so that reads of them are
// reported too.

class Block {
 public:
  Block() = default;
  explicit Block(size_t size)
      : size_(size), data_(static_cast<uint8_t*>(std::malloc(size ? size : 1))) {}
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  Block(Block&& o) noexcept { *this = std::move(o); }
  Block& operator=(Block&& o) noexcept {
    std::swap(size_, o.size_);
    std::swap(data_, o.data_);
    return *this;
  }
  ~Block() {
    if (data_ != nullptr) {
      ASAN_UNPOISON_MEMORY_REGION(data_, size_);
      std::free(data_);
    }
  }
  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  size_t size_ = 0;
  uint8_t* data_ = nullptr;
};

// Where a tensor's pointer comes from.
enum class Placement : uint8_t {
  kExact,  // an exactly sized block (after a misalignment prefix)
  kNull,
  kWild,  // an arbitrary address: only ever passed to a call that must fail
};

// A tensor with the memory behind it, if any.
struct TensorBuffer {
  Tensor t;
  Block block;                // empty when the tensor is not backed
  bool backed = false;        // every vector lies inside `block` (or the one shared)
  bool shares_block = false;  // lives in another buffer's block, which snapshots it
  bool used = false;          // passed to the call at all
  std::vector<uint8_t> snapshot;

  // True when the call may touch it: empty, or backed by real memory.
  bool Usable() const { return t.Empty() || backed; }

  uint8_t* data() const { return const_cast<uint8_t*>(static_cast<const uint8_t*>(t.base)); }
  // Unpoisons the vectors (everything else in the block stays poisoned).
  void PoisonGaps() {
    if (!backed) return;
    if (!shares_block) ASAN_POISON_MEMORY_REGION(block.data(), block.size());
    ForEachVector([&](size_t offset) {
      ASAN_UNPOISON_MEMORY_REGION(data() + offset * t.elem, t.dim * t.elem);
    });
  }
  void Unpoison() {
    if (backed && !shares_block) ASAN_UNPOISON_MEMORY_REGION(block.data(), block.size());
  }
  template <class F>
  void ForEachVector(F&& f) const {
    if (t.Empty()) return;
    for (size_t a = 0; a < t.n_outer; ++a)
      for (size_t b = 0; b < t.n_inner; ++b) f(t.Offset(a, b));
  }
  void Snapshot() {
    if (backed && !shares_block) snapshot.assign(block.data(), block.data() + block.size());
  }
  // Element i of an f32 tensor as it was at Snapshot().
  float SnapshotFloat(size_t i) const {
    float f;
    std::memcpy(&f, snapshot.data() + (data() - block.data()) + 4 * i, sizeof(f));
    return f;
  }
  bool Unchanged() const {
    return !backed || shares_block || block.size() == 0 ||
           std::memcmp(snapshot.data(), block.data(), block.size()) == 0;
  }
  // True when bytes outside the vectors are as they were.
  bool GapsUnchanged() const {
    if (!backed || shares_block) return true;
    std::vector<uint8_t> writable(block.size(), 0);
    const size_t prefix = static_cast<size_t>(data() - block.data());
    ForEachVector([&](size_t offset) {
      std::fill_n(writable.begin() + prefix + offset * t.elem, t.dim * t.elem, 1);
    });
    for (size_t i = 0; i < block.size(); ++i) {
      if (!writable[i] && block.data()[i] != snapshot[i]) return false;
    }
    return true;
  }
};

// Largest block a fuzz input may ask for.
constexpr size_t kMaxBlockBytes = size_t{1} << 18;

// Gives `buf` memory according to `placement`: an exact block of the
// tensor's extent after `misalign` bytes when that extent is small enough;
// otherwise (or for kNull / kWild) the pointer is not backed.
inline void Place(TensorBuffer* buf, Placement placement, size_t misalign, uint64_t wild) {
  buf->backed = false;
  buf->block = Block();
  switch (placement) {
    case Placement::kNull:
      buf->t.base = nullptr;
      return;
    case Placement::kWild:
      buf->t.base = reinterpret_cast<const void*>(static_cast<uintptr_t>(wild));
      return;
    case Placement::kExact:
      break;
  }
  const u128 bytes = buf->t.Empty() ? 0 : buf->t.SpanBytes();
  if (bytes + misalign > kMaxBlockBytes || (!buf->t.Empty() && !buf->t.Nested())) {
    // Too big to back, or vectors that overlap (then there may be any number
    // of them in a small span): a small block stands in; the call must fail.
    buf->block = Block(64);
    ASAN_POISON_MEMORY_REGION(buf->block.data(), 64);
    buf->t.base = buf->block.data() + misalign % 64;
    return;
  }
  buf->block = Block(static_cast<size_t>(bytes) + misalign);
  buf->t.base = buf->block.data() + misalign;
  buf->backed = true;
}

inline Placement PlacementFrom(uint8_t byte) {
  // Mostly exact; null and wild now and then.
  const uint8_t p = byte % 16;
  return p < 13 ? Placement::kExact : p < 15 ? Placement::kNull : Placement::kWild;
}

// Fills every vector element of a backed tensor of `dtype` with values from
// the input: a magnitude class and a seed, then up to 7 planted specials.
inline void FillValues(ByteReader& in, TensorBuffer* buf, uint32_t dtype) {
  if (!buf->backed || buf->t.Empty()) return;
  static const double kMagnitudes[] = {1.0,  1e-2,  1e2,   1e4,   1e10, 1e19,    1e30,
                                       3e38, 1e-20, 1e-38, 1e-41, 0.0,  65504.0, 6e-8};
  const uint8_t mode = in.U8();
  const double magnitude = kMagnitudes[(mode >> 2) % (sizeof(kMagnitudes) / sizeof(double))];
  Prng rng{in.U64()};
  const size_t count_vectors = buf->t.n_outer * buf->t.n_inner;
  std::vector<size_t> offsets;
  offsets.reserve(count_vectors);
  buf->ForEachVector([&](size_t offset) { offsets.push_back(offset); });
  for (size_t offset : offsets) {
    for (size_t i = 0; i < buf->t.dim; ++i) {
      double x;
      switch (mode & 3) {
        case 0:  // uniform in [-magnitude, magnitude]
          x = magnitude * (2.0 * rng.Uniform() - 1.0);
          break;
        case 1:  // all equal
          x = magnitude;
          break;
        case 2:  // random signs
          x = (rng.Next() & 1) ? magnitude : -magnitude;
          break;
        default:  // small integers times the magnitude
          x = magnitude * static_cast<double>(static_cast<int>(rng.Next() % 7) - 3);
          break;
      }
      StoreElement(buf->data(), dtype, offset + i, static_cast<float>(x));
    }
  }
  const size_t planted = in.U8() % 8;
  const size_t elements = offsets.size() * buf->t.dim;
  for (size_t n = 0; n < planted; ++n) {
    const size_t e = in.U32() % elements;
    const size_t at = offsets[e / buf->t.dim] + e % buf->t.dim;
    const uint8_t kind = in.U8();
    if (kind < 0xC0) {
      StoreElement(buf->data(), dtype, at, ByteReader::Special(kind));
    } else {
      StoreBits(buf->data(), dtype, at, in.U32());
    }
  }
}

// Pins dispatch to one of the available targets, chosen by the input.
// Damages a serialized file as the input says: up to three truncations, bit
// flips or overwritten bytes. Returns how many damages were asked for.
inline size_t DamageFile(ByteReader& in, std::vector<uint8_t>* file) {
  const size_t damages = in.U8() % 4;
  std::vector<uint8_t>& f = *file;
  for (size_t n = 0; n < damages && !f.empty(); ++n) {
    const uint8_t kind = in.U8() % 3;
    if (kind == 0) f.resize(in.U32() % f.size());
    if (kind == 1 && !f.empty()) f[in.U32() % f.size()] ^= uint8_t(1u << (in.U8() % 8));
    if (kind == 2 && !f.empty()) f[in.U32() % f.size()] = in.U8();
  }
  return damages;
}

inline void PickTarget(ByteReader& in) {
  const size_t count = covattn_available_target_count();
  const uint8_t pick = in.U8();
  const char* name = covattn_available_target(pick % count);
  FUZZ_CHECK(covattn_restrict_targets(name) == COVATTN_OK, "cannot pin target %s", name);
}

inline const char* StatusName(covattn_status s) { return covattn_status_string(s); }

// COVATTN_FUZZ_VERBOSE=1 prints every call's status: to see what seeds do.
inline bool Verbose() {
  static const bool verbose = std::getenv("COVATTN_FUZZ_VERBOSE") != nullptr;
  return verbose;
}

inline void Report(const char* what, covattn_status status, const StatusSet& expected) {
  if (!Verbose()) return;
  char codes[256];
  expected.Print(codes, sizeof(codes));
  std::fprintf(stderr, "%s: status %d (%s); model: %s\n", what, status, StatusName(status),
               expected.empty() ? "valid" : codes);
}

}  // namespace covattn_fuzz

#endif  // COVATTN_TESTS_FUZZ_FUZZ_UTIL_H_
