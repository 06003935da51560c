// Every bad input to the attention entry points gets its own status, and a
// failed call writes nothing.
#include <doctest/doctest.h>

#include "test_util.h"

using namespace covattn_test;

namespace {

constexpr size_t kDim = 8, kTokens = 10, kKvHeads = 2, kQHeads = 4;
constexpr float kSentinel = 12345.0f;

// A valid decode/prefill setup that each case breaks in one way.
struct Setup {
  Setup() : cache(COVATTN_F32, Layout::kTokenMajor, kTokens, kKvHeads, kDim) {
    Rng rng(1);
    cache.FillRandom(rng);
    kv = cache.view();
    for (float& x : q) x = static_cast<float>(rng.Normal());
    size_t bytes = 0;
    REQUIRE(covattn_attention_scratch_size(kDim, &bytes) == COVATTN_OK);
    scratch.resize(bytes);
    out.assign(kQHeads * kDim, kSentinel);
    queries = covattn_queries{q.data(), 1, kQHeads, kQHeads * kDim, kDim};
    outputs = covattn_outputs{out.data(), kQHeads * kDim, kDim, nullptr};
  }
  covattn_status Decode() {
    return covattn_decode(&kv, q.data(), kQHeads, &options, out.data(), scratch.data(),
                          scratch.size());
  }
  covattn_status Prefill(size_t n_past = kTokens - 1) {
    return covattn_prefill(&kv, &queries, n_past, &options, &outputs, scratch.data(),
                           scratch.size());
  }
  bool OutUntouched() const {
    for (float x : out)
      if (x != kSentinel) return false;
    return true;
  }

  TestCache cache;
  covattn_kv_cache kv;
  std::vector<float> q = std::vector<float>(kQHeads * kDim);
  std::vector<float> out;
  std::vector<uint8_t> scratch;
  covattn_queries queries;
  covattn_outputs outputs;
  covattn_attention_options options{0.0f, 0, 0, nullptr};
};

}  // namespace

TEST_CASE("the valid setup succeeds") {
  Setup s;
  CHECK(s.Decode() == COVATTN_OK);
  Setup t;
  CHECK(t.Prefill() == COVATTN_OK);
}

TEST_CASE("null pointers") {
  Setup s;
  CHECK(covattn_decode(nullptr, s.q.data(), kQHeads, nullptr, s.out.data(), s.scratch.data(),
                       s.scratch.size()) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_decode(&s.kv, nullptr, kQHeads, nullptr, s.out.data(), s.scratch.data(),
                       s.scratch.size()) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_decode(&s.kv, s.q.data(), kQHeads, nullptr, nullptr, s.scratch.data(),
                       s.scratch.size()) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_prefill(&s.kv, nullptr, 0, nullptr, &s.outputs, s.scratch.data(),
                        s.scratch.size()) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_prefill(&s.kv, &s.queries, 0, nullptr, nullptr, s.scratch.data(),
                        s.scratch.size()) == COVATTN_ERR_NULL_POINTER);
  s.kv.k = nullptr;
  CHECK(s.Decode() == COVATTN_ERR_NULL_POINTER);
  s.kv = s.cache.view();
  s.kv.v = nullptr;
  CHECK(s.Prefill() == COVATTN_ERR_NULL_POINTER);
  s.kv = s.cache.view();
  s.outputs.data = nullptr;
  CHECK(s.Prefill() == COVATTN_ERR_NULL_POINTER);
  size_t bytes;
  CHECK(covattn_attention_scratch_size(kDim, nullptr) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_attention_scratch_size(0, &bytes) == COVATTN_ERR_INVALID_HEAD_DIM);
  CHECK(s.OutUntouched());
}

TEST_CASE("element type, head dim and head counts") {
  Setup s;
  s.kv.dtype = 4;  // the first value after COVATTN_INT8
  CHECK(s.Decode() == COVATTN_ERR_UNSUPPORTED_DTYPE);
  s.kv.dtype = COVATTN_INT8;  // an f32 cache's bytes, but no scales
  CHECK(s.Decode() == COVATTN_ERR_NULL_POINTER);
  s.kv.dtype = 0xFFFFFFFFu;
  CHECK(s.Prefill() == COVATTN_ERR_UNSUPPORTED_DTYPE);
  s.kv = s.cache.view();
  s.kv.head_dim = 0;
  CHECK(s.Decode() == COVATTN_ERR_INVALID_HEAD_DIM);
  s.kv.head_dim = COVATTN_MAX_HEAD_DIM + 1;
  CHECK(s.Decode() == COVATTN_ERR_INVALID_HEAD_DIM);
  s.kv = s.cache.view();
  s.kv.n_heads = 0;
  CHECK(s.Decode() == COVATTN_ERR_INVALID_HEAD_COUNT);
  s.kv = s.cache.view();
  CHECK(covattn_decode(&s.kv, s.q.data(), 0, nullptr, s.out.data(), s.scratch.data(),
                       s.scratch.size()) == COVATTN_ERR_INVALID_HEAD_COUNT);
  CHECK(covattn_decode(&s.kv, s.q.data(), 3, nullptr, s.out.data(), s.scratch.data(),
                       s.scratch.size()) == COVATTN_ERR_HEAD_MISMATCH);
  CHECK(s.OutUntouched());
}

TEST_CASE("strides, overflow and alignment") {
  Setup s;
  s.kv.k_head_stride = kDim - 1;  // head vectors overlap
  CHECK(s.Decode() == COVATTN_ERR_INVALID_STRIDE);
  s.kv = s.cache.view();
  s.kv.v_token_stride = kDim;  // token t, head 1 == token t + 1, head 0
  CHECK(s.Decode() == COVATTN_ERR_INVALID_STRIDE);
  s.kv = s.cache.view();
  s.queries.head_stride = 0;
  CHECK(s.Prefill() == COVATTN_ERR_INVALID_STRIDE);
  s.queries.head_stride = kDim;
  s.outputs.head_stride = 2;
  CHECK(s.Prefill() == COVATTN_ERR_INVALID_STRIDE);
  s.outputs.head_stride = kDim;
  s.kv.k_token_stride = SIZE_MAX / 4;  // the extent overflows size_t
  CHECK(s.Decode() == COVATTN_ERR_SIZE_OVERFLOW);
  s.kv = s.cache.view();
  s.kv.n_tokens = SIZE_MAX;
  CHECK(s.Prefill(0) == COVATTN_ERR_SIZE_OVERFLOW);
  s.kv = s.cache.view();
  s.kv.k_token_stride = (SIZE_MAX / 2) / kTokens;  // fits size_t, wraps the address space
  s.kv.k_head_stride = kDim;
  CHECK(s.Decode() == COVATTN_ERR_SIZE_OVERFLOW);
  s.kv = s.cache.view();
  s.kv.k = static_cast<const uint8_t*>(s.kv.k) + 1;
  CHECK(s.Decode() == COVATTN_ERR_MISALIGNED);
  s.kv = s.cache.view();
  CHECK(covattn_decode(
            &s.kv, reinterpret_cast<const float*>(reinterpret_cast<const uint8_t*>(s.q.data()) + 2),
            kQHeads, nullptr, s.out.data(), s.scratch.data(),
            s.scratch.size()) == COVATTN_ERR_MISALIGNED);
  CHECK(s.OutUntouched());
}

TEST_CASE("outputs may not overlap inputs, each other or the scratch") {
  Setup s;
  float* k_as_out = const_cast<float*>(static_cast<const float*>(s.kv.k));
  CHECK(covattn_decode(&s.kv, s.q.data(), kQHeads, nullptr, k_as_out, s.scratch.data(),
                       s.scratch.size()) == COVATTN_ERR_ALIASING);
  CHECK(covattn_decode(&s.kv, s.q.data(), kQHeads, nullptr, s.q.data(), s.scratch.data(),
                       s.scratch.size()) == COVATTN_ERR_ALIASING);
  std::vector<float> log_z(kQHeads);
  s.outputs.log_z = s.out.data() + 4;
  CHECK(s.Prefill() == COVATTN_ERR_ALIASING);
  s.outputs.log_z = log_z.data();
  CHECK(covattn_prefill(&s.kv, &s.queries, kTokens - 1, nullptr, &s.outputs,
                        reinterpret_cast<uint8_t*>(s.out.data()),
                        s.scratch.size()) == COVATTN_ERR_ALIASING);
  CHECK(s.OutUntouched());
}

TEST_CASE("scale, positions, scratch size") {
  Setup s;
  s.options.scale = std::nanf("");
  CHECK(s.Decode() == COVATTN_ERR_INVALID_SCALE);
  s.options.scale = std::numeric_limits<float>::infinity();
  CHECK(s.Prefill() == COVATTN_ERR_INVALID_SCALE);
  s.options.scale = 0.0f;
  CHECK(s.Prefill(kTokens) == COVATTN_ERR_INVALID_POSITION);
  CHECK(s.Prefill(SIZE_MAX) == COVATTN_ERR_INVALID_POSITION);
  CHECK(covattn_decode(&s.kv, s.q.data(), kQHeads, nullptr, s.out.data(), s.scratch.data(),
                       s.scratch.size() - 1) == COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(covattn_decode(&s.kv, s.q.data(), kQHeads, nullptr, s.out.data(), nullptr,
                       s.scratch.size()) == COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(s.OutUntouched());
}

TEST_CASE("zero query tokens is a valid no-op") {
  Setup s;
  s.queries.n_tokens = 0;
  CHECK(s.Prefill(0) == COVATTN_OK);
  CHECK(s.OutUntouched());
}

TEST_CASE("partial states: ranges, shapes, aliasing, non-finite input") {
  Setup s;
  std::vector<float> m(kQHeads), l(kQHeads), o(kQHeads * kDim);
  covattn_partial state{m.data(), l.data(), o.data()};
  auto partial = [&](size_t begin, size_t end, const covattn_partial* st) {
    return covattn_prefill_partial(&s.kv, &s.queries, kTokens - 1, nullptr, begin, end, st,
                                   s.scratch.data(), s.scratch.size());
  };
  CHECK(partial(0, kTokens, &state) == COVATTN_OK);
  CHECK(partial(5, 4, &state) == COVATTN_ERR_INVALID_RANGE);
  CHECK(partial(0, kTokens + 1, &state) == COVATTN_ERR_INVALID_RANGE);
  CHECK(partial(0, kTokens, nullptr) == COVATTN_ERR_NULL_POINTER);
  covattn_partial overlapping{m.data(), m.data() + 1, o.data()};
  CHECK(partial(0, kTokens, &overlapping) == COVATTN_ERR_ALIASING);
  covattn_partial null_o{m.data(), l.data(), nullptr};
  CHECK(partial(0, kTokens, &null_o) == COVATTN_ERR_NULL_POINTER);

  std::vector<float> m2(kQHeads), l2(kQHeads), o2(kQHeads * kDim);
  covattn_partial other{m2.data(), l2.data(), o2.data()};
  CHECK(partial(0, 5, &other) == COVATTN_OK);
  const std::vector<float> o_before = o;
  CHECK(covattn_partial_merge(kQHeads, kDim, &state, &state) == COVATTN_ERR_ALIASING);
  CHECK(covattn_partial_merge(kQHeads, 0, &state, &other) == COVATTN_ERR_INVALID_HEAD_DIM);
  CHECK(covattn_partial_merge(kQHeads, kDim, nullptr, &other) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_partial_merge(SIZE_MAX / 2, kDim, &state, &other) == COVATTN_ERR_SIZE_OVERFLOW);
  o2[3] = std::nanf("");
  CHECK(covattn_partial_merge(kQHeads, kDim, &state, &other) == COVATTN_ERR_NONFINITE);
  CHECK(o == o_before);  // refused merges leave `into` as it was

  std::vector<float> out(kQHeads * kDim, kSentinel);
  CHECK(covattn_partial_finalize(kQHeads, kDim, &state, nullptr, nullptr) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_partial_finalize(kQHeads, kDim, &state, o.data(), nullptr) == COVATTN_ERR_ALIASING);
  CHECK(covattn_partial_finalize(kQHeads, kDim, &state, out.data(), out.data()) ==
        COVATTN_ERR_ALIASING);
  CHECK(covattn_partial_finalize(kQHeads, kDim, &state, out.data(), nullptr) == COVATTN_OK);
  CHECK(covattn_partial_finalize(kQHeads, kDim, &other, out.data(), nullptr) ==
        COVATTN_ERR_NONFINITE);
}

TEST_CASE("status strings exist for every status") {
  for (int code = -27; code <= 1; ++code) {
    const char* text = covattn_status_string(static_cast<covattn_status>(code));
    REQUIRE(text != nullptr);
    CHECK(std::string(text) != "unknown status");
  }
  CHECK(std::string(covattn_status_string(static_cast<covattn_status>(-31))) == "unknown status");
}

TEST_CASE("decode on an empty cache checks its arguments like any other decode") {
  // It used to skip the options and the scratch: a NaN scale or a missing
  // scratch was answered with zeros and COVATTN_FULLY_MASKED.
  Setup s;
  s.kv.n_tokens = 0;
  s.kv.k = s.kv.v = nullptr;
  CHECK(s.Decode() == COVATTN_FULLY_MASKED);
  for (float& x : s.out) CHECK(x == 0.0f);
  s.out.assign(s.out.size(), kSentinel);
  s.options.scale = std::nanf("");
  CHECK(s.Decode() == COVATTN_ERR_INVALID_SCALE);
  s.options.scale = 0.0f;
  CHECK(covattn_decode(&s.kv, s.q.data(), kQHeads, nullptr, s.out.data(), nullptr,
                       s.scratch.size()) == COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(covattn_decode(&s.kv, s.q.data(), kQHeads, nullptr, s.out.data(), s.scratch.data(), 1) ==
        COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(covattn_decode(&s.kv, s.q.data(), kQHeads, nullptr, s.out.data(),
                       reinterpret_cast<uint8_t*>(s.out.data()),
                       s.scratch.size()) == COVATTN_ERR_ALIASING);
  CHECK(s.OutUntouched());
}

TEST_CASE("misaligned outputs, log Z and 16-bit caches; any scratch alignment") {
  Setup s;
  float* odd = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(s.out.data()) + 1);
  CHECK(covattn_decode(&s.kv, s.q.data(), kQHeads, nullptr, odd, s.scratch.data(),
                       s.scratch.size()) == COVATTN_ERR_MISALIGNED);
  std::vector<float> log_z(kQHeads + 1);
  s.outputs.log_z = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(log_z.data()) + 2);
  CHECK(s.Prefill() == COVATTN_ERR_MISALIGNED);
  s.outputs.log_z = nullptr;
  CHECK(s.OutUntouched());

  TestCache half(COVATTN_F16, Layout::kTokenMajor, kTokens, kKvHeads, kDim);
  Rng rng(2);
  half.FillRandom(rng);
  s.kv = half.view();
  s.kv.v = static_cast<const uint8_t*>(s.kv.v) + 1;
  CHECK(s.Decode() == COVATTN_ERR_MISALIGNED);
  s.kv.v = static_cast<const uint8_t*>(half.view().v) + 2;  // aligned to 2 bytes: fine
  s.kv.n_tokens = kTokens - 1;  // so that the shifted view stays inside the buffer
  s.kv.v_token_stride = s.kv.k_token_stride;
  CHECK(s.Decode() == COVATTN_OK);

  // The scratch needs no alignment at all, only its size.
  Setup t;
  std::vector<uint8_t> scratch(t.scratch.size() + 7);
  for (size_t offset = 0; offset < 8; ++offset) {
    CHECK(covattn_decode(&t.kv, t.q.data(), kQHeads, nullptr, t.out.data(), scratch.data() + offset,
                         t.scratch.size()) == COVATTN_OK);
  }
}

TEST_CASE("sizes that overflow: queries, outputs, log Z, scratch, huge head counts") {
  Setup s;
  s.queries.token_stride = SIZE_MAX / 2;
  s.queries.n_tokens = 3;
  CHECK(s.Prefill(0) == COVATTN_ERR_SIZE_OVERFLOW);
  s.queries = covattn_queries{s.q.data(), 1, kQHeads, kQHeads * kDim, kDim};
  s.outputs.head_stride = SIZE_MAX / 8;
  CHECK(s.Prefill() == COVATTN_ERR_SIZE_OVERFLOW);
  s.outputs.head_stride = kDim;
  // A scratch whose end would wrap the address space.
  CHECK(covattn_decode(&s.kv, s.q.data(), kQHeads, nullptr, s.out.data(), s.scratch.data(),
                       SIZE_MAX) == COVATTN_ERR_SIZE_OVERFLOW);
  // Head counts whose product with head_dim overflows.
  s.kv.n_heads = SIZE_MAX / 4;
  CHECK(covattn_decode(&s.kv, s.q.data(), SIZE_MAX / 4, nullptr, s.out.data(), s.scratch.data(),
                       s.scratch.size()) == COVATTN_ERR_SIZE_OVERFLOW);
  s.kv = s.cache.view();
  CHECK(covattn_decode(&s.kv, s.q.data(), (SIZE_MAX / kDim) & ~size_t{1}, nullptr, s.out.data(),
                       s.scratch.data(), s.scratch.size()) == COVATTN_ERR_SIZE_OVERFLOW);
  CHECK(s.OutUntouched());
}

TEST_CASE("strides that run backwards are extents that overflow") {
  // Strides are unsigned: a "negative" stride is a huge one, and the tensor
  // then reaches past the end of the address space.
  Setup s;
  s.kv.k_token_stride = static_cast<size_t>(-static_cast<ptrdiff_t>(kKvHeads * kDim));
  CHECK(s.Decode() == COVATTN_ERR_SIZE_OVERFLOW);
  s.kv = s.cache.view();
  s.kv.v_head_stride = static_cast<size_t>(-static_cast<ptrdiff_t>(kDim));
  CHECK(s.Prefill() == COVATTN_ERR_SIZE_OVERFLOW);
  s.kv = s.cache.view();
  s.outputs.token_stride = static_cast<size_t>(-1);
  s.queries.n_tokens = 2;
  s.outputs.head_stride = kDim;
  CHECK(s.Prefill(kTokens - 2) == COVATTN_ERR_SIZE_OVERFLOW);
  CHECK(s.OutUntouched());
}

TEST_CASE("huge windows and sink counts mean no limit") {
  Setup a, b;
  a.options = covattn_attention_options{0.0f, SIZE_MAX, SIZE_MAX, nullptr};
  REQUIRE(a.Decode() == COVATTN_OK);
  REQUIRE(b.Decode() == COVATTN_OK);
  CHECK(a.out == b.out);
}

TEST_CASE("NaN outside what a query sees is never read") {
  // Tokens beyond the query position and beyond the window are not part of
  // the computation, so NaN there must not turn the call into an error.
  Setup s;
  TestCache cache(COVATTN_F32, Layout::kTokenMajor, kTokens, kKvHeads, kDim);
  Rng rng(3);
  cache.FillRandom(rng);
  for (size_t h = 0; h < kKvHeads; ++h)
    for (size_t i = 0; i < kDim; ++i) {
      cache.SetK(0, h, i, std::nan(""));            // outside a window of 4
      cache.SetV(1, h, i, std::nan(""));            // outside a window of 4
      cache.SetK(kTokens - 1, h, i, std::nan(""));  // after the prefill position
    }
  s.kv = cache.view();
  s.options.window = 4;
  CHECK(s.Prefill(kTokens - 2) == COVATTN_OK);
  s.options.window = 0;
  CHECK(s.Prefill(kTokens - 2) == COVATTN_ERR_NONFINITE);
}

TEST_CASE("partial states: misaligned arrays, overlap with inputs or scratch, scratch size") {
  Setup s;
  std::vector<float> m(kQHeads + 1), l(kQHeads), o(kQHeads * kDim);
  auto partial = [&](const covattn_partial& st, void* scratch, size_t bytes) {
    return covattn_prefill_partial(&s.kv, &s.queries, kTokens - 1, nullptr, 0, kTokens, &st,
                                   scratch, bytes);
  };
  float* odd_m = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(m.data()) + 1);
  CHECK(partial({odd_m, l.data(), o.data()}, s.scratch.data(), s.scratch.size()) ==
        COVATTN_ERR_MISALIGNED);
  CHECK(partial({m.data(), l.data(), s.q.data()}, s.scratch.data(), s.scratch.size()) ==
        COVATTN_ERR_ALIASING);
  float* k = const_cast<float*>(static_cast<const float*>(s.kv.k));
  CHECK(partial({k, l.data(), o.data()}, s.scratch.data(), s.scratch.size()) ==
        COVATTN_ERR_ALIASING);
  CHECK(partial({m.data(), l.data(), o.data()}, reinterpret_cast<uint8_t*>(o.data()),
                s.scratch.size()) == COVATTN_ERR_ALIASING);
  CHECK(partial({m.data(), l.data(), o.data()}, s.scratch.data(), s.scratch.size() - 1) ==
        COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(partial({m.data(), l.data(), o.data()}, s.scratch.data(), s.scratch.size()) == COVATTN_OK);

  const covattn_partial state{m.data(), l.data(), o.data()};
  std::vector<float> m2(kQHeads), l2(kQHeads), o2(kQHeads * kDim);
  const covattn_partial other{m2.data(), l2.data(), o2.data()};
  CHECK(covattn_partial_merge(kQHeads, COVATTN_MAX_HEAD_DIM + 1, &state, &other) ==
        COVATTN_ERR_INVALID_HEAD_DIM);
  const covattn_partial odd{odd_m, l.data(), o.data()};
  CHECK(covattn_partial_merge(kQHeads, kDim, &state, &odd) == COVATTN_ERR_MISALIGNED);
  const covattn_partial self_overlap{m2.data(), l2.data(), m2.data()};
  CHECK(covattn_partial_merge(kQHeads, kDim, &state, &self_overlap) == COVATTN_ERR_ALIASING);
  const covattn_partial partly{m.data() + 1, l2.data(), o2.data()};  // m arrays overlap
  CHECK(covattn_partial_merge(kQHeads, kDim, &partly, &state) == COVATTN_ERR_ALIASING);
  CHECK(covattn_partial_merge(0, kDim, &state, &other) == COVATTN_OK);  // nothing to do

  std::vector<float> out(kQHeads * kDim, kSentinel);
  CHECK(covattn_partial_finalize(kQHeads, 0, &state, out.data(), nullptr) ==
        COVATTN_ERR_INVALID_HEAD_DIM);
  CHECK(covattn_partial_finalize(kQHeads, kDim, &state, out.data(), l.data()) ==
        COVATTN_ERR_ALIASING);
  CHECK(covattn_partial_finalize(0, kDim, &state, nullptr, nullptr) == COVATTN_OK);
  for (float x : out) CHECK(x == kSentinel);
}

TEST_CASE("every status of the attention API has a case that returns it") {
  // One call per code, so a code cannot silently stop being returned.
  Setup s;
  auto decode_with = [&](covattn_kv_cache kv, const covattn_attention_options* options,
                         size_t scratch_bytes) {
    return covattn_decode(&kv, s.q.data(), kQHeads, options, s.out.data(), s.scratch.data(),
                          scratch_bytes);
  };
  const covattn_kv_cache good = s.cache.view();
  covattn_kv_cache kv = good;
  const covattn_attention_options nan_scale{std::nanf(""), 0, 0, nullptr};
  CHECK(decode_with(good, nullptr, s.scratch.size()) == COVATTN_OK);
  kv.n_tokens = 0;
  CHECK(decode_with(kv, nullptr, s.scratch.size()) == COVATTN_FULLY_MASKED);
  CHECK(covattn_decode(nullptr, s.q.data(), kQHeads, nullptr, s.out.data(), s.scratch.data(),
                       s.scratch.size()) == COVATTN_ERR_NULL_POINTER);
  kv = good, kv.dtype = 7;
  CHECK(decode_with(kv, nullptr, s.scratch.size()) == COVATTN_ERR_UNSUPPORTED_DTYPE);
  kv = good, kv.head_dim = 0;
  CHECK(decode_with(kv, nullptr, s.scratch.size()) == COVATTN_ERR_INVALID_HEAD_DIM);
  kv = good, kv.n_heads = 0;
  CHECK(decode_with(kv, nullptr, s.scratch.size()) == COVATTN_ERR_INVALID_HEAD_COUNT);
  kv = good, kv.n_heads = 3;
  CHECK(decode_with(kv, nullptr, s.scratch.size()) == COVATTN_ERR_HEAD_MISMATCH);
  kv = good, kv.k_token_stride = 1;
  CHECK(decode_with(kv, nullptr, s.scratch.size()) == COVATTN_ERR_INVALID_STRIDE);
  kv = good, kv.k_token_stride = SIZE_MAX / 3;
  CHECK(decode_with(kv, nullptr, s.scratch.size()) == COVATTN_ERR_SIZE_OVERFLOW);
  kv = good, kv.k = static_cast<const uint8_t*>(kv.k) + 2;
  CHECK(decode_with(kv, nullptr, s.scratch.size()) == COVATTN_ERR_MISALIGNED);
  CHECK(covattn_decode(&good, s.q.data(), kQHeads, nullptr, s.q.data(), s.scratch.data(),
                       s.scratch.size()) == COVATTN_ERR_ALIASING);
  CHECK(decode_with(good, &nan_scale, s.scratch.size()) == COVATTN_ERR_INVALID_SCALE);
  CHECK(s.Prefill(kTokens) == COVATTN_ERR_INVALID_POSITION);
  std::vector<float> m(kQHeads), l(kQHeads), o(kQHeads * kDim);
  const covattn_partial state{m.data(), l.data(), o.data()};
  CHECK(covattn_prefill_partial(&good, &s.queries, kTokens - 1, nullptr, 3, 2, &state,
                                s.scratch.data(), s.scratch.size()) == COVATTN_ERR_INVALID_RANGE);
  CHECK(decode_with(good, nullptr, 16) == COVATTN_ERR_SCRATCH_TOO_SMALL);
  s.q[0] = std::numeric_limits<float>::infinity();
  CHECK(decode_with(good, nullptr, s.scratch.size()) == COVATTN_ERR_NONFINITE);
  CHECK(covattn_restrict_targets("no-such-target") == COVATTN_ERR_UNKNOWN_TARGET);
#if defined(__x86_64__) || defined(__i386__)
  CHECK(covattn_restrict_targets("sve") == COVATTN_ERR_TARGET_UNAVAILABLE);
#else
  CHECK(covattn_restrict_targets("sse4") == COVATTN_ERR_TARGET_UNAVAILABLE);
#endif
}
