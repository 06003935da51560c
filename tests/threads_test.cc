// Exact attention over a caller's thread pool (covattn_attention_options'
// threads): against the double reference on every target, f32/f16/bf16,
// GQA, decode, prefill and partial states, 1..4 threads; the same bits
// whatever order and threads the pool runs the tasks on; the pool and its
// scratch validated. The bounded cache's decode over a pool
// (covattn_cache_decode_threads): split by whole KV heads, the one-thread
// bits, diagnostics included, for every schedule; split by range (fewer heads
// than threads), the same bits for every schedule, within rounding of one
// thread and of the double reference; its pool and scratch validated. Run
// under ThreadSanitizer by the tsan preset.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "cache_test_util.h"
#include "covattn/covattn.hpp"
#include "test_util.h"
#include "thread_pool.h"

using namespace covattn_test;

namespace {

// Runs the tasks one at a time on the calling thread, in order, reversed or
// shuffled, each under a thread index scrambled from its task index: what
// any pool may do, made repeatable.
enum class Order { kInOrder, kReversed, kShuffled };

struct OrderedPool {
  Order order;
  size_t n_threads;
  uint64_t seed;
  size_t last_n_tasks = 0;

  static void ParallelFor(void* self, size_t n_tasks, covattn_task task, void* context) {
    OrderedPool& pool = *static_cast<OrderedPool*>(self);
    pool.last_n_tasks = n_tasks;
    std::vector<size_t> tasks(n_tasks);
    std::iota(tasks.begin(), tasks.end(), size_t{0});
    if (pool.order == Order::kReversed) std::reverse(tasks.begin(), tasks.end());
    if (pool.order == Order::kShuffled) {
      std::mt19937_64 rng(pool.seed);
      std::shuffle(tasks.begin(), tasks.end(), rng);
    }
    for (size_t i : tasks) task(context, (i * 2654435761u + pool.seed) % pool.n_threads, i);
  }
  covattn_thread_pool Pool() {
    return covattn_thread_pool{&OrderedPool::ParallelFor, this, n_threads};
  }
};

// The schedules every pooled call is checked under, for n_threads workers:
// in order, reversed and shuffled (each under its own thread scramble), and
// a real pool of threads.
struct Schedules {
  explicit Schedules(size_t n_threads)
      : in_order{Order::kInOrder, n_threads, 1},
        reversed{Order::kReversed, n_threads, 2},
        shuffled{Order::kShuffled, n_threads, 3},
        real(n_threads),
        pools{in_order.Pool(), reversed.Pool(), shuffled.Pool(), real.Pool()} {}
  OrderedPool in_order, reversed, shuffled;
  ThreadPool real;
  covattn_thread_pool pools[4];
};

std::vector<uint8_t> ThreadScratch(size_t dim, size_t n_threads) {
  size_t bytes = 0;
  REQUIRE(covattn_attention_scratch_size_threads(dim, n_threads, &bytes) == COVATTN_OK);
  return std::vector<uint8_t>(bytes);
}

double RelL2(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0.0, norm = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    err += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    norm += double(want[i]) * want[i];
  }
  return std::sqrt(err / norm);
}

// Calls `run(pool or nullptr, scratch)` on the calling thread, then for
// 1..4 threads with the in-order, reversed and shuffled pools and the real
// one; check(result, n_threads) checks each result against the reference,
// and results of one thread count must be the same bits, and within 1e-6
// (rel L2) of the calling thread's.
template <class Run, class Check>
void ForEachPool(size_t dim, Run&& run, Check&& check) {
  std::vector<uint8_t> scratch = AttentionScratch(dim);
  const std::vector<float> alone = run(nullptr, &scratch);
  check(alone, size_t{0});
  for (size_t n_threads = 1; n_threads <= 4; ++n_threads) {
    INFO(n_threads << " threads");
    std::vector<uint8_t> thread_scratch = ThreadScratch(dim, n_threads);
    Schedules schedules(n_threads);
    const covattn_thread_pool* pools = schedules.pools;
    const std::vector<float> first = run(&pools[0], &thread_scratch);
    check(first, n_threads);
    CHECK(RelL2(first, alone) <= 1e-6);
    for (size_t p = 1; p < 4; ++p) {
      INFO("pool " << p);
      CHECK(run(&pools[p], &thread_scratch) == first);
    }
  }
}

struct DecodeCase {
  size_t kv_heads, group, dim, n_tokens;
  uint32_t dtype;
  size_t window, sinks;
};

}  // namespace

TEST_CASE("decode over a pool: the reference, and the same bits for every schedule") {
  // Few KV heads (the cache is cut into ranges: 1, 2 or 3 tiles against 2..4
  // threads) and many (the heads are shared out), with a window and sinks.
  const DecodeCase cases[] = {
      {1, 4, 128, 2000, COVATTN_F32, 0, 0},   {1, 8, 64, 1500, COVATTN_F16, 0, 0},
      {2, 4, 40, 1100, COVATTN_BF16, 0, 0},   {3, 2, 64, 1300, COVATTN_F16, 700, 3},
      {8, 4, 32, 600, COVATTN_F32, 0, 0},     {1, 1, 17, 3000, COVATTN_BF16, 2000, 5},
      {4, 12, 24, 900, COVATTN_F32, 0, 0},    {2, 4, 96, 1700, COVATTN_INT8, 0, 0},
      {1, 4, 64, 2100, COVATTN_INT8, 900, 2},
  };
  uint64_t seed = 500;
  for (const DecodeCase& c : cases) {
    INFO("kv heads " << c.kv_heads << " group " << c.group << " dim " << c.dim << " n_ctx "
                     << c.n_tokens << " " << DtypeName(c.dtype) << " window " << c.window);
    Rng rng(seed++);
    TestCache cache(c.dtype, Layout::kTokenMajor, c.n_tokens, c.kv_heads, c.dim);
    cache.FillRandom(rng);
    const size_t q_heads = c.kv_heads * c.group;
    const std::vector<float> q = NormalFloats(rng, q_heads * c.dim, 1.5);
    const float scale = 1.0f / std::sqrt(float(c.dim));
    std::vector<ReferenceRow> refs;
    for (size_t h = 0; h < q_heads; ++h) {
      refs.push_back(ReferenceAttention(cache, q.data() + h * c.dim, scale, h / c.group,
                                        c.n_tokens - 1, c.window, c.sinks));
    }
    ForEachTarget([&] {
      auto run = [&](const covattn_thread_pool* pool, std::vector<uint8_t>* scratch) {
        const covattn_attention_options options{0.0f, c.window, c.sinks, pool};
        std::vector<float> out(q_heads * c.dim, -7.0f);
        REQUIRE(covattn_decode(&cache.view(), q.data(), q_heads, &options, out.data(),
                               scratch->data(), scratch->size()) == COVATTN_OK);
        return out;
      };
      ForEachPool(c.dim, run, [&](const std::vector<float>& out, size_t) {
        for (size_t h = 0; h < q_heads; ++h) {
          INFO("query head " << h);
          CheckRow(out.data() + h * c.dim, refs[h], c.dim);
        }
      });
    });
  }
}

TEST_CASE("prefill over a pool: the reference with log Z, the same bits for every schedule") {
  struct Case {
    size_t kv_heads, group, dim, n_past, n_new;
    uint32_t dtype;
    size_t window, sinks;
  } cases[] = {{1, 2, 64, 1800, 3, COVATTN_F32, 1200, 4},  // one pass: cache ranges
               {2, 4, 48, 0, 70, COVATTN_F16, 0, 0},       // tiles of query positions
               {1, 1, 128, 20, 150, COVATTN_BF16, 40, 2},
               {3, 3, 16, 500, 9, COVATTN_F32, 0, 0},
               {2, 2, 32, 1000, 5, COVATTN_F16, 0, 0}};  // one pass of two KV heads: ranges
  uint64_t seed = 900;
  for (const Case& c : cases) {
    INFO("kv heads " << c.kv_heads << " group " << c.group << " dim " << c.dim << " n_past "
                     << c.n_past << " n_new " << c.n_new << " window " << c.window);
    Rng rng(seed++);
    const size_t q_heads = c.kv_heads * c.group, n_tokens = c.n_past + c.n_new;
    TestCache cache(c.dtype, Layout::kHeadMajor, n_tokens + 2, c.kv_heads, c.dim);
    cache.FillRandom(rng);
    const std::vector<float> q = NormalFloats(rng, c.n_new * q_heads * c.dim, 1.0);
    const float scale = 1.0f / std::sqrt(float(c.dim));
    ForEachTarget([&] {
      // Outputs [head][token][dim] then log Z, in one vector.
      auto run = [&](const covattn_thread_pool* pool, std::vector<uint8_t>* scratch) {
        const covattn_attention_options options{0.0f, c.window, c.sinks, pool};
        std::vector<float> out(q_heads * c.n_new * c.dim + c.n_new * q_heads, -7.0f);
        float* log_z = out.data() + q_heads * c.n_new * c.dim;
        const covattn_queries queries{q.data(), c.n_new, q_heads, q_heads * c.dim, c.dim};
        const covattn_outputs outputs{out.data(), c.dim, c.n_new * c.dim, log_z};
        REQUIRE(covattn_prefill(&cache.view(), &queries, c.n_past, &options, &outputs,
                                scratch->data(), scratch->size()) == COVATTN_OK);
        return out;
      };
      ForEachPool(c.dim, run, [&](const std::vector<float>& out, size_t) {
        for (size_t t = 0; t < c.n_new; t += 1 + c.n_new / 7) {
          for (size_t h = 0; h < q_heads; ++h) {
            INFO("token " << t << " head " << h);
            const ReferenceRow ref =
                ReferenceAttention(cache, q.data() + (t * q_heads + h) * c.dim, scale, h / c.group,
                                   c.n_past + t, c.window, c.sinks);
            CheckRow(out.data() + (h * c.n_new + t) * c.dim, ref, c.dim);
            const float log_z = out[q_heads * c.n_new * c.dim + t * q_heads + h];
            CHECK(std::fabs(log_z - ref.log_z) <= ref.log_z_bound);
          }
        }
      });
    });
  }
}

TEST_CASE("a partial state over a pool merges with the rest of the cache to the reference") {
  const size_t dim = 64, n_tokens = 2500, q_heads = 4, split = 900;
  Rng rng(31);
  TestCache cache(COVATTN_F16, Layout::kTokenMajor, n_tokens, 1, dim);
  cache.FillRandom(rng);
  const std::vector<float> q = NormalFloats(rng, q_heads * dim, 1.0);
  const covattn_queries queries{q.data(), 1, q_heads, q_heads * dim, dim};
  const float scale = 1.0f / std::sqrt(float(dim));
  ForEachTarget([&] {
    // The pool computes tokens [split, n); the calling thread [0, split).
    auto run = [&](const covattn_thread_pool* pool, std::vector<uint8_t>* scratch) {
      const covattn_attention_options options{0.0f, 0, 0, pool};
      std::vector<float> state(q_heads * (dim + 2)), head(q_heads * (dim + 2));
      const covattn_partial part{state.data(), state.data() + q_heads, state.data() + 2 * q_heads};
      const covattn_partial first{head.data(), head.data() + q_heads, head.data() + 2 * q_heads};
      REQUIRE(covattn_prefill_partial(&cache.view(), &queries, n_tokens - 1, &options, split,
                                      n_tokens, &part, scratch->data(),
                                      scratch->size()) == COVATTN_OK);
      std::vector<uint8_t> one = AttentionScratch(dim);
      REQUIRE(covattn_prefill_partial(&cache.view(), &queries, n_tokens - 1, nullptr, 0, split,
                                      &first, one.data(), one.size()) == COVATTN_OK);
      REQUIRE(covattn_partial_merge(q_heads, dim, &first, &part) == COVATTN_OK);
      std::vector<float> out(q_heads * dim);
      REQUIRE(covattn_partial_finalize(q_heads, dim, &first, out.data(), nullptr) == COVATTN_OK);
      out.insert(out.end(), state.begin(), state.end());  // the pool's state, bit for bit
      return out;
    };
    ForEachPool(dim, run, [&](const std::vector<float>& out, size_t) {
      for (size_t h = 0; h < q_heads; ++h) {
        const ReferenceRow ref =
            ReferenceAttention(cache, q.data() + h * dim, scale, 0, n_tokens - 1, 0, 0);
        CheckRow(out.data() + h * dim, ref, dim);
      }
    });
  });
}

TEST_CASE("NaN in the cache is reported through a pool, whichever range holds it") {
  const size_t dim = 32, n_tokens = 2048;
  Rng rng(41);
  const std::vector<float> q = NormalFloats(rng, 4 * dim, 1.0);
  for (size_t poisoned : {size_t{3}, size_t{1500}}) {
    INFO("NaN key at token " << poisoned);
    TestCache cache(COVATTN_BF16, Layout::kTokenMajor, n_tokens, 1, dim);
    cache.FillRandom(rng);
    cache.SetK(poisoned, 0, 7, std::nan(""));
    ForEachTarget([&] {
      for (size_t n_threads : {1, 2, 3}) {
        ThreadPool real(n_threads);
        const covattn_thread_pool pool = real.Pool();
        const covattn_attention_options options{0.0f, 0, 0, &pool};
        std::vector<uint8_t> scratch = ThreadScratch(dim, n_threads);
        std::vector<float> out(4 * dim);
        CHECK(covattn_decode(&cache.view(), q.data(), 4, &options, out.data(), scratch.data(),
                             scratch.size()) == COVATTN_ERR_NONFINITE);
      }
    });
  }
}

namespace {

// Pools that break the contract: one skips the last task, one names a
// thread beyond n_threads, one runs every task twice, and one skips the last
// task but runs the one before it twice (the count of runs is right).
void SkippingParallelFor(void*, size_t n_tasks, covattn_task task, void* context) {
  for (size_t i = 0; i + 1 < n_tasks; ++i) task(context, 0, i);
}
void TwiceParallelFor(void*, size_t n_tasks, covattn_task task, void* context) {
  for (size_t i = 0; i < n_tasks; ++i) task(context, 0, i), task(context, 0, i);
}
void RepeatingParallelFor(void*, size_t n_tasks, covattn_task task, void* context) {
  for (size_t i = 0; i + 1 < n_tasks; ++i) task(context, 0, i);
  if (n_tasks >= 2) task(context, 0, n_tasks - 2);
}
void BadThreadParallelFor(void* pool, size_t n_tasks, covattn_task task, void* context) {
  const size_t n_threads = static_cast<const covattn_thread_pool*>(pool)->n_threads;
  for (size_t i = 0; i < n_tasks; ++i) task(context, i == 0 ? n_threads : 0, i);
}

}  // namespace

TEST_CASE("the pool and its scratch are validated") {
  const size_t dim = 64, n_tokens = 1000;
  Rng rng(51);
  TestCache cache(COVATTN_F32, Layout::kTokenMajor, n_tokens, 1, dim);
  cache.FillRandom(rng);
  const std::vector<float> q = NormalFloats(rng, 4 * dim, 1.0);
  size_t one = 0, two = 0, bytes = 0;
  REQUIRE(covattn_attention_scratch_size(dim, &one) == COVATTN_OK);
  REQUIRE(covattn_attention_scratch_size_threads(dim, 2, &two) == COVATTN_OK);
  // The formula covattn.h gives: L = 64, R = 32 * 66.
  CHECK(two == 64 + 2 * (4 * (192 * 64 + 4096) + 16 * 32 * 66 + 2));
  CHECK(two > 2 * one);
  CHECK(covattn_attention_scratch_size_threads(dim, 0, &bytes) == COVATTN_ERR_INVALID_THREAD_POOL);
  CHECK(covattn_attention_scratch_size_threads(0, 2, &bytes) == COVATTN_ERR_INVALID_HEAD_DIM);
  CHECK(covattn_attention_scratch_size_threads(dim, 2, nullptr) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_attention_scratch_size_threads(dim, SIZE_MAX / 1000, &bytes) ==
        COVATTN_ERR_SIZE_OVERFLOW);
  std::vector<uint8_t> scratch(two);
  ThreadPool real(2);
  const covattn_thread_pool good = real.Pool();
  auto decode = [&](const covattn_thread_pool* pool, size_t scratch_bytes) {
    const covattn_attention_options options{0.0f, 0, 0, pool};
    std::vector<float> out(4 * dim, 3.0f);
    const covattn_status s = covattn_decode(&cache.view(), q.data(), 4, &options, out.data(),
                                            scratch.data(), scratch_bytes);
    // A refused call writes nothing (a pool found broken afterwards may have).
    if (s < 0 && s != COVATTN_ERR_INVALID_THREAD_POOL) {
      for (float x : out) CHECK(x == 3.0f);
    }
    return s;
  };
  CHECK(decode(&good, two) == COVATTN_OK);
  CHECK(decode(&good, two - 1) == COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(decode(&good, one) == COVATTN_ERR_SCRATCH_TOO_SMALL);
  covattn_thread_pool no_callback = good, no_threads = good, huge = good;
  no_callback.parallel_for = nullptr;
  no_threads.n_threads = 0;
  huge.n_threads = SIZE_MAX / 2;
  CHECK(decode(&no_callback, two) == COVATTN_ERR_INVALID_THREAD_POOL);
  CHECK(decode(&no_threads, two) == COVATTN_ERR_INVALID_THREAD_POOL);
  CHECK(decode(&huge, two) == COVATTN_ERR_SCRATCH_TOO_SMALL);
  ForEachTarget([&] {
    // 1000 tokens on two threads: three cache ranges, so each breach is visible.
    covattn_thread_pool skipping{SkippingParallelFor, nullptr, 2};
    CHECK(decode(&skipping, two) == COVATTN_ERR_INVALID_THREAD_POOL);
    covattn_thread_pool bad_thread{BadThreadParallelFor, nullptr, 2};
    bad_thread.pool_context = &bad_thread;
    CHECK(decode(&bad_thread, two) == COVATTN_ERR_INVALID_THREAD_POOL);
    covattn_thread_pool twice{TwiceParallelFor, nullptr, 2};
    CHECK(decode(&twice, two) == COVATTN_ERR_INVALID_THREAD_POOL);
    covattn_thread_pool repeating{RepeatingParallelFor, nullptr, 2};
    CHECK(decode(&repeating, two) == COVATTN_ERR_INVALID_THREAD_POOL);
  });
  CHECK(std::string(covattn_status_string(COVATTN_ERR_INVALID_THREAD_POOL)) != "unknown status");
}

TEST_CASE("a decode of one KV head or of a layer gives every thread work") {
  const size_t dim = 64;
  Rng rng(61);
  for (size_t kv_heads : {size_t{1}, size_t{8}}) {
    TestCache cache(COVATTN_F32, Layout::kTokenMajor, 4096, kv_heads, dim);
    cache.FillRandom(rng);
    const std::vector<float> q = NormalFloats(rng, kv_heads * 4 * dim, 1.0);
    for (size_t n_threads = 1; n_threads <= 4; ++n_threads) {
      INFO(kv_heads << " KV heads, " << n_threads << " threads");
      OrderedPool pool{Order::kInOrder, n_threads, 0};
      const covattn_thread_pool view = pool.Pool();
      const covattn_attention_options options{0.0f, 0, 0, &view};
      std::vector<uint8_t> scratch = ThreadScratch(dim, n_threads);
      std::vector<float> out(kv_heads * 4 * dim);
      REQUIRE(covattn_decode(&cache.view(), q.data(), kv_heads * 4, &options, out.data(),
                             scratch.data(), scratch.size()) == COVATTN_OK);
      // Enough tasks that every thread has work, and a multiple of n_threads.
      CHECK(pool.last_n_tasks >= n_threads);
      CHECK(pool.last_n_tasks % n_threads == 0);
    }
  }
}

TEST_CASE("a pool of more than 1024 threads is split as one of 1024") {
  const size_t dim = 8;
  Rng rng(67);
  TestCache cache(COVATTN_F32, Layout::kTokenMajor, 4096, 2, dim);
  cache.FillRandom(rng);
  const std::vector<float> q = NormalFloats(rng, 8 * dim, 1.0);
  std::vector<float> want(8 * dim), got(8 * dim);
  size_t want_tasks = 0;
  for (size_t n_threads : {size_t{1024}, size_t{1500}}) {
    OrderedPool pool{Order::kShuffled, n_threads, 5};
    const covattn_thread_pool view = pool.Pool();
    const covattn_attention_options options{0.0f, 0, 0, &view};
    std::vector<uint8_t> scratch = ThreadScratch(dim, n_threads);
    std::vector<float>& out = n_threads == 1024 ? want : got;
    REQUIRE(covattn_decode(&cache.view(), q.data(), 8, &options, out.data(), scratch.data(),
                           scratch.size()) == COVATTN_OK);
    if (n_threads == 1024) want_tasks = pool.last_n_tasks;
    CHECK(pool.last_n_tasks == want_tasks);
  }
  CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0);
}

namespace {

// A random token-major cache and queries of N(0, 1) entries.
struct RandomDecode {
  RandomDecode(uint32_t dtype, size_t n_tokens, size_t kv_heads, size_t q_heads, size_t dim,
               uint64_t seed)
      : rng(seed), cache(dtype, Layout::kTokenMajor, n_tokens, kv_heads, dim) {
    cache.FillRandom(rng);
    q = NormalFloats(rng, q_heads * dim, 1.0);
  }
  Rng rng;
  TestCache cache;
  std::vector<float> q;
};

}  // namespace

TEST_CASE("the C++ wrapper sizes its scratch for the options' pool") {
  const size_t dim = 32;
  const RandomDecode problem(COVATTN_F16, 1024, 1, 2, dim, 71);
  const TestCache& cache = problem.cache;
  const std::vector<float>& q = problem.q;
  ThreadPool real(2);
  const covattn_thread_pool pool = real.Pool();
  const covattn_attention_options options{0.0f, 0, 0, &pool};
  std::vector<float> got(2 * dim), want(2 * dim);
  covattn::Attention attention;
  CHECK(attention.Decode(cache.view(), q.data(), 2, got.data(), &options) == COVATTN_OK);
  std::vector<uint8_t> scratch = ThreadScratch(dim, 2);
  REQUIRE(covattn_decode(&cache.view(), q.data(), 2, &options, want.data(), scratch.data(),
                         scratch.size()) == COVATTN_OK);
  CHECK(got == want);
}

TEST_CASE("calls over a pool write nothing beyond the scratch size they asked for") {
  const size_t dim = 40;
  const RandomDecode problem(COVATTN_F32, 3000, 3, 6, dim, 81);
  const TestCache& cache = problem.cache;
  const std::vector<float>& q = problem.q;
  ForEachTarget([&] {
    for (size_t n_threads = 1; n_threads <= 4; ++n_threads) {
      INFO(n_threads << " threads");
      size_t bytes = 0;
      REQUIRE(covattn_attention_scratch_size_threads(dim, n_threads, &bytes) == COVATTN_OK);
      // Guard bytes after the scratch, which starts at every offset from a
      // 64-byte boundary that matters for its alignment.
      for (size_t offset : {0, 4, 60}) {
        std::vector<uint8_t> memory(offset + bytes + 256, 0xAB);
        OrderedPool pool{Order::kReversed, n_threads, 9};
        const covattn_thread_pool view = pool.Pool();
        const covattn_attention_options options{0.0f, 0, 0, &view};
        std::vector<float> out(6 * dim);
        REQUIRE(covattn_decode(&cache.view(), q.data(), 6, &options, out.data(),
                               memory.data() + offset, bytes) == COVATTN_OK);
        CHECK(std::all_of(memory.begin() + offset + bytes, memory.end(),
                          [](uint8_t b) { return b == 0xAB; }));
        CHECK(std::all_of(memory.begin(), memory.begin() + offset,
                          [](uint8_t b) { return b == 0xAB; }));
      }
    }
  });
}

namespace {

// A bounded cache holding n_tokens random tokens (appended in irregular
// blocks, so that slots and summary are in use), and queries for it.
struct FilledCache {
  FilledCache(const covattn_cache_config& config, size_t n_tokens, size_t group, uint64_t seed,
              double q_std_dev = 1.5)
      : cache(MakeCache(config)),
        n_q_heads(config.n_kv_heads * group),
        dim(config.head_dim),
        data(COVATTN_F32, Layout::kTokenMajor, n_tokens, config.n_kv_heads, dim) {
    Rng rng(seed);
    data.FillRandom(rng);
    if (n_tokens != 0) AppendAll(cache.get(), data, seed);
    q = RandomQueries(rng, n_q_heads * dim, q_std_dev);
  }
  CachePtr cache;
  size_t n_q_heads, dim;
  TestCache data;  // every token appended
  std::vector<float> q;
};

covattn_cache_config SlotsConfig(size_t heads, size_t dim, uint32_t dtype, size_t sinks,
                                 size_t window, size_t outliers, size_t retained, uint32_t summary,
                                 uint32_t rope) {
  covattn_cache_config c = Config(heads, dim, sinks, window, outliers, dtype);
  c.n_retained = retained, c.summary = summary, c.rope = rope;
  return c;
}

std::vector<uint8_t> CacheThreadScratch(const FilledCache& c, size_t n_threads) {
  covattn_cache_info info;
  REQUIRE(covattn_cache_info_get(c.cache.get(), &info) == COVATTN_OK);
  size_t bytes = 0;
  REQUIRE(covattn_cache_scratch_size_threads(&info.config, c.n_q_heads, n_threads, &bytes) ==
          COVATTN_OK);
  return std::vector<uint8_t>(bytes);
}

// Decodes with every diagnostic (with_diagnostics) or none, on the calling
// thread (pool null: covattn_cache_decode) or over the pool.
Decoded CacheDecode(const FilledCache& c, const covattn_thread_pool* pool,
                    std::vector<uint8_t>* scratch, bool with_diagnostics = true) {
  Decoded r;
  r.out.assign(c.n_q_heads * c.dim, -1.0f);
  r.share.assign(c.n_q_heads, -1.0f), r.ess.assign(c.n_q_heads, -1.0f);
  r.log_z.assign(c.n_q_heads, -1.0f);
  const covattn_cache_diagnostics diagnostics{r.share.data(), r.ess.data(), r.log_z.data()};
  const covattn_cache_diagnostics* diag = with_diagnostics ? &diagnostics : nullptr;
  r.status =
      pool == nullptr
          ? covattn_cache_decode(c.cache.get(), c.q.data(), c.n_q_heads, 0.0f, r.out.data(), diag,
                                 scratch->data(), scratch->size())
          : covattn_cache_decode_threads(c.cache.get(), c.q.data(), c.n_q_heads, 0.0f, pool,
                                         r.out.data(), diag, scratch->data(), scratch->size());
  return r;
}

// Bit for bit, NaN included.
bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void CheckSameBits(const Decoded& got, const Decoded& want) {
  CHECK(got.status == want.status);
  CHECK(SameBits(got.out, want.out));
  CHECK(SameBits(got.share, want.share));
  CHECK(SameBits(got.ess, want.ess));
  CHECK(SameBits(got.log_z, want.log_z));
}

}  // namespace

TEST_CASE("cache decode over a pool: the one-thread bits, diagnostics included, every schedule") {
  // Summaries of every kind, with and without RoPE; sinks, window, retained
  // and outlier slots; GQA; more KV heads than tasks, and fewer than threads.
  struct Case {
    const char* name;
    covattn_cache_config config;
    size_t group, n_tokens;
    double q_std_dev;
    covattn_status status;  // on one thread, and so over every pool
  };
  const Case cases[] = {
      {"covariance, outliers", SlotsConfig(5, 64, COVATTN_F32, 4, 60, 16, 0, 0, 0), 2, 700, 1.5,
       COVATTN_OK},
      {"compact, retained, half-split RoPE",
       SlotsConfig(3, 32, COVATTN_F16, 2, 40, 0, 8, COVATTN_SUMMARY_COMPACT,
                   COVATTN_ROPE_HALF_SPLIT),
       3, 500, 1.5, COVATTN_OK},
      {"no summary, one KV head",
       SlotsConfig(1, 48, COVATTN_BF16, 0, 100, 0, 0, COVATTN_SUMMARY_NONE, 0), 4, 300, 1.5,
       COVATTN_OK},
      {"covariance, interleaved RoPE, retained and outliers, MHA",
       SlotsConfig(8, 16, COVATTN_F32, 0, 16, 4, 6, 0, COVATTN_ROPE_INTERLEAVED), 1, 400, 1.5,
       COVATTN_OK},
      {"summary only", SlotsConfig(4, 24, COVATTN_F32, 0, 0, 0, 0, 0, 0), 2, 200, 1.5, COVATTN_OK},
      {"empty", SlotsConfig(2, 32, COVATTN_F16, 2, 8, 0, 0, 0, 0), 2, 0, 1.5, COVATTN_FULLY_MASKED},
      // Scores that overflow: the nonfinite status from whichever task.
      {"overflowing scores", SlotsConfig(3, 16, COVATTN_F32, 1, 20, 0, 0, 0, 0), 2, 100, 1e30,
       COVATTN_ERR_NONFINITE},
  };
  uint64_t seed = 1200;
  for (const Case& c : cases) {
    INFO(std::string(c.name));
    const FilledCache filled(c.config, c.n_tokens, c.group, seed++, c.q_std_dev);
    ForEachTarget([&] {
      std::vector<uint8_t> one = Scratch(filled.cache.get(), filled.n_q_heads);
      const Decoded alone = CacheDecode(filled, nullptr, &one);
      CHECK(alone.status == c.status);
      const Decoded alone_bare = CacheDecode(filled, nullptr, &one, /*with_diagnostics=*/false);
      for (size_t n_threads = 1; n_threads <= 4; ++n_threads) {
        INFO(n_threads << " threads");
        std::vector<uint8_t> scratch = CacheThreadScratch(filled, n_threads);
        Schedules schedules(n_threads);
        const covattn_thread_pool* pools = schedules.pools;
        for (size_t p = 0; p < 4; ++p) {
          INFO("pool " << p);
          CheckSameBits(CacheDecode(filled, &pools[p], &scratch), alone);
          const Decoded bare = CacheDecode(filled, &pools[p], &scratch, false);
          CHECK(bare.status == alone_bare.status);
          CHECK(SameBits(bare.out, alone_bare.out));
        }
        // One task per KV head up to two per thread, each a run of heads
        // (too few exact tokens to split by range).
        CHECK(schedules.in_order.last_n_tasks == std::min(c.config.n_kv_heads, 2 * n_threads));
      }
    });
  }
}

namespace {

// The ranges per KV head covattn_cache_decode_threads cuts the exact tokens
// into (cache.h): 1 is a split by whole heads.
size_t DocumentedRanges(size_t kv_heads, size_t exact_tokens, size_t n_threads) {
  const size_t wanted = 2 * n_threads;
  if (n_threads < 2 || kv_heads >= wanted) return 1;
  return std::max<size_t>(1, std::min((wanted + kv_heads - 1) / kv_heads, exact_tokens / 256));
}

double Norm(const float* x, size_t n) {
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += double(x[i]) * x[i];
  return std::sqrt(sum);
}

// Checks a decode split into `ranges` ranges per KV head against the
// one-thread decode of the same cache, whose fullest head holds at most
// `exact_tokens` exact tokens. Each is the exact part's (l, o) merged with
// the summary's readout (the same bits in both). Following the model of
// ReferenceAttention's bound (test_util.h), a relative error delta of the
// exact part's l and o moves out_i by at most delta (M_i + |out_i|) (the
// merge's derivatives), M_i = max |v_i| over the head's tokens, among which
// are its exact ones. delta counts, per weight: the score's rounding (d + 2) u
// A, where A = scale |q| max |k| >= |score| (Cauchy-Schwarz, RoPE or not);
// s - m's (2 A u); exp's (4 u); one rescale per merge (4 u each: the ranges'
// and the summary's); m_exact - m's (m <= log Z, so 2 u (|log Z| + A)); and
// the sums' 4 u sqrt(n) (4 standard deviations of independent roundings).
// The two differ by twice that, plus each final division's 2 u |out_i|.
// log Z moves by delta and share by delta share, each also twice.
void CheckSplitClose(const FilledCache& c, const Decoded& got, const Decoded& alone, size_t ranges,
                     size_t exact_tokens) {
  const size_t d = c.dim, kv_heads = c.data.n_heads(), group = c.n_q_heads / kv_heads;
  const double scale = 1.0 / std::sqrt(double(d)), u = kU;
  CHECK(got.status == alone.status);
  CHECK(SameBits(got.ess, alone.ess));
  for (size_t h = 0; h < c.n_q_heads; ++h) {
    const size_t kv = h / group;
    double max_k = 0.0;
    std::vector<double> max_v(d, 0.0);
    for (size_t t = 0; t < c.data.n_tokens(); ++t) {
      double k2 = 0.0;
      for (size_t i = 0; i < d; ++i) {
        k2 += c.data.K(t, kv, i) * c.data.K(t, kv, i);
        max_v[i] = std::max(max_v[i], std::fabs(c.data.V(t, kv, i)));
      }
      max_k = std::max(max_k, std::sqrt(k2));
    }
    const double a = scale * Norm(c.q.data() + h * d, d) * max_k;
    const double delta = u * ((d + 2) * a + 2 * a + 4 + 4 * (ranges + 1) +
                              2 * (std::fabs(alone.log_z[h]) + a) + 4 * std::sqrt(exact_tokens));
    INFO("query head " << h << ", delta " << delta);
    double worst_ratio = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < d; ++i) {
      const double want = alone.out[h * d + i];
      const double bound = 2 * delta * (max_v[i] + std::fabs(want)) + 4 * u * std::fabs(want);
      const double ratio = std::fabs(got.out[h * d + i] - want) / bound;
      if (!(ratio <= worst_ratio)) worst_ratio = ratio, worst = i;  // NaN counts as worst
    }
    INFO("dim " << worst << ": got " << got.out[h * d + worst] << ", one thread "
                << alone.out[h * d + worst]);
    CHECK(worst_ratio <= 1.0);
    CHECK(std::fabs(got.log_z[h] - alone.log_z[h]) <=
          2 * delta + 4 * u * (std::fabs(alone.log_z[h]) + 1));
    CHECK(std::fabs(got.share[h] - alone.share[h]) <= 2 * delta * alone.share[h] + 4 * u);
  }
}

// Checks a decode of a cache holding only its sinks and window against the
// double reference of exact attention over those tokens.
void CheckWindowReference(const FilledCache& c, const Decoded& got, size_t window, size_t sinks) {
  const size_t d = c.dim, group = c.n_q_heads / c.data.n_heads();
  for (size_t h = 0; h < c.n_q_heads; ++h) {
    INFO("query head " << h);
    const ReferenceRow ref =
        ReferenceAttention(c.data, c.q.data() + h * d, 1.0f / std::sqrt(float(d)), h / group,
                           c.data.n_tokens() - 1, window, sinks);
    CheckRow(got.out.data() + h * d, ref, d);
    CHECK(std::fabs(got.log_z[h] - ref.log_z) <= ref.log_z_bound);
    CHECK(got.share[h] == 0.0f);
  }
}

// Decodes over the pool into outputs and diagnostics of 3s, which a failed
// call must leave so.
covattn_status DecodeOrUntouched(const FilledCache& filled, const covattn_thread_pool* pool,
                                 void* scratch, size_t scratch_bytes) {
  const size_t n = filled.n_q_heads;
  std::vector<float> out(n * filled.dim, 3.0f), share(n, 3.0f), ess(n, 3.0f), log_z(n, 3.0f);
  const covattn_cache_diagnostics diagnostics{share.data(), ess.data(), log_z.data()};
  const covattn_status s =
      covattn_cache_decode_threads(filled.cache.get(), filled.q.data(), n, 0.0f, pool, out.data(),
                                   &diagnostics, scratch, scratch_bytes);
  if (s < 0) {
    for (const std::vector<float>* v : {&out, &share, &ess, &log_z}) {
      CHECK(std::all_of(v->begin(), v->end(), [](float x) { return x == 3.0f; }));
    }
  }
  return s;
}

// Each pool that breaks the contract, as two threads, is found out with
// nothing written; the decode must have at least two tasks on two threads.
void CheckBrokenPoolsRefused(const FilledCache& filled, std::vector<uint8_t>* scratch) {
  covattn_thread_pool skipping{SkippingParallelFor, nullptr, 2},
      bad_thread{BadThreadParallelFor, nullptr, 2}, twice{TwiceParallelFor, nullptr, 2},
      repeating{RepeatingParallelFor, nullptr, 2};
  bad_thread.pool_context = &bad_thread;
  for (const covattn_thread_pool* pool : {&skipping, &bad_thread, &twice, &repeating}) {
    CHECK(DecodeOrUntouched(filled, pool, scratch->data(), scratch->size()) ==
          COVATTN_ERR_INVALID_THREAD_POOL);
  }
}

}  // namespace

TEST_CASE("cache decode over more threads than KV heads: split by range, same bits per schedule") {
  // Long windows of one and two KV heads, alone (against the double
  // reference) or with retained and outlier slots and a summary; and one
  // holding too few tokens to split (the one-thread bits then).
  struct Case {
    const char* name;
    covattn_cache_config config;
    size_t group, n_tokens;
    bool window_only;  // the cache holds its sinks and window only
  };
  const Case cases[] = {
      {"one KV head, sinks + window",
       SlotsConfig(1, 64, COVATTN_F32, 4, 2000, 0, 0, COVATTN_SUMMARY_NONE, 0), 4, 3000, true},
      {"two KV heads, sinks + window",
       SlotsConfig(2, 48, COVATTN_F32, 3, 2000, 0, 0, COVATTN_SUMMARY_NONE, 0), 3, 2600, true},
      {"one KV head, covariance, retained and outliers",
       SlotsConfig(1, 64, COVATTN_F32, 4, 2000, 16, 32, 0, 0), 4, 3000, false},
      {"two KV heads, compact, retained, half-split RoPE",
       SlotsConfig(2, 32, COVATTN_F32, 2, 2000, 0, 24, COVATTN_SUMMARY_COMPACT,
                   COVATTN_ROPE_HALF_SPLIT),
       2, 2800, false},
      // int8: the ranges' scales move with their tokens.
      {"one KV head, int8, covariance and outliers",
       SlotsConfig(1, 64, COVATTN_INT8, 4, 2000, 16, 0, 0, 0), 4, 3000, false},
      {"one KV head, too few tokens to split",
       SlotsConfig(1, 64, COVATTN_F32, 4, 2000, 16, 0, 0, 0), 4, 300, false},
  };
  uint64_t seed = 1250;
  for (const Case& c : cases) {
    INFO(std::string(c.name));
    const FilledCache filled(c.config, c.n_tokens, c.group, seed++);
    const covattn_cache_config& config = c.config;
    covattn_cache_info info;
    REQUIRE(covattn_cache_info_get(filled.cache.get(), &info) == COVATTN_OK);
    // The exact tokens the fullest head holds: sinks and window, and up to
    // all of its slots.
    const size_t held = std::min(c.n_tokens, config.n_sinks + config.window);
    const size_t most = held + (c.n_tokens > held ? config.n_retained + config.n_outliers : 0);
    const size_t kv_heads = config.n_kv_heads,
                 summary_tasks = info.n_summarized != 0 ? kv_heads : 0;
    ForEachTarget([&] {
      std::vector<uint8_t> one = Scratch(filled.cache.get(), filled.n_q_heads);
      const Decoded alone = CacheDecode(filled, nullptr, &one);
      REQUIRE(alone.status == COVATTN_OK);
      if (c.window_only) CheckWindowReference(filled, alone, config.window, config.n_sinks);
      for (size_t n_threads = 1; n_threads <= 4; ++n_threads) {
        INFO(n_threads << " threads");
        std::vector<uint8_t> scratch = CacheThreadScratch(filled, n_threads);
        Schedules schedules(n_threads);
        const covattn_thread_pool* pools = schedules.pools;
        const Decoded first = CacheDecode(filled, &pools[0], &scratch);
        const Decoded first_bare = CacheDecode(filled, &pools[0], &scratch, false);
        CHECK(SameBits(first_bare.out, first.out));
        for (size_t p = 1; p < 4; ++p) {
          INFO("pool " << p);
          CheckSameBits(CacheDecode(filled, &pools[p], &scratch), first);
          CHECK(SameBits(CacheDecode(filled, &pools[p], &scratch, false).out, first.out));
        }
        // The tasks cache.h documents: ranges of every head, one summary
        // task per head; or runs of whole heads.
        const size_t fewest = DocumentedRanges(kv_heads, held, n_threads);
        const size_t ranges = DocumentedRanges(kv_heads, most, n_threads);
        const size_t tasks = schedules.in_order.last_n_tasks;
        if (ranges == 1) {
          CHECK(tasks == std::min(kv_heads, 2 * n_threads));
          CheckSameBits(first, alone);
          continue;
        }
        CHECK(tasks >= kv_heads * fewest + summary_tasks);
        CHECK(tasks <= kv_heads * ranges + summary_tasks);
        CHECK(tasks >= n_threads);  // every thread has work
        CheckSplitClose(filled, first, alone, ranges, most);
        if (c.window_only) CheckWindowReference(filled, first, config.window, config.n_sinks);
      }
    });
  }
}

TEST_CASE("cache decode split by range: a score that overflows in one range is reported") {
  const size_t dim = 64, n_tokens = 2500, sinks = 4, window = 2000;
  const covattn_cache_config config =
      SlotsConfig(1, dim, COVATTN_F32, sinks, window, 0, 0, COVATTN_SUMMARY_NONE, 0);
  // One key of 2^40 (the largest the cache takes) against queries of 1e28:
  // its score overflows, every other one is finite. In the first range of
  // the window, or in the last.
  for (size_t poisoned : {n_tokens - window + 10, n_tokens - 5}) {
    INFO("huge key at token " << poisoned);
    Rng rng(1270);
    TestCache data(COVATTN_F32, Layout::kTokenMajor, n_tokens, 1, dim);
    data.FillRandom(rng);
    for (size_t i = 0; i < dim; ++i) data.SetK(poisoned, 0, i, std::ldexp(1.0, 40));
    FilledCache filled(config, 0, 4, 1271);
    AppendAll(filled.cache.get(), data, 1272);
    std::fill(filled.q.begin(), filled.q.end(), 1e28f);
    ForEachTarget([&] {
      std::vector<uint8_t> one = Scratch(filled.cache.get(), filled.n_q_heads);
      CHECK(CacheDecode(filled, nullptr, &one).status == COVATTN_ERR_NONFINITE);
      for (size_t n_threads = 2; n_threads <= 4; ++n_threads) {
        INFO(n_threads << " threads");
        std::vector<uint8_t> scratch = CacheThreadScratch(filled, n_threads);
        OrderedPool shuffled{Order::kShuffled, n_threads, 4};
        ThreadPool real(n_threads);
        const covattn_thread_pool pools[] = {shuffled.Pool(), real.Pool()};
        for (const covattn_thread_pool& pool : pools) {
          CHECK(CacheDecode(filled, &pool, &scratch).status == COVATTN_ERR_NONFINITE);
          CHECK(CacheDecode(filled, &pool, &scratch, false).status == COVATTN_ERR_NONFINITE);
        }
        CHECK(shuffled.last_n_tasks > 1);  // split
      }
    });
  }
}

namespace {}  // namespace

TEST_CASE("cache decode over a pool: the pool and the scratch are validated, nothing written") {
  const covattn_cache_config config = Config(4, 32, 2, 30, 8);
  const FilledCache filled(config, 300, 2, 1300);
  const size_t n = filled.n_q_heads, dim = filled.dim;
  size_t one = 0, two = 0, bytes = 0;
  REQUIRE(covattn_cache_scratch_size(&config, n, &one) == COVATTN_OK);
  REQUIRE(covattn_cache_scratch_size_threads(&config, n, 2, &two) == COVATTN_OK);
  auto round_up = [](size_t x) { return (x + 63) / 64 * 64; };
  CHECK(two == 64 + round_up(4 * n * (dim + 3)) + 2 * round_up(one));  // the formula in cache.h
  CHECK(covattn_cache_scratch_size_threads(&config, n, 0, &bytes) ==
        COVATTN_ERR_INVALID_THREAD_POOL);
  CHECK(covattn_cache_scratch_size_threads(nullptr, n, 2, &bytes) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cache_scratch_size_threads(&config, n, 2, nullptr) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cache_scratch_size_threads(&config, 6, 2, &bytes) == COVATTN_ERR_HEAD_MISMATCH);
  CHECK(covattn_cache_scratch_size_threads(&config, n, SIZE_MAX / 1000, &bytes) ==
        COVATTN_ERR_SIZE_OVERFLOW);
  covattn_cache_config bad = config;
  bad.forgetting = 2.0f;
  CHECK(covattn_cache_scratch_size_threads(&bad, n, 2, &bytes) == COVATTN_ERR_INVALID_FORGETTING);

  const std::vector<uint8_t> file = Serialize(filled.cache.get());
  std::vector<uint8_t> scratch(two);
  ThreadPool real(2);
  const covattn_thread_pool good = real.Pool();
  auto decode = [&](const covattn_thread_pool* pool, void* scratch_data, size_t scratch_bytes) {
    const covattn_status s = DecodeOrUntouched(filled, pool, scratch_data, scratch_bytes);
    CHECK(Serialize(filled.cache.get()) == file);  // decode never changes the cache
    return s;
  };
  CHECK(decode(&good, scratch.data(), two) == COVATTN_OK);
  CHECK(decode(&good, scratch.data(), two - 1) == COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(decode(&good, scratch.data(), one) == COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(decode(&good, nullptr, two) == COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(decode(nullptr, scratch.data(), one) == COVATTN_OK);  // one thread: its own size
  covattn_thread_pool no_callback = good, no_threads = good, huge = good;
  no_callback.parallel_for = nullptr;
  no_threads.n_threads = 0;
  huge.n_threads = SIZE_MAX / 2;
  CHECK(decode(&no_callback, scratch.data(), two) == COVATTN_ERR_INVALID_THREAD_POOL);
  CHECK(decode(&no_threads, scratch.data(), two) == COVATTN_ERR_INVALID_THREAD_POOL);
  CHECK(decode(&huge, scratch.data(), two) == COVATTN_ERR_SCRATCH_TOO_SMALL);
  // Argument errors come before the pool's scratch: the same statuses as
  // covattn_cache_decode.
  CHECK(covattn_cache_decode_threads(filled.cache.get(), filled.q.data(), 6, 0.0f, &good,
                                     std::vector<float>(6 * dim).data(), nullptr, scratch.data(),
                                     two) == COVATTN_ERR_HEAD_MISMATCH);
  CHECK(covattn_cache_decode_threads(nullptr, filled.q.data(), n, 0.0f, &good,
                                     std::vector<float>(n * dim).data(), nullptr, scratch.data(),
                                     two) == COVATTN_ERR_NULL_POINTER);
  CHECK(covattn_cache_decode_threads(filled.cache.get(), filled.q.data(), n, 0.0f, &good,
                                     reinterpret_cast<float*>(scratch.data()), nullptr,
                                     scratch.data(), two) == COVATTN_ERR_ALIASING);
  // Four KV heads on two threads: four tasks, so each breach is visible.
  ForEachTarget([&] { CheckBrokenPoolsRefused(filled, &scratch); });
  CHECK(Serialize(filled.cache.get()) == file);
}

TEST_CASE("cache decode split by range: broken pools are found out, nothing written") {
  // One KV head on two threads: four ranges and the summary's task.
  const covattn_cache_config config = SlotsConfig(1, 32, COVATTN_F32, 4, 2000, 8, 0, 0, 0);
  const FilledCache filled(config, 2600, 4, 1320);
  std::vector<uint8_t> scratch = CacheThreadScratch(filled, 2);
  // The formula in cache.h: N_max = min(ceil(4 / 1), floor(2012 / 256)) = 4
  // range states of g = 4 query rows, and the summary's readouts.
  size_t one = 0;
  REQUIRE(covattn_cache_scratch_size(&config, 4, &one) == COVATTN_OK);
  auto round_up = [](size_t x) { return (x + 63) / 64 * 64; };
  CHECK(scratch.size() == 64 + round_up(4 * 4 * 35) + 2 * round_up(one) + 4 * round_up(4 * 4 * 34) +
                              round_up(4 * 4 * 34));
  OrderedPool in_order{Order::kInOrder, 2, 0};
  const covattn_thread_pool view = in_order.Pool();
  REQUIRE(DecodeOrUntouched(filled, &view, scratch.data(), scratch.size()) == COVATTN_OK);
  CHECK(in_order.last_n_tasks == 5);
  ForEachTarget([&] { CheckBrokenPoolsRefused(filled, &scratch); });
}

TEST_CASE("cache decode over a pool writes nothing beyond the scratch size it asked for") {
  // By whole heads, and split by range on 2..4 threads (the range states
  // and the summary's readouts at the end of the scratch).
  // RoPE: the readout's work area in use.
  const struct {
    covattn_cache_config config;
    size_t n_tokens;
  } cases[] = {{SlotsConfig(3, 40, COVATTN_F32, 1, 20, 4, 0, 0, COVATTN_ROPE_HALF_SPLIT), 250},
               {SlotsConfig(1, 40, COVATTN_F32, 3, 2000, 4, 8, 0, COVATTN_ROPE_HALF_SPLIT), 2500}};
  for (const auto& c : cases) {
    const covattn_cache_config& config = c.config;
    INFO(config.n_kv_heads << " KV heads");
    const FilledCache filled(config, c.n_tokens, 2, 1400);
    ForEachTarget([&] {
      for (size_t n_threads = 1; n_threads <= 4; ++n_threads) {
        INFO(n_threads << " threads");
        size_t bytes = 0;
        REQUIRE(covattn_cache_scratch_size_threads(&config, filled.n_q_heads, n_threads, &bytes) ==
                COVATTN_OK);
        for (size_t offset : {0, 4, 60}) {
          std::vector<uint8_t> memory(offset + bytes + 256, 0xAB);
          OrderedPool pool{Order::kShuffled, n_threads, 7};
          const covattn_thread_pool view = pool.Pool();
          const size_t n = filled.n_q_heads;
          std::vector<float> out(n * filled.dim), share(n), ess(n), log_z(n);
          const covattn_cache_diagnostics diagnostics{share.data(), ess.data(), log_z.data()};
          REQUIRE(covattn_cache_decode_threads(filled.cache.get(), filled.q.data(), n, 0.0f, &view,
                                               out.data(), &diagnostics, memory.data() + offset,
                                               bytes) == COVATTN_OK);
          // The one-KV-head cache is split from two threads on.
          CHECK((pool.last_n_tasks > config.n_kv_heads) == (c.n_tokens > 1000 && n_threads > 1));
          CHECK(std::all_of(memory.begin() + offset + bytes, memory.end(),
                            [](uint8_t b) { return b == 0xAB; }));
          CHECK(std::all_of(memory.begin(), memory.begin() + offset,
                            [](uint8_t b) { return b == 0xAB; }));
        }
      }
    });
  }
}

TEST_CASE("the C++ wrapper's cache decode sizes its scratch for the pool") {
  const size_t dim = 32, q_heads = 4;
  Rng rng(1500);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 120, 2, dim);
  data.FillRandom(rng);
  const std::vector<float> q = RandomQueries(rng, q_heads * dim, 1.0);
  covattn::Cache cache(Config(2, dim, 1, 16, 2));
  covattn::Scratch scratch;
  cache.Append(data.view(), scratch);
  ThreadPool real(2);
  const covattn_thread_pool pool = real.Pool();
  std::vector<float> got(q_heads * dim), want(q_heads * dim);
  CHECK(cache.Decode(q.data(), q_heads, 0.0f, want.data(), nullptr, scratch) == COVATTN_OK);
  CHECK(cache.Decode(q.data(), q_heads, 0.0f, got.data(), nullptr, scratch, &pool) == COVATTN_OK);
  CHECK(SameBits(got, want));
  covattn_thread_pool no_threads = pool;
  no_threads.n_threads = 0;
  CHECK_THROWS_AS(cache.Decode(q.data(), q_heads, 0.0f, got.data(), nullptr, scratch, &no_threads),
                  covattn::Error);
}
