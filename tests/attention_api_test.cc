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
  covattn_attention_options options{0.0f, 0, 0};
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
  s.kv.dtype = 3;
  CHECK(s.Decode() == COVATTN_ERR_UNSUPPORTED_DTYPE);
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
  CHECK(covattn_decode(&s.kv, reinterpret_cast<const float*>(
                                  reinterpret_cast<const uint8_t*>(s.q.data()) + 2),
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
  CHECK(covattn_partial_merge(SIZE_MAX / 2, kDim, &state, &other) ==
        COVATTN_ERR_SIZE_OVERFLOW);
  o2[3] = std::nanf("");
  CHECK(covattn_partial_merge(kQHeads, kDim, &state, &other) == COVATTN_ERR_NONFINITE);
  CHECK(o == o_before);  // refused merges leave `into` as it was

  std::vector<float> out(kQHeads * kDim, kSentinel);
  CHECK(covattn_partial_finalize(kQHeads, kDim, &state, nullptr, nullptr) ==
        COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_partial_finalize(kQHeads, kDim, &state, o.data(), nullptr) ==
        COVATTN_ERR_ALIASING);
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
  CHECK(std::string(covattn_status_string(static_cast<covattn_status>(-31))) ==
        "unknown status");
}
