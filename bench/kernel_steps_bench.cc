// The inner steps of exact attention in isolation: ScoreRows (scores of four
// query rows against a chunk of keys), AccumulateRows (their weighted sum of
// the values) and ScoreRowsInLanes (prefill's scores of 32 rows), per
// element type and target, on one chunk of 64 tokens that stays in L1. of_fma_peak says how close
// each step comes to the FMA peak measured in the same run, with no memory traffic, prefetch or
// softmax bookkeeping around it: the whole kernel cannot beat its slower
// step (docs/results.md, "The steps in isolation").
// Built like a kernel file (hwy/foreach_target.h with the library's targets)
// and dispatched through covattn's own choice, so covattn_restrict_targets
// picks the target a row runs on.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernel_steps_bench.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "attention_kernels-inl.h"

// Once, not per target: the exported functions of every target take it.
#ifndef COVATTN_BENCH_KERNEL_STEPS_DATA_
#define COVATTN_BENCH_KERNEL_STEPS_DATA_
namespace covattn_bench {
// What a step works on: four rows (GQA 4:1) and one chunk of n tokens of one
// KV head, contiguous, as the kernels see a head-major cache.
struct StepData {
  size_t dim, n_tokens;
  const void* k;  // [n_tokens][dim] of the element type
  const void* v;
  const float* a;  // [4][dim] scaled queries
  const float* p;  // [4][n_tokens] softmax weights
  float* s;        // [4][n_tokens] scores
  float* o;        // [4][dim] output sums
};
}  // namespace covattn_bench
#endif

HWY_BEFORE_NAMESPACE();
namespace covattn_bench {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace kernels = covattn::HWY_NAMESPACE;

// The vectors a decode of this dim runs on (AttentionTyped's choice), and
// the call of f(d) with them.
template <class F>
HWY_INLINE void WithHeadVectors(size_t dim, F&& f) {
  const hn::ScalableTag<float> d_full;
  const hn::CappedTag<float, 8> d8;
  const hn::CappedTag<float, 4> d4;
  const size_t lanes[3] = {hn::Lanes(d_full), hn::Lanes(d8), hn::Lanes(d4)};
  switch (kernels::HeadVectorChoice(dim, lanes)) {
    case 0:
      f(d_full);
      break;
    case 1:
      f(d8);
      break;
    default:
      f(d4);
      break;
  }
}

// `reps` calls of one step on the chunk; score: ScoreRows, else AccumulateRows.
template <typename T>
void RunStep(const StepData& data, bool score, size_t reps) {
  WithHeadVectors(data.dim, [&](auto d) {
    kernels::PrefetchCursor<T> cursor;  // never reset: it has nothing to fetch
    const T* k = static_cast<const T*>(data.k);
    const T* v = static_cast<const T*>(data.v);
    for (size_t i = 0; i < reps; ++i) {
      if (score) {
        kernels::ScoreRows<4, false>(d, data.a, data.dim, k, data.dim, data.n_tokens, data.dim,
                                     data.s, data.n_tokens, cursor, 0);
      } else {
        kernels::AccumulateRows<4, false>(d, data.p, data.n_tokens, 1, v, data.dim, data.n_tokens,
                                          data.dim, data.o, data.dim, cursor, 0);
      }
    }
  });
}
// `reps` calls of the prefill score step: ScoreRowsInLanes for 32 rows, after
// KeysAsF32 for the 16-bit and int8 keys (ScoreChunkInLanes).
template <typename T>
void RunLanesStep(const StepData& data, float* a_t, float* k_f32, float* s_t, size_t reps) {
  WithHeadVectors(data.dim, [&](auto d) {
    const T* k = static_cast<const T*>(data.k);
    for (size_t i = 0; i < reps; ++i) {
      if constexpr (std::is_same_v<T, float>) {
        kernels::ScoreRowsInLanes(a_t, covattn::detail::kPassRows, k, data.dim, data.n_tokens,
                                  data.dim, 0, s_t);
      } else {
        kernels::KeysAsF32(d, k, data.dim, data.n_tokens, data.dim, 0, k_f32);
        kernels::ScoreRowsInLanes(a_t, covattn::detail::kPassRows, k_f32, data.dim, data.n_tokens,
                                  data.dim, 0, s_t);
      }
    }
  });
}
void LanesF32(const StepData& data, float* a_t, float* k_f32, float* s_t, size_t reps) {
  RunLanesStep<float>(data, a_t, k_f32, s_t, reps);
}
void LanesF16(const StepData& data, float* a_t, float* k_f32, float* s_t, size_t reps) {
  RunLanesStep<hwy::float16_t>(data, a_t, k_f32, s_t, reps);
}
void LanesBF16(const StepData& data, float* a_t, float* k_f32, float* s_t, size_t reps) {
  RunLanesStep<hwy::bfloat16_t>(data, a_t, k_f32, s_t, reps);
}
void LanesInt8(const StepData& data, float* a_t, float* k_f32, float* s_t, size_t reps) {
  RunLanesStep<int8_t>(data, a_t, k_f32, s_t, reps);
}

void StepF32(const StepData& data, bool score, size_t reps) { RunStep<float>(data, score, reps); }
void StepF16(const StepData& data, bool score, size_t reps) {
  RunStep<hwy::float16_t>(data, score, reps);
}
void StepBF16(const StepData& data, bool score, size_t reps) {
  RunStep<hwy::bfloat16_t>(data, score, reps);
}
void StepInt8(const StepData& data, bool score, size_t reps) { RunStep<int8_t>(data, score, reps); }

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn_bench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <benchmark/benchmark.h>

#include <string>

#include "bench_util.h"
#include "covattn/covattn.h"
#include "dispatch.h"
#include "half.h"
#include "machine_limits.h"

namespace covattn_bench {
HWY_EXPORT(StepF32);
HWY_EXPORT(StepF16);
HWY_EXPORT(StepBF16);
HWY_EXPORT(StepInt8);
HWY_EXPORT(LanesF32);
HWY_EXPORT(LanesF16);
HWY_EXPORT(LanesBF16);
HWY_EXPORT(LanesInt8);

namespace {

constexpr size_t kChunk = 64;  // the kernels' chunk of tokens (attention.h)
constexpr size_t kRows = 4;
constexpr size_t kRepsPerIteration = 64;

// K and V elements of one type, from N(0, 1) values (int8: their codes).
std::vector<uint8_t> Elements(uint32_t dtype, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t bytes = dtype == COVATTN_F32 ? 4 : dtype == COVATTN_INT8 ? 1 : 2;
  std::vector<uint8_t> out(n * bytes);
  for (size_t i = 0; i < n; ++i) {
    const float x = normal(rng);
    if (dtype == COVATTN_F32) {
      std::memcpy(out.data() + 4 * i, &x, 4);
    } else if (dtype == COVATTN_INT8) {
      out[i] = static_cast<uint8_t>(
          static_cast<int8_t>(std::lrint(std::fmax(-127.0f, std::fmin(127.0f, 40.0f * x)))));
    } else {
      const uint16_t bits =
          dtype == COVATTN_F16 ? covattn::F16BitsFromF32(x) : covattn::BF16BitsFromF32(x);
      std::memcpy(out.data() + 2 * i, &bits, 2);
    }
  }
  return out;
}

void Step(benchmark::State& state, const std::string& target, uint32_t dtype, size_t dim,
          bool score) {
  if (covattn_restrict_targets(target.c_str()) != COVATTN_OK) {
    state.SkipWithError("target unavailable");
    return;
  }
  const std::vector<uint8_t> k = Elements(dtype, kChunk * dim, 1);
  const std::vector<uint8_t> v = Elements(dtype, kChunk * dim, 2);
  std::vector<float> a(kRows * dim, 0.05f), p(kRows * kChunk, 1.0f / kChunk);
  std::vector<float> s(kRows * kChunk), o(kRows * dim, 0.0f);
  const StepData data{dim, kChunk, k.data(), v.data(), a.data(), p.data(), s.data(), o.data()};
  auto step = dtype == COVATTN_F32    ? COVATTN_DISPATCH(StepF32)
              : dtype == COVATTN_F16  ? COVATTN_DISPATCH(StepF16)
              : dtype == COVATTN_BF16 ? COVATTN_DISPATCH(StepBF16)
                                      : COVATTN_DISPATCH(StepInt8);
  for (auto _ : state) {
    step(data, score, kRepsPerIteration);
    benchmark::DoNotOptimize(s.data());
    benchmark::DoNotOptimize(o.data());
  }
  const double flops = 2.0 * kRows * kChunk * dim * kRepsPerIteration;
  state.counters["of_fma_peak"] = benchmark::Counter(flops / Limits().fma_flops_per_second,
                                                     benchmark::Counter::kIsIterationInvariantRate);
  covattn_restrict_targets(nullptr);
}

// The prefill score step (rows in the lanes): 32 rows against the chunk.
void LanesStep(benchmark::State& state, const std::string& target, uint32_t dtype, size_t dim) {
  if (covattn_restrict_targets(target.c_str()) != COVATTN_OK) {
    state.SkipWithError("target unavailable");
    return;
  }
  constexpr size_t kLanesRows = covattn::detail::kPassRows;
  const std::vector<uint8_t> k = Elements(dtype, kChunk * dim, 1);
  std::vector<float> a_t(dim * kLanesRows, 0.05f), k_f32(kChunk * dim), s_t(kChunk * kLanesRows);
  const StepData data{dim, kChunk, k.data(), nullptr, nullptr, nullptr, nullptr, nullptr};
  auto step = dtype == COVATTN_F32    ? COVATTN_DISPATCH(LanesF32)
              : dtype == COVATTN_F16  ? COVATTN_DISPATCH(LanesF16)
              : dtype == COVATTN_BF16 ? COVATTN_DISPATCH(LanesBF16)
                                      : COVATTN_DISPATCH(LanesInt8);
  for (auto _ : state) {
    step(data, a_t.data(), k_f32.data(), s_t.data(), kRepsPerIteration);
    benchmark::DoNotOptimize(s_t.data());
  }
  const double flops = 2.0 * kLanesRows * kChunk * dim * kRepsPerIteration;
  state.counters["of_fma_peak"] = benchmark::Counter(flops / Limits().fma_flops_per_second,
                                                     benchmark::Counter::kIsIterationInvariantRate);
  covattn_restrict_targets(nullptr);
}

void RegisterSteps() {
  const uint32_t dtypes[] = {COVATTN_F32, COVATTN_F16, COVATTN_BF16, COVATTN_INT8};
  for (size_t i = 0; i < covattn_available_target_count(); ++i) {
    const std::string target = covattn_available_target(i);
    for (bool score : {true, false}) {
      for (uint32_t dtype : dtypes) {
        for (size_t dim : {48, 128}) {
          const std::string name = std::string("steps/") + (score ? "score" : "accumulate") +
                                   "_rows4_tokens64_d" + std::to_string(dim) + "/" +
                                   DtypeName(dtype) + "/" + target;
          benchmark::RegisterBenchmark(name.c_str(), Step, target, dtype, dim, score);
        }
      }
    }
    for (uint32_t dtype : dtypes) {
      for (size_t dim : {48, 128}) {
        const std::string name = "steps/score_lanes_rows32_tokens64_d" + std::to_string(dim) + "/" +
                                 DtypeName(dtype) + "/" + target;
        benchmark::RegisterBenchmark(name.c_str(), LanesStep, target, dtype, dim);
      }
    }
  }
}

}  // namespace
}  // namespace covattn_bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  covattn_bench::RegisterLimitBenchmarks();
  covattn_bench::RegisterSteps();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
#endif  // HWY_ONCE
