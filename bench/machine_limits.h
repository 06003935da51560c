// The machine's limits, measured in the same run as the kernels so that every
// figure can be read as a fraction of them: single-core read bandwidth from
// DRAM and the f32 FMA peak of the best target.
#ifndef COVATTN_BENCH_MACHINE_LIMITS_H_
#define COVATTN_BENCH_MACHINE_LIMITS_H_

#include <cstddef>

namespace covattn_bench {

struct MachineLimits {
  double read_bytes_per_second = 0.0;  // one core, buffer far beyond the caches
  double fma_flops_per_second = 0.0;   // one core, f32, 2 FLOP per FMA lane
  const char* fma_target = "";         // Highway target the peak was measured on
};

// Measures both (best of several passes) on first use; later calls return
// the cached figures.
const MachineLimits& Limits();

// Registers two benchmarks that report the limits as counters, so they appear
// in the output next to the kernels.
void RegisterLimitBenchmarks();

// Read bandwidth of two threads at once, each summing its own half of a
// 1 GiB buffer (best of several passes), measured on first use: the limit of
// kernels run on two threads.
double TwoThreadReadBytesPerSecond();

// Registers a benchmark that reports it (machine/read_bandwidth_1GiB_2threads).
void RegisterTwoThreadLimitBenchmark();

}  // namespace covattn_bench

#endif  // COVATTN_BENCH_MACHINE_LIMITS_H_
