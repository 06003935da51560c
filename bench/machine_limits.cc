// STREAM-like read bandwidth and FMA peak, vectorized with Highway for the
// best target of this CPU.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "machine_limits.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace covattn_bench {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sum of n floats with four independent accumulators: bound by reads.
float SumFloats(const float* HWY_RESTRICT p, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  size_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    a0 = hn::Add(a0, hn::LoadU(d, p + i));
    a1 = hn::Add(a1, hn::LoadU(d, p + i + N));
    a2 = hn::Add(a2, hn::LoadU(d, p + i + 2 * N));
    a3 = hn::Add(a3, hn::LoadU(d, p + i + 3 * N));
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) sum += p[i];
  return sum;
}

// `iterations` rounds of 12 independent FMA chains (enough to cover latency x
// throughput on current cores); returns FMA lanes executed via *lanes.
float FmaChains(size_t iterations, float seed, size_t* lanes) {
  const hn::ScalableTag<float> d;
  const auto m = hn::Set(d, 0.999999f), c = hn::Set(d, 1e-7f);
  auto x0 = hn::Set(d, seed), x1 = hn::Add(x0, c), x2 = hn::Add(x1, c), x3 = hn::Add(x2, c);
  auto x4 = hn::Add(x3, c), x5 = hn::Add(x4, c), x6 = hn::Add(x5, c), x7 = hn::Add(x6, c);
  auto x8 = hn::Add(x7, c), x9 = hn::Add(x8, c), xa = hn::Add(x9, c), xb = hn::Add(xa, c);
  for (size_t i = 0; i < iterations; ++i) {
    x0 = hn::MulAdd(x0, m, c), x1 = hn::MulAdd(x1, m, c), x2 = hn::MulAdd(x2, m, c);
    x3 = hn::MulAdd(x3, m, c), x4 = hn::MulAdd(x4, m, c), x5 = hn::MulAdd(x5, m, c);
    x6 = hn::MulAdd(x6, m, c), x7 = hn::MulAdd(x7, m, c), x8 = hn::MulAdd(x8, m, c);
    x9 = hn::MulAdd(x9, m, c), xa = hn::MulAdd(xa, m, c), xb = hn::MulAdd(xb, m, c);
  }
  *lanes = iterations * 12 * hn::Lanes(d);
  const auto s = hn::Add(hn::Add(hn::Add(x0, x1), hn::Add(x2, x3)),
                         hn::Add(hn::Add(hn::Add(x4, x5), hn::Add(x6, x7)),
                                 hn::Add(hn::Add(x8, x9), hn::Add(xa, xb))));
  return hn::GetLane(hn::SumOfLanes(d, s));
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn_bench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include "machine_limits.h"

namespace covattn_bench {
HWY_EXPORT(SumFloats);
HWY_EXPORT(FmaChains);

namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

MachineLimits Measure() {
  MachineLimits limits;
  // 1 GiB: far beyond any last-level cache of this class of machine.
  const size_t n = size_t{1} << 28;
  std::vector<float> buffer(n, 1.0f);
  float sink = 0.0f;
  for (int pass = 0; pass < 5; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    sink += HWY_DYNAMIC_DISPATCH(SumFloats)(buffer.data(), n);
    limits.read_bytes_per_second =
        std::max(limits.read_bytes_per_second, n * sizeof(float) / Seconds(start));
  }
  for (int pass = 0; pass < 5; ++pass) {
    size_t lanes = 0;
    const auto start = std::chrono::steady_clock::now();
    sink += HWY_DYNAMIC_DISPATCH(FmaChains)(size_t{1} << 24, sink * 1e-30f + 1.0f, &lanes);
    limits.fma_flops_per_second =
        std::max(limits.fma_flops_per_second, 2.0 * lanes / Seconds(start));
  }
  benchmark::DoNotOptimize(sink);
  const int64_t used = hwy::SupportedTargets() & HWY_TARGETS;  // what dispatch picked
  limits.fma_target = hwy::TargetName(used & -used);
  return limits;
}

}  // namespace

const MachineLimits& Limits() {
  static const MachineLimits limits = Measure();
  return limits;
}

void RegisterLimitBenchmarks() {
  benchmark::RegisterBenchmark("machine/read_bandwidth_1GiB", [](benchmark::State& state) {
    const MachineLimits& limits = Limits();
    for (auto _ : state) benchmark::DoNotOptimize(limits);
    state.counters["bytes_per_second"] = limits.read_bytes_per_second;
  })->Iterations(1);
  benchmark::RegisterBenchmark("machine/fma_peak_f32", [](benchmark::State& state) {
    const MachineLimits& limits = Limits();
    for (auto _ : state) benchmark::DoNotOptimize(limits);
    state.counters["flops"] = limits.fma_flops_per_second;
    state.SetLabel(limits.fma_target);
  })->Iterations(1);
}

double TwoThreadReadBytesPerSecond() {
  static const double bytes_per_second = [] {
    const size_t n = size_t{1} << 28, half = n / 2;
    std::vector<float> buffer(n, 1.0f);
    float sums[2] = {0.0f, 0.0f};
    double best = 0.0;
    for (int pass = 0; pass < 5; ++pass) {
      const auto start = std::chrono::steady_clock::now();
      std::thread other(
          [&] { sums[1] += HWY_DYNAMIC_DISPATCH(SumFloats)(buffer.data() + half, half); });
      sums[0] += HWY_DYNAMIC_DISPATCH(SumFloats)(buffer.data(), half);
      other.join();
      // Includes starting the thread (tens of microseconds in ~50 ms).
      best = std::max(best, n * sizeof(float) / Seconds(start));
    }
    benchmark::DoNotOptimize(sums);
    return best;
  }();
  return bytes_per_second;
}

void RegisterTwoThreadLimitBenchmark() {
  benchmark::RegisterBenchmark("machine/read_bandwidth_1GiB_2threads", [](benchmark::State& state) {
    const double bytes_per_second = TwoThreadReadBytesPerSecond();
    for (auto _ : state) benchmark::DoNotOptimize(bytes_per_second);
    state.counters["bytes_per_second"] = bytes_per_second;
  })->Iterations(1);
}

}  // namespace covattn_bench
#endif  // HWY_ONCE
