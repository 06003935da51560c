// Exact attention: decode and prefill per target, with the machine's limits
// measured in the same run and the oneDNN peer on the same data.
//
//   build/release/bench/attention_bench --benchmark_counters_tabular=true
//
// Counters: bytes_per_second / tokens_per_second (decode), flops (prefill),
// of_read_bw and of_fma_peak (fractions of the measured limits). Decode of a
// whole layer streams a cache far larger than the caches; "cache-resident"
// runs are labelled and carry no bandwidth fraction.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "covattn/covattn.h"
#include "machine_limits.h"
#include "thread_pool.h"
#ifdef COVATTN_BENCH_WITH_ONEDNN
#include "onednn_peer.h"
#endif

namespace covattn_bench {
namespace {

#ifdef COVATTN_BENCH_WITH_ONEDNN
using covattn_tools::OneDnnDecode;
using covattn_tools::OneDnnPrefill;
#endif

enum class Layout { kTokenMajor, kHeadMajor };  // [token][head][dim], [head][token][dim]

covattn_kv_cache MakeView(uint32_t dtype, size_t n_tokens, size_t n_kv_heads, size_t dim,
                          Layout layout) {
  const size_t token_stride = layout == Layout::kTokenMajor ? n_kv_heads * dim : dim;
  const size_t head_stride = layout == Layout::kTokenMajor ? dim : n_tokens * dim;
  return covattn_kv_cache{dtype,        nullptr,     nullptr,      n_tokens,    n_kv_heads, dim,
                          token_stride, head_stride, token_stride, head_stride, nullptr};
}

// A cache of random values, generated once per shape and kept for the whole
// run.
struct Cache {
  Cache(uint32_t dtype, size_t n_tokens, size_t n_kv_heads, size_t dim, Layout layout)
      : view(MakeView(dtype, n_tokens, n_kv_heads, dim, layout)) {
    const size_t n = n_tokens * n_kv_heads * dim;
    uint64_t rng = 0x243F6A8885A308D3ull ^ (n * 31 + dtype);
    f32_k.resize(n), f32_v.resize(n);
    for (size_t i = 0; i < n; ++i) f32_k[i] = RandomFloat(rng), f32_v[i] = RandomFloat(rng);
    if (dtype == COVATTN_F32) {
      view.k = f32_k.data(), view.v = f32_v.data();
    } else if (dtype == COVATTN_INT8) {  // as an engine stores it: one scale per vector
      k8.resize(n), v8.resize(n);
      const size_t vectors = n_tokens * n_kv_heads;
      k_scale.resize(vectors), v_scale.resize(vectors);
      // Vector r of the storage (either layout) has its scale at r.
      scales = covattn_int8_scales{k_scale.data(),
                                   v_scale.data(),
                                   view.k_token_stride / dim,
                                   view.k_head_stride / dim,
                                   view.v_token_stride / dim,
                                   view.v_head_stride / dim};
      covattn_quantize_int8(f32_k.data(), vectors, dim, dim, k8.data(), dim, k_scale.data(), 1);
      covattn_quantize_int8(f32_v.data(), vectors, dim, dim, v8.data(), dim, v_scale.data(), 1);
      std::vector<float>().swap(f32_k), std::vector<float>().swap(f32_v);
      view.k = k8.data(), view.v = v8.data(), view.int8_scales = &scales;
    } else {
      k16.resize(n), v16.resize(n);
      for (size_t i = 0; i < n; ++i)
        k16[i] = Bits16(f32_k[i], dtype), v16[i] = Bits16(f32_v[i], dtype);
      std::vector<float>().swap(f32_k), std::vector<float>().swap(f32_v);
      view.k = k16.data(), view.v = v16.data();
    }
  }
  // Bytes a decode reads: K and V, and an int8 cache's scales.
  size_t Bytes() const {
    const size_t vectors = 2 * view.n_tokens * view.n_heads;
    if (view.dtype == COVATTN_INT8) return vectors * (view.head_dim + sizeof(float));
    return vectors * view.head_dim * (view.dtype == COVATTN_F32 ? 4 : 2);
  }
  Cache(const Cache&) = delete;  // the view points into the object
  covattn_kv_cache view;
  std::vector<float> f32_k, f32_v;
  std::vector<uint16_t> k16, v16;
  std::vector<int8_t> k8, v8;
  std::vector<float> k_scale, v_scale;
  covattn_int8_scales scales{};
};

Cache& SharedCache(uint32_t dtype, size_t n_tokens, size_t n_kv_heads, size_t dim,
                   Layout layout = Layout::kTokenMajor) {
  static std::map<std::vector<size_t>, std::unique_ptr<Cache>> caches;
  auto& slot = caches[{dtype, n_tokens, n_kv_heads, dim, static_cast<size_t>(layout)}];
  if (!slot) slot.reset(new Cache(dtype, n_tokens, n_kv_heads, dim, layout));
  return *slot;
}

struct DecodeShape {
  size_t n_kv_heads, group, dim, n_tokens;
  bool streams_from_dram;  // the cache is far larger than the last-level cache
  Layout layout;
};

// Decode on the calling thread (n_threads 0) or over a pool of n_threads
// (tests/thread_pool.h); a layer on a pool also counts against the
// two-thread read bandwidth measured in the same run (of_read_bw_2t).
void Decode(benchmark::State& state, const std::string& target, uint32_t dtype, DecodeShape shape,
            size_t n_threads) {
  if (covattn_restrict_targets(target.c_str()) != COVATTN_OK) {
    state.SkipWithError("target unavailable");
    return;
  }
  Cache& cache = SharedCache(dtype, shape.n_tokens, shape.n_kv_heads, shape.dim, shape.layout);
  const size_t n_q_heads = shape.n_kv_heads * shape.group;
  const std::vector<float> q = RandomVector(n_q_heads * shape.dim, 7);
  std::vector<float> out(n_q_heads * shape.dim);
  covattn_test::ThreadPool pool(std::max<size_t>(n_threads, 1));
  const covattn_thread_pool view = pool.Pool();
  const covattn_attention_options options{0.0f, 0, 0, n_threads == 0 ? nullptr : &view};
  size_t scratch_bytes = 0;
  if (n_threads == 0) {
    covattn_attention_scratch_size(shape.dim, &scratch_bytes);
  } else {
    covattn_attention_scratch_size_threads(shape.dim, n_threads, &scratch_bytes);
  }
  std::vector<uint8_t> scratch(scratch_bytes);
  for (auto _ : state) {
    if (covattn_decode(&cache.view, q.data(), n_q_heads, &options, out.data(), scratch.data(),
                       scratch.size()) != COVATTN_OK) {
      state.SkipWithError("covattn_decode failed");
      break;
    }
    benchmark::DoNotOptimize(out.data());
  }
  const double bytes = static_cast<double>(cache.Bytes());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["tokens_per_second"] = benchmark::Counter(
      static_cast<double>(shape.n_tokens), benchmark::Counter::kIsIterationInvariantRate);
  if (shape.streams_from_dram) {
    state.counters["of_read_bw"] = benchmark::Counter(
        bytes / Limits().read_bytes_per_second, benchmark::Counter::kIsIterationInvariantRate);
  } else {
    state.SetLabel("cache-resident");
  }
  if (shape.streams_from_dram && n_threads >= 2) {
    state.counters["of_read_bw_2t"] = benchmark::Counter(
        bytes / TwoThreadReadBytesPerSecond(), benchmark::Counter::kIsIterationInvariantRate);
  }
  covattn_restrict_targets(nullptr);
}

// The loop an engine writes before it links a kernel library (llama2.c's
// run.c): per query head, scores, softmax, weighted sum, in plain f32 C++.
void NaiveDecode(benchmark::State& state, DecodeShape shape) {
  Cache& cache =
      SharedCache(COVATTN_F32, shape.n_tokens, shape.n_kv_heads, shape.dim, shape.layout);
  const size_t n_q_heads = shape.n_kv_heads * shape.group, dim = shape.dim;
  const std::vector<float> q = RandomVector(n_q_heads * dim, 7);
  std::vector<float> out(n_q_heads * dim), scores(shape.n_tokens);
  const float* k = static_cast<const float*>(cache.view.k);
  const float* v = static_cast<const float*>(cache.view.v);
  const size_t token_stride = cache.view.k_token_stride, head_stride = cache.view.k_head_stride;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  for (auto _ : state) {
    for (size_t h = 0; h < n_q_heads; ++h) {
      const float* qh = q.data() + h * dim;
      const size_t kv = h / shape.group;
      float max_score = -INFINITY;
      for (size_t t = 0; t < shape.n_tokens; ++t) {
        const float* kt = k + t * token_stride + kv * head_stride;
        float s = 0.0f;
        for (size_t i = 0; i < dim; ++i) s += qh[i] * kt[i];
        scores[t] = s * scale;
        max_score = std::max(max_score, scores[t]);
      }
      float sum = 0.0f;
      for (size_t t = 0; t < shape.n_tokens; ++t) {
        scores[t] = std::exp(scores[t] - max_score);
        sum += scores[t];
      }
      float* oh = out.data() + h * dim;
      std::fill(oh, oh + dim, 0.0f);
      for (size_t t = 0; t < shape.n_tokens; ++t) {
        const float* vt = v + t * token_stride + kv * head_stride;
        const float w = scores[t] / sum;
        for (size_t i = 0; i < dim; ++i) oh[i] += w * vt[i];
      }
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["tokens_per_second"] = benchmark::Counter(
      static_cast<double>(shape.n_tokens), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("cache-resident");
}

// FLOPs of causal attention over n positions: sum over rows of the visible
// tokens, times 2 * dim for the scores and 2 * dim for the weighted sum.
double CausalFlops(size_t n, size_t dim) { return 4.0 * dim * (0.5 * n * (n + 1)); }

void Prefill(benchmark::State& state, const std::string& target, uint32_t dtype, size_t dim,
             size_t n) {
  if (covattn_restrict_targets(target.c_str()) != COVATTN_OK) {
    state.SkipWithError("target unavailable");
    return;
  }
  Cache& cache = SharedCache(dtype, n, 1, dim);
  const std::vector<float> q = RandomVector(n * dim, 11);
  std::vector<float> out(n * dim);
  size_t scratch_bytes = 0;
  covattn_attention_scratch_size(dim, &scratch_bytes);
  std::vector<uint8_t> scratch(scratch_bytes);
  const covattn_queries queries{q.data(), n, 1, dim, dim};
  const covattn_outputs outputs{out.data(), dim, dim, nullptr};
  for (auto _ : state) {
    if (covattn_prefill(&cache.view, &queries, 0, nullptr, &outputs, scratch.data(),
                        scratch.size()) != COVATTN_OK) {
      state.SkipWithError("covattn_prefill failed");
      break;
    }
    benchmark::DoNotOptimize(out.data());
  }
  const double flops = CausalFlops(n, dim);
  state.counters["flops"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["of_fma_peak"] = benchmark::Counter(flops / Limits().fma_flops_per_second,
                                                     benchmark::Counter::kIsIterationInvariantRate);
  covattn_restrict_targets(nullptr);
}

#ifdef COVATTN_BENCH_WITH_ONEDNN
void OneDnnDecodeBench(benchmark::State& state, DecodeShape shape) {
  Cache& cache =
      SharedCache(COVATTN_F32, shape.n_tokens, shape.n_kv_heads, shape.dim, shape.layout);
  const size_t n_q_heads = shape.n_kv_heads * shape.group;
  const std::vector<float> q = RandomVector(n_q_heads * shape.dim, 7);
  std::vector<float> out(n_q_heads * shape.dim);
  OneDnnDecode peer(shape.n_kv_heads, shape.group, shape.dim, shape.n_tokens,
                    cache.view.k_token_stride, cache.view.k_head_stride,
                    static_cast<const float*>(cache.view.k),
                    static_cast<const float*>(cache.view.v));
  for (auto _ : state) {
    peer.Run(q.data(), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  const double bytes = static_cast<double>(cache.Bytes());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["tokens_per_second"] = benchmark::Counter(
      static_cast<double>(shape.n_tokens), benchmark::Counter::kIsIterationInvariantRate);
  if (shape.streams_from_dram) {
    state.counters["of_read_bw"] = benchmark::Counter(
        bytes / Limits().read_bytes_per_second, benchmark::Counter::kIsIterationInvariantRate);
  } else {
    state.SetLabel("cache-resident");
  }
}

void OneDnnPrefillBench(benchmark::State& state, size_t dim, size_t n) {
  Cache& cache = SharedCache(COVATTN_F32, n, 1, dim);
  const std::vector<float> q = RandomVector(n * dim, 11);
  std::vector<float> out(n * dim);
  OneDnnPrefill peer(dim, n, static_cast<const float*>(cache.view.k),
                     static_cast<const float*>(cache.view.v));
  for (auto _ : state) {
    peer.Run(q.data(), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  const double flops = CausalFlops(n, dim);  // the useful work, as for covattn
  state.counters["flops"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["of_fma_peak"] = benchmark::Counter(flops / Limits().fma_flops_per_second,
                                                     benchmark::Counter::kIsIterationInvariantRate);
}
#endif

// Decode on the best target over 1 and 2 threads: a layer streaming from
// DRAM against the two-thread bandwidth, and one cache-resident KV head
// (cut into cache ranges) against itself on one thread.
void RegisterThreaded(const DecodeShape& layer, const DecodeShape& short_head) {
  RegisterTwoThreadLimitBenchmark();
  const std::string target = covattn_available_target(0);
  for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_INT8}) {
    const std::string suffix = std::string(DtypeName(dtype)) + "/" + target;
    for (size_t n_threads : {0, 2}) {
      const std::string threads = n_threads == 0 ? "/calling_thread" : "/pool_threads:2";
      benchmark::RegisterBenchmark(
          ("decode_threads/layer_kv8_gqa4_d128_ctx32768/" + suffix + threads).c_str(), Decode,
          target, dtype, layer, n_threads)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
    for (size_t n_threads : {0, 1, 2}) {
      const std::string threads =
          n_threads == 0 ? "/calling_thread" : "/pool_threads:" + std::to_string(n_threads);
      benchmark::RegisterBenchmark(
          ("decode_threads/head_gqa4_d128_ctx4096/" + suffix + threads).c_str(), Decode, target,
          dtype, short_head, n_threads)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
}

void RegisterAll() {
  RegisterLimitBenchmarks();
  // f32 caches: layer 256 MiB (streams from DRAM), one head 32 MiB, short 4 MiB.
  const DecodeShape layer{8, 4, 128, 32768, true, Layout::kTokenMajor};
  const DecodeShape layer_head_major{8, 4, 128, 32768, true, Layout::kHeadMajor};
  const DecodeShape one_head{1, 4, 128, 32768, false, Layout::kTokenMajor};
  const DecodeShape short_head{1, 4, 128, 4096, false, Layout::kTokenMajor};
  RegisterThreaded(layer, short_head);
  for (size_t i = 0; i < covattn_available_target_count(); ++i) {
    const std::string target = covattn_available_target(i);
    for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_BF16, COVATTN_INT8}) {
      const std::string suffix = std::string(DtypeName(dtype)) + "/" + target;
      benchmark::RegisterBenchmark(("decode/layer_kv8_gqa4_d128_ctx32768/" + suffix).c_str(),
                                   Decode, target, dtype, layer, size_t{0})
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(
          ("decode/layer_kv8_gqa4_d128_ctx32768_headmajor/" + suffix).c_str(), Decode, target,
          dtype, layer_head_major, size_t{0})
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("decode/head_gqa4_d128_ctx32768/" + suffix).c_str(), Decode,
                                   target, dtype, one_head, size_t{0})
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark(("decode/head_gqa4_d128_ctx4096/" + suffix).c_str(), Decode,
                                   target, dtype, short_head, size_t{0})
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
    benchmark::RegisterBenchmark(("prefill/head_d128_n4096/f32/" + target).c_str(), Prefill, target,
                                 COVATTN_F32, size_t{128}, size_t{4096})
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("prefill/head_d128_n4096/f16/" + target).c_str(), Prefill, target,
                                 COVATTN_F16, size_t{128}, size_t{4096})
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  // Every group size engines use (MHA, GQA 2, 3, 4, 7 as in Qwen2-7B, 8):
  // the score step takes two to four rows at once, so 3 and 7 rows per KV
  // head (tiles of 4 + 3) are the uneven cases. One cache-resident KV head.
  for (size_t group : {1, 2, 3, 4, 7, 8}) {
    const DecodeShape head{1, group, 128, 4096, false, Layout::kTokenMajor};
    for (size_t i = 0; i < covattn_available_target_count(); ++i) {
      const std::string target = covattn_available_target(i);
      benchmark::RegisterBenchmark(
          ("decode_groups/head_gqa" + std::to_string(group) + "_d128_ctx4096/f32/" + target)
              .c_str(),
          Decode, target, COVATTN_F32, head, size_t{0})
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  // Every head_dim, small ones included, per target and against the naive
  // loop: one KV head of 512 tokens (a tiny model's layer) and a layer of 8
  // KV heads and 4096 tokens; both cache-resident.
  for (size_t dim : {8, 16, 32, 48, 64, 80, 96, 128, 256}) {
    const DecodeShape head{1, 4, dim, 512, false, Layout::kTokenMajor};
    const DecodeShape small_layer{8, 4, dim, 4096, false, Layout::kTokenMajor};
    const std::string d = std::to_string(dim);
    for (size_t i = 0; i <= covattn_available_target_count(); ++i) {
      const bool naive = i == covattn_available_target_count();
      const std::string target = naive ? "naive" : covattn_available_target(i);
      const std::string head_name = "decode_dims/head_gqa4_d" + d + "_ctx512/f32/" + target;
      const std::string layer_name = "decode_dims/layer_kv8_gqa4_d" + d + "_ctx4096/f32/" + target;
      if (naive) {
        benchmark::RegisterBenchmark(head_name.c_str(), NaiveDecode, head)
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
        benchmark::RegisterBenchmark(layer_name.c_str(), NaiveDecode, small_layer)
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
      } else {
        benchmark::RegisterBenchmark(head_name.c_str(), Decode, target, COVATTN_F32, head,
                                     size_t{0})
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
        benchmark::RegisterBenchmark(layer_name.c_str(), Decode, target, COVATTN_F32, small_layer,
                                     size_t{0})
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
#ifdef COVATTN_BENCH_WITH_ONEDNN
  benchmark::RegisterBenchmark("decode/layer_kv8_gqa4_d128_ctx32768/f32/oneDNN", OneDnnDecodeBench,
                               layer)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("decode/layer_kv8_gqa4_d128_ctx32768_headmajor/f32/oneDNN",
                               OneDnnDecodeBench, layer_head_major)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("decode/head_gqa4_d128_ctx32768/f32/oneDNN", OneDnnDecodeBench,
                               one_head)
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("decode/head_gqa4_d128_ctx4096/f32/oneDNN", OneDnnDecodeBench,
                               short_head)
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("prefill/head_d128_n4096/f32/oneDNN", OneDnnPrefillBench,
                               size_t{128}, size_t{4096})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
#endif
}

}  // namespace
}  // namespace covattn_bench

int main(int argc, char** argv) {
  return covattn_bench::BenchmarkMain(argc, argv, covattn_bench::RegisterAll);
}
