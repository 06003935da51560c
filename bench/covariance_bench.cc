// The covariance state: update throughput against the FMA peak and against
// oneDNN's sgemm computing the same block product, and the readout against
// exact decode over growing contexts. Per target, single thread.
//
//   build/release/bench/covariance_bench --benchmark_counters_tabular=true
//
// oneDNN runs on one thread: unless OMP_NUM_THREADS is set, the program sets
// it to 1 and restarts itself (see bench_util.h).
//
// update/...: one covattn_cov_state_update of a block of B f32 tokens into a
//   one-head state of head_dim d. flops counts the block product
//   [k | v]^T-by-k GEMM of a d x 2d x B shape, 4 B d^2 (nominal: the update
//   skips the tiles of M_kk below the diagonal, about a fifth of them, and
//   copies them instead); of_fma_peak divides by the measured peak. The same run's oneDNN peer
//   (update_peer/...) is dnnl_sgemm on the same block, already centred (centring, conversion and
//   the merge are not counted for the peer: the comparison favours it).
// readout/...: covattn_cov_readout for a GQA group (1 KV head, 4 query
//   heads, d = 128), with and without log Z; "cold" cycles through 512
//   states (64 MiB) so that every readout streams its state from memory.
// decode/...: covattn_decode of the same group over an f16 cache of n_ctx
//   tokens; readout_speedup is its time over the cold readout's, and
//   kv_bytes / state_bytes compare the memory each needs.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "covattn/covariance.h"
#include "machine_limits.h"
#ifdef COVATTN_BENCH_WITH_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

namespace covattn_bench {
namespace {

struct StateDeleter {
  void operator()(covattn_cov_state* s) const { covattn_cov_state_destroy(s); }
};
using StatePtr = std::unique_ptr<covattn_cov_state, StateDeleter>;

StatePtr NewState(size_t n_heads, size_t dim) {
  covattn_cov_state* s = nullptr;
  if (covattn_cov_state_create(n_heads, dim, 1.0f, &s) != COVATTN_OK) std::abort();
  return StatePtr(s);
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

bool UseTarget(benchmark::State& state, const std::string& target) {
  if (covattn_restrict_targets(target.c_str()) == COVATTN_OK) return true;
  state.SkipWithError("target unavailable");
  return false;
}

void SetFlops(benchmark::State& state, double flops) {
  state.counters["flops"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["of_fma_peak"] = benchmark::Counter(flops / Limits().fma_flops_per_second,
                                                     benchmark::Counter::kIsIterationInvariantRate);
}

// ---------------------------------------------------------------------------
// Update.

std::vector<unsigned char> UpdateScratch(size_t dim) {
  size_t bytes = 0;
  if (covattn_cov_state_scratch_size(dim, &bytes) != COVATTN_OK) std::abort();
  return std::vector<unsigned char>(bytes);
}

void Update(benchmark::State& state, const std::string& target, size_t dim, size_t block) {
  if (!UseTarget(state, target)) return;
  // Tokens [token][k | v]: K and V interleaved per token, as a fused QKV
  // projection leaves them.
  const std::vector<float> kv = RandomVector(block * 2 * dim, 3);
  const covattn_kv_cache tokens{COVATTN_F32, kv.data(), kv.data() + dim, block, 1,      dim,
                                2 * dim,     dim,       2 * dim,         dim,   nullptr};
  StatePtr s = NewState(1, dim);
  std::vector<unsigned char> scratch = UpdateScratch(dim);
  for (auto _ : state) {
    if (covattn_cov_state_update(s.get(), &tokens, scratch.data(), scratch.size()) != COVATTN_OK) {
      state.SkipWithError("update failed");
      break;
    }
    benchmark::ClobberMemory();
  }
  SetFlops(state, 4.0 * block * dim * dim);
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(block), benchmark::Counter::kIsIterationInvariantRate);
  covattn_restrict_targets(nullptr);
}

#ifdef COVATTN_BENCH_WITH_ONEDNN
void UpdatePeer(benchmark::State& state, size_t dim, size_t block) {
  // The centred block X = [X_k | X_v] (block x 2d, row-major) and
  // C += X_k^T X: the d x 2d co-moment product the state's GEMM forms.
  std::vector<float> x = RandomVector(block * 2 * dim, 3);
  std::vector<float> c(dim * 2 * dim, 0.0f);
  const auto m = static_cast<dnnl_dim_t>(dim), n = static_cast<dnnl_dim_t>(2 * dim),
             k = static_cast<dnnl_dim_t>(block);
  for (auto _ : state) {
    if (dnnl_sgemm('T', 'N', m, n, k, 1.0f, x.data(), n, x.data(), n, 1.0f, c.data(), n) !=
        dnnl_success) {
      state.SkipWithError("dnnl_sgemm failed");
      break;
    }
    benchmark::ClobberMemory();
  }
  SetFlops(state, 4.0 * block * dim * dim);
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(block), benchmark::Counter::kIsIterationInvariantRate);
}
#endif

// ---------------------------------------------------------------------------
// Readout and decode.

constexpr size_t kDim = 128, kGroup = 4;
constexpr size_t kColdStates = 512;  // 512 x 130 KiB: far beyond the caches

// Cold-readout seconds per call, per target, for the decode's speedup.
std::map<std::string, double>& ReadoutSeconds() {
  static std::map<std::string, double> seconds;
  return seconds;
}

std::vector<StatePtr>& States() {
  static std::vector<StatePtr> states;
  if (states.empty()) {
    const std::vector<float> kv = RandomVector(512 * 2 * kDim, 5);
    const covattn_kv_cache tokens{COVATTN_F32, kv.data(), kv.data() + kDim, 512,  1,      kDim,
                                  2 * kDim,    kDim,      2 * kDim,         kDim, nullptr};
    std::vector<unsigned char> scratch = UpdateScratch(kDim);
    for (size_t i = 0; i < kColdStates; ++i) {
      states.push_back(NewState(1, kDim));
      covattn_cov_state_update(states.back().get(), &tokens, scratch.data(), scratch.size());
    }
  }
  return states;
}

size_t StateBytes() {
  size_t bytes = 0;
  covattn_cov_state_size(1, kDim, &bytes);
  return bytes;
}

void Readout(benchmark::State& state, const std::string& target, bool cold, bool log_z) {
  if (!UseTarget(state, target)) return;
  std::vector<StatePtr>& states = States();
  const std::vector<float> q = RandomVector(kGroup * kDim, 7);
  std::vector<float> out(kGroup * kDim), lz(kGroup), ess(kGroup);
  size_t next = 0, calls = 0;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const covattn_cov_state* s = states[cold ? next : 0].get();
    next = next + 1 == kColdStates ? 0 : next + 1;
    if (covattn_cov_readout(s, q.data(), kGroup, 0.0f, out.data(), log_z ? lz.data() : nullptr,
                            log_z ? ess.data() : nullptr) != COVATTN_OK) {
      state.SkipWithError("readout failed");
      break;
    }
    benchmark::DoNotOptimize(out.data());
    ++calls;
  }
  if (cold && !log_z && calls > 0) ReadoutSeconds()[target] = Seconds(start) / calls;
  const double bytes = static_cast<double>(2 * kDim * kDim * (log_z ? 2 : 1) * sizeof(float)) / 2;
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["state_bytes"] = static_cast<double>(StateBytes());
  if (!cold) state.SetLabel("cache-resident");
  covattn_restrict_targets(nullptr);
}

void Decode(benchmark::State& state, const std::string& target, size_t n_ctx) {
  if (!UseTarget(state, target)) return;
  static std::map<size_t, std::vector<uint16_t>> caches;  // [token][k | v] f16
  std::vector<uint16_t>& kv = caches[n_ctx];
  if (kv.empty()) {
    uint64_t rng = 11 + n_ctx;
    kv.resize(n_ctx * 2 * kDim);
    for (uint16_t& x : kv) x = Bits16(RandomFloat(rng), COVATTN_F16);
  }
  const covattn_kv_cache cache{COVATTN_F16, kv.data(), kv.data() + kDim, n_ctx, 1,      kDim,
                               2 * kDim,    kDim,      2 * kDim,         kDim,  nullptr};
  const std::vector<float> q = RandomVector(kGroup * kDim, 7);
  std::vector<float> out(kGroup * kDim);
  size_t scratch_bytes = 0;
  covattn_attention_scratch_size(kDim, &scratch_bytes);
  std::vector<uint8_t> scratch(scratch_bytes);
  size_t calls = 0;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    if (covattn_decode(&cache, q.data(), kGroup, nullptr, out.data(), scratch.data(),
                       scratch.size()) != COVATTN_OK) {
      state.SkipWithError("decode failed");
      break;
    }
    benchmark::DoNotOptimize(out.data());
    ++calls;
  }
  const double per_call = calls > 0 ? Seconds(start) / calls : 0.0;
  const auto readout = ReadoutSeconds().find(target);
  if (readout != ReadoutSeconds().end() && readout->second > 0) {
    state.counters["readout_speedup"] = per_call / readout->second;
  }
  state.counters["kv_bytes"] = static_cast<double>(kv.size() * sizeof(uint16_t));
  state.counters["state_bytes"] = static_cast<double>(StateBytes());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kv.size() * sizeof(uint16_t)));
  covattn_restrict_targets(nullptr);
}

void RegisterAll() {
  RegisterLimitBenchmarks();
  std::vector<std::string> targets;
  for (size_t i = 0; i < covattn_available_target_count(); ++i) {
    targets.push_back(covattn_available_target(i));
  }
  for (size_t dim : {size_t{64}, size_t{128}}) {
    for (size_t block : {size_t{1}, size_t{16}, size_t{64}, size_t{256}}) {
      const std::string shape = "d" + std::to_string(dim) + "_block" + std::to_string(block);
      for (const std::string& target : targets) {
        benchmark::RegisterBenchmark(("update/" + shape + "/f32/" + target).c_str(), Update, target,
                                     dim, block)
            ->UseRealTime();
      }
#ifdef COVATTN_BENCH_WITH_ONEDNN
      benchmark::RegisterBenchmark(("update_peer/" + shape + "/f32/oneDNN_sgemm").c_str(),
                                   UpdatePeer, dim, block)
          ->UseRealTime();
#endif
    }
  }
  for (const std::string& target : targets) {
    for (bool log_z : {false, true}) {
      const std::string what = log_z ? "out+logz+ess" : "out";
      benchmark::RegisterBenchmark(("readout/gqa4_d128/hot/" + what + "/" + target).c_str(),
                                   Readout, target, false, log_z)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("readout/gqa4_d128/cold/" + what + "/" + target).c_str(),
                                   Readout, target, true, log_z)
          ->UseRealTime();
    }
    for (size_t n_ctx = 512; n_ctx <= 131072; n_ctx *= 4) {
      benchmark::RegisterBenchmark(
          ("decode/gqa4_d128_f16/ctx" + std::to_string(n_ctx) + "/" + target).c_str(), Decode,
          target, n_ctx)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
}

}  // namespace
}  // namespace covattn_bench

int main(int argc, char** argv) {
  return covattn_bench::BenchmarkMain(argc, argv, covattn_bench::RegisterAll);
}
