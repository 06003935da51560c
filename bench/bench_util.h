// Shared by the benchmarks: deterministic random data, 16-bit conversion of
// it, the single-thread setting of the oneDNN peers and the common main().
#ifndef COVATTN_BENCH_BENCH_UTIL_H_
#define COVATTN_BENCH_BENCH_UTIL_H_

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "covattn/covattn.h"

namespace covattn_bench {

// The element type's name in benchmark rows.
inline const char* DtypeName(uint32_t dtype) {
  return dtype == COVATTN_F32    ? "f32"
         : dtype == COVATTN_F16  ? "f16"
         : dtype == COVATTN_INT8 ? "int8"
                                 : "bf16";
}

inline uint64_t NextRandom(uint64_t& state) {
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return state;
}

// Uniform in [-1, 1).
inline float RandomFloat(uint64_t& state) {
  return static_cast<float>(static_cast<double>(NextRandom(state) >> 11) * 0x1.0p-52 - 1.0);
}

inline std::vector<float> RandomVector(size_t n, uint64_t seed) {
  std::vector<float> x(n);
  for (float& f : x) f = RandomFloat(seed);
  return x;
}

inline uint16_t Bits16(float f, uint32_t dtype) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  if (dtype == COVATTN_BF16) return static_cast<uint16_t>((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
  // binary16 by truncation is fine for benchmark data in [-1, 1).
  const uint32_t sign = (x >> 16) & 0x8000u;
  const int32_t exponent = static_cast<int32_t>((x >> 23) & 0xFF) - 112;
  if (exponent <= 0) return static_cast<uint16_t>(sign);
  return static_cast<uint16_t>(sign | (uint32_t(exponent) << 10) | ((x >> 13) & 0x3FF));
}

// Single-thread figures: oneDNN's OpenMP runtime reads OMP_NUM_THREADS when
// the library is loaded, before main, so setting it in main is too late.
// Unless the caller chose a value, set it and start the program again.
inline void PinOpenMpToOneThread(char** argv) {
  if (std::getenv("OMP_NUM_THREADS") != nullptr) return;
  setenv("OMP_NUM_THREADS", "1", /*overwrite=*/1);
  execv("/proc/self/exe", argv);  // returns only on failure: run as is
}

// The main() of every benchmark binary: one OpenMP thread for the peers,
// Google Benchmark's flags, then the binary's own registrations.
inline int BenchmarkMain(int argc, char** argv, void (*register_all)()) {
  PinOpenMpToOneThread(argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace covattn_bench

#endif  // COVATTN_BENCH_BENCH_UTIL_H_
