// What covattn promises about threads (docs/guarantees.md): independent
// calls may run at the same time on shared read-only inputs (caches,
// queries), each with its own outputs and scratch, and give exactly the
// results of the same calls made one after another; the first calls may race
// to initialise dispatch; the query functions may run alongside kernels.
// For the covariance state and the bounded cache: calls taking a const object
// (readout, decode, serialize, info, export) may share one object; calls that
// modify an object need it to themselves, but different objects may be
// modified at the same time.
// Run under ThreadSanitizer by the tsan preset; covattn_restrict_targets is
// only ever called here while no kernel runs, as covattn.h requires.
#include <doctest/doctest.h>

#include <atomic>
#include <thread>

#include "covattn/cache.h"
#include "test_util.h"

using namespace covattn_test;

namespace {

constexpr size_t kThreads = 4;

// Releases all waiting threads at once, to make their calls overlap.
class StartLine {
 public:
  explicit StartLine(size_t n) : waiting_(n) {}
  void Wait() {
    waiting_.fetch_sub(1);
    while (waiting_.load() > 0) std::this_thread::yield();
  }

 private:
  std::atomic<size_t> waiting_;
};

template <class Body>
void RunThreads(size_t n, Body&& body) {
  StartLine start(n);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < n; ++t) {
    threads.emplace_back([&, t] {
      start.Wait();
      body(t);
    });
  }
  for (std::thread& thread : threads) thread.join();
}

std::vector<uint8_t> Scratch(size_t dim) {
  size_t bytes = 0;
  REQUIRE(covattn_attention_scratch_size(dim, &bytes) == COVATTN_OK);
  return std::vector<uint8_t>(bytes);
}

// The shared, read-only inputs of every call below.
struct Inputs {
  static constexpr size_t kDim = 64, kTokens = 700, kKvHeads = 2, kQHeads = 4, kNew = 20;
  Inputs()
      : f32(COVATTN_F32, Layout::kTokenMajor, kTokens, kKvHeads, kDim),
        f16(COVATTN_F16, Layout::kHeadMajor, kTokens, kKvHeads, kDim),
        q(kNew * kQHeads * kDim) {
    Rng rng(77);
    f32.FillRandom(rng);
    f16.FillRandom(rng, 1.5);
    for (float& x : q) x = static_cast<float>(rng.Normal());
  }
  TestCache f32, f16;
  std::vector<float> q;  // [token][head][dim], kNew positions
};

// The results of one round of calls: decode on each cache, prefill of the
// last kNew positions with log Z, and decode split into two partial states
// that are merged and finalised.
struct Results {
  std::vector<float> decode_f32, decode_f16, prefill, log_z, split;
  bool operator==(const Results& o) const {
    return decode_f32 == o.decode_f32 && decode_f16 == o.decode_f16 && prefill == o.prefill &&
           log_z == o.log_z && split == o.split;
  }
};

Results RunCalls(const Inputs& in, size_t variant) {
  constexpr size_t kDim = Inputs::kDim, kQHeads = Inputs::kQHeads, kNew = Inputs::kNew;
  std::vector<uint8_t> scratch = Scratch(kDim);
  Results r;
  const float* q_last = in.q.data() + (kNew - 1) * kQHeads * kDim;
  const covattn_attention_options options{0.0f, variant % 2 ? size_t{100} : size_t{0}, 4, nullptr};
  r.decode_f32.resize(kQHeads * kDim);
  r.decode_f16.resize(kQHeads * kDim);
  REQUIRE(covattn_decode(&in.f32.view(), q_last, kQHeads, &options, r.decode_f32.data(),
                         scratch.data(), scratch.size()) == COVATTN_OK);
  REQUIRE(covattn_decode(&in.f16.view(), q_last, kQHeads, &options, r.decode_f16.data(),
                         scratch.data(), scratch.size()) == COVATTN_OK);

  r.prefill.resize(kNew * kQHeads * kDim);
  r.log_z.resize(kNew * kQHeads);
  const covattn_queries queries{in.q.data(), kNew, kQHeads, kQHeads * kDim, kDim};
  const covattn_outputs outputs{r.prefill.data(), kQHeads * kDim, kDim, r.log_z.data()};
  REQUIRE(covattn_prefill(&in.f16.view(), &queries, Inputs::kTokens - kNew, &options, &outputs,
                          scratch.data(), scratch.size()) == COVATTN_OK);

  const covattn_queries last{q_last, 1, kQHeads, kQHeads * kDim, kDim};
  std::vector<float> m(kQHeads), l(kQHeads), o(kQHeads * kDim);
  std::vector<float> m2(kQHeads), l2(kQHeads), o2(kQHeads * kDim);
  const covattn_partial a{m.data(), l.data(), o.data()}, b{m2.data(), l2.data(), o2.data()};
  const size_t split = 1 + variant * 97 % (Inputs::kTokens - 1);
  REQUIRE(covattn_prefill_partial(&in.f32.view(), &last, Inputs::kTokens - 1, &options, 0, split,
                                  &a, scratch.data(), scratch.size()) == COVATTN_OK);
  REQUIRE(covattn_prefill_partial(&in.f32.view(), &last, Inputs::kTokens - 1, &options, split,
                                  Inputs::kTokens, &b, scratch.data(),
                                  scratch.size()) == COVATTN_OK);
  REQUIRE(covattn_partial_merge(kQHeads, kDim, &a, &b) == COVATTN_OK);
  r.split.resize(kQHeads * kDim);
  REQUIRE(covattn_partial_finalize(kQHeads, kDim, &a, r.split.data(), nullptr) == COVATTN_OK);
  return r;
}

}  // namespace

// First in this file, so that these are the process's first calls into
// covattn: dispatch is initialised by whichever thread gets there first.
TEST_CASE("the first calls may come from several threads at once") {
  std::vector<float> q(8, 0.5f), out(8 * kThreads);
  TestCache cache(COVATTN_F32, Layout::kTokenMajor, 3, 1, 8);
  Rng rng(1);
  cache.FillRandom(rng);
  std::vector<std::string> names(kThreads);
  std::vector<int> statuses(kThreads);
  RunThreads(kThreads, [&](size_t t) {
    names[t] = covattn_target_name();
    size_t bytes = 0;
    covattn_attention_scratch_size(8, &bytes);
    std::vector<uint8_t> scratch(bytes);
    statuses[t] = covattn_decode(&cache.view(), q.data(), 1, nullptr, out.data() + 8 * t,
                                 scratch.data(), scratch.size());
  });
  for (size_t t = 0; t < kThreads; ++t) {
    CHECK(names[t] == std::string(covattn_available_target(0)));
    CHECK(statuses[t] == COVATTN_OK);
  }
}

TEST_CASE("concurrent calls on shared caches equal the same calls made one by one") {
  const Inputs inputs;
  ForEachTarget([&] {
    std::vector<Results> expected;
    for (size_t t = 0; t < kThreads; ++t) expected.push_back(RunCalls(inputs, t));
    std::vector<Results> got(kThreads * 3);
    RunThreads(kThreads, [&](size_t t) {
      for (size_t round = 0; round < 3; ++round) got[round * kThreads + t] = RunCalls(inputs, t);
    });
    for (size_t i = 0; i < got.size(); ++i) {
      INFO("thread " << i % kThreads << " round " << i / kThreads);
      CHECK(got[i] == expected[i % kThreads]);
    }
  });
}

TEST_CASE("ranges of one query split across threads merge to the single-pass result") {
  // The use covattn_prefill_partial is made for: each thread takes a slice
  // of the same cache for the same query; the main thread merges in order.
  const Inputs inputs;
  constexpr size_t kDim = Inputs::kDim, kQHeads = Inputs::kQHeads, kSlices = 8;
  const float* q = inputs.q.data();
  const covattn_queries queries{q, 1, kQHeads, kQHeads * kDim, kDim};
  auto slice_state = [&](size_t s, std::vector<float>* m, std::vector<float>* l,
                         std::vector<float>* o) {
    std::vector<uint8_t> scratch = Scratch(kDim);
    m->resize(kQHeads), l->resize(kQHeads), o->resize(kQHeads * kDim);
    const covattn_partial state{m->data(), l->data(), o->data()};
    const size_t begin = s * Inputs::kTokens / kSlices, end = (s + 1) * Inputs::kTokens / kSlices;
    return covattn_prefill_partial(&inputs.f16.view(), &queries, Inputs::kTokens - 1, nullptr,
                                   begin, end, &state, scratch.data(), scratch.size());
  };
  auto merge_all = [&](std::vector<std::vector<float>>& m, std::vector<std::vector<float>>& l,
                       std::vector<std::vector<float>>& o) {
    const covattn_partial into{m[0].data(), l[0].data(), o[0].data()};
    for (size_t s = 1; s < kSlices; ++s) {
      const covattn_partial other{m[s].data(), l[s].data(), o[s].data()};
      REQUIRE(covattn_partial_merge(kQHeads, kDim, &into, &other) == COVATTN_OK);
    }
    std::vector<float> out(kQHeads * kDim);
    REQUIRE(covattn_partial_finalize(kQHeads, kDim, &into, out.data(), nullptr) == COVATTN_OK);
    return out;
  };
  ForEachTarget([&] {
    std::vector<std::vector<float>> m(kSlices), l(kSlices), o(kSlices);
    for (size_t s = 0; s < kSlices; ++s) REQUIRE(slice_state(s, &m[s], &l[s], &o[s]) == COVATTN_OK);
    const std::vector<float> expected = merge_all(m, l, o);

    std::vector<std::vector<float>> tm(kSlices), tl(kSlices), to(kSlices);
    std::vector<int> statuses(kSlices);
    RunThreads(kSlices, [&](size_t s) { statuses[s] = slice_state(s, &tm[s], &tl[s], &to[s]); });
    for (int status : statuses) REQUIRE(status == COVATTN_OK);
    CHECK(merge_all(tm, tl, to) == expected);
  });
}

TEST_CASE("queries about targets, versions and statuses run alongside kernels") {
  const Inputs inputs;
  const Results expected = RunCalls(inputs, 0);
  const std::string target = covattn_target_name();
  std::atomic<bool> ok{true};
  RunThreads(kThreads, [&](size_t t) {
    for (int i = 0; i < 20; ++i) {
      bool good;
      if (t % 2 == 0) {
        good = RunCalls(inputs, 0) == expected;
      } else {
        size_t bytes = 0;
        good = target == covattn_target_name() && covattn_available_target_count() >= 1 &&
               covattn_available_target(0) != nullptr &&
               covattn_version_number() == COVATTN_VERSION_NUMBER &&
               std::string(covattn_status_string(COVATTN_ERR_NONFINITE)).size() > 0 &&
               covattn_attention_scratch_size(Inputs::kDim, &bytes) == COVATTN_OK;
      }
      if (!good) ok = false;
    }
  });
  CHECK(ok);
}

namespace {

// Serialized bytes: the whole observable content of a state or cache.
template <class T>
std::vector<uint8_t> Bytes(const T* object, covattn_status (*size)(const T*, size_t*),
                           covattn_status (*serialize)(const T*, void*, size_t, size_t*)) {
  size_t bytes = 0;
  REQUIRE(size(object, &bytes) == COVATTN_OK);
  std::vector<uint8_t> out(bytes);
  size_t written = 0;
  REQUIRE(serialize(object, out.data(), bytes, &written) == COVATTN_OK);
  return out;
}

std::vector<uint8_t> StateBytes(const covattn_cov_state* state) {
  return Bytes(state, covattn_cov_state_serialized_size, covattn_cov_state_serialize);
}

std::vector<uint8_t> CacheBytes(const covattn_cache* cache) {
  return Bytes(cache, covattn_cache_serialized_size, covattn_cache_serialize);
}

// A cache of Inputs' shape with room for a quarter of its tokens exact, fed
// the f16 tokens [begin, end) in blocks of 50.
std::vector<uint8_t> CacheScratch(const covattn_cache_config& config) {
  size_t bytes = 0;
  REQUIRE(covattn_cache_scratch_size(&config, Inputs::kQHeads, &bytes) == COVATTN_OK);
  return std::vector<uint8_t>(bytes);
}

covattn_cache* FilledCache(const Inputs& in, size_t begin, size_t end) {
  const covattn_cache_config config{
      Inputs::kKvHeads, Inputs::kDim, COVATTN_F16, 4, 120, 16, 1.0f, 0, 0, 0, 0.0f, 0, 0};
  covattn_cache* cache = nullptr;
  REQUIRE(covattn_cache_create(&config, &cache) == COVATTN_OK);
  for (size_t t = begin; t < end; t += 50) {
    covattn_kv_cache block = in.f16.view();
    block.n_tokens = std::min<size_t>(50, end - t);
    block.k = static_cast<const uint16_t*>(block.k) + t * block.k_token_stride;
    block.v = static_cast<const uint16_t*>(block.v) + t * block.v_token_stride;
    std::vector<uint8_t> scratch = CacheScratch(config);
    REQUIRE(covattn_cache_append(cache, &block, scratch.data(), scratch.size()) == COVATTN_OK);
  }
  return cache;
}

std::vector<float> CacheDecode(const covattn_cache* cache, const float* q) {
  covattn_cache_info info;
  REQUIRE(covattn_cache_info_get(cache, &info) == COVATTN_OK);
  std::vector<uint8_t> scratch = CacheScratch(info.config);
  std::vector<float> out(Inputs::kQHeads * Inputs::kDim), share(Inputs::kQHeads);
  const covattn_cache_diagnostics diagnostics{share.data(), nullptr, nullptr};
  REQUIRE(covattn_cache_decode(cache, q, Inputs::kQHeads, 0.0f, out.data(), &diagnostics,
                               scratch.data(), scratch.size()) == COVATTN_OK);
  out.insert(out.end(), share.begin(), share.end());
  return out;
}

}  // namespace

static covattn_status CovUpdate(covattn_cov_state* state, const covattn_kv_cache* block) {
  size_t bytes = 0;
  REQUIRE(covattn_cov_state_scratch_size(Inputs::kDim, &bytes) == COVATTN_OK);
  std::vector<uint8_t> scratch(bytes);
  return covattn_cov_state_update(state, block, scratch.data(), scratch.size());
}

TEST_CASE("readouts of one covariance state from several threads; states updated in parallel") {
  const Inputs inputs;
  constexpr size_t kDim = Inputs::kDim, kQHeads = Inputs::kQHeads;
  ForEachTarget([&] {
    covattn_cov_state* shared = nullptr;
    REQUIRE(covattn_cov_state_create(Inputs::kKvHeads, kDim, 1.0f, &shared) == COVATTN_OK);
    REQUIRE(CovUpdate(shared, &inputs.f16.view()) == COVATTN_OK);
    const std::vector<uint8_t> before = StateBytes(shared);
    auto readout = [&](size_t position) {
      std::vector<float> out(kQHeads * kDim + 2 * kQHeads);
      float* log_z = out.data() + kQHeads * kDim;
      REQUIRE(covattn_cov_readout(shared, inputs.q.data() + position * kQHeads * kDim, kQHeads,
                                  0.0f, out.data(), log_z, log_z + kQHeads) == COVATTN_OK);
      return out;
    };
    std::vector<std::vector<float>> expected;
    for (size_t t = 0; t < kThreads; ++t) expected.push_back(readout(t));

    // Threads read the shared state and, at the same time, each fills a state
    // of its own from a different slice of the tokens.
    std::vector<std::vector<float>> got(kThreads * 5);
    std::vector<std::vector<uint8_t>> own(kThreads), shared_bytes(kThreads);
    RunThreads(kThreads, [&](size_t t) {
      covattn_cov_state* mine = nullptr;
      REQUIRE(covattn_cov_state_create(Inputs::kKvHeads, kDim, 0.99f, &mine) == COVATTN_OK);
      covattn_kv_cache slice = inputs.f32.view();
      slice.n_tokens = 100 + 50 * t;
      for (size_t round = 0; round < 5; ++round) {
        got[round * kThreads + t] = readout(t);
        REQUIRE(CovUpdate(mine, &slice) == COVATTN_OK);
      }
      shared_bytes[t] = StateBytes(shared);
      own[t] = StateBytes(mine);
      covattn_cov_state_destroy(mine);
    });
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == expected[i % kThreads]);
    for (size_t t = 0; t < kThreads; ++t) {
      CHECK(shared_bytes[t] == before);
      // The same updates made one by one give the same state, bit for bit.
      covattn_cov_state* alone = nullptr;
      REQUIRE(covattn_cov_state_create(Inputs::kKvHeads, kDim, 0.99f, &alone) == COVATTN_OK);
      covattn_kv_cache slice = inputs.f32.view();
      slice.n_tokens = 100 + 50 * t;
      for (size_t round = 0; round < 5; ++round) {
        REQUIRE(CovUpdate(alone, &slice) == COVATTN_OK);
      }
      CHECK(StateBytes(alone) == own[t]);
      covattn_cov_state_destroy(alone);
    }
    covattn_cov_state_destroy(shared);
  });
}

TEST_CASE("decodes of one bounded cache from several threads; caches appended in parallel") {
  const Inputs inputs;
  constexpr size_t kDim = Inputs::kDim, kQHeads = Inputs::kQHeads;
  ForEachTarget([&] {
    covattn_cache* shared = FilledCache(inputs, 0, Inputs::kTokens);
    const std::vector<uint8_t> before = CacheBytes(shared);
    std::vector<std::vector<float>> expected;
    for (size_t t = 0; t < kThreads; ++t) {
      expected.push_back(CacheDecode(shared, inputs.q.data() + t * kQHeads * kDim));
    }
    std::vector<std::vector<float>> got(kThreads * 3), own(kThreads);
    std::vector<std::vector<uint8_t>> shared_bytes(kThreads);
    RunThreads(kThreads, [&](size_t t) {
      for (size_t round = 0; round < 3; ++round) {
        got[round * kThreads + t] = CacheDecode(shared, inputs.q.data() + t * kQHeads * kDim);
      }
      shared_bytes[t] = CacheBytes(shared);
      covattn_cache* mine = FilledCache(inputs, 50 * t, Inputs::kTokens);
      own[t] = CacheDecode(mine, inputs.q.data());
      covattn_cache_destroy(mine);
    });
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == expected[i % kThreads]);
    for (size_t t = 0; t < kThreads; ++t) {
      CHECK(shared_bytes[t] == before);
      covattn_cache* alone = FilledCache(inputs, 50 * t, Inputs::kTokens);
      CHECK(CacheDecode(alone, inputs.q.data()) == own[t]);
      covattn_cache_destroy(alone);
    }
    covattn_cache_destroy(shared);
  });
}
