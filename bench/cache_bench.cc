// The bounded cache against exact attention: decode time against context
// length for exact attention, the pure covariance readout, sinks + window, and
// the hybrid with and without outlier slots; memory per layer; and, as
// counters, the relative L2 error of each method against exact attention on
// the synthetic regimes (Gaussian with a mean, drifting mean, Student-t).
//
//   build/release/bench/cache_bench --benchmark_counters_tabular=true
//
// Shapes: 2 KV heads, GQA 4:1 (8 query heads), head_dim 64 and 128, f32,
// budget 256 exact tokens per head (4 sinks); the sinks + window baseline gets
// the summary's memory as extra window tokens. cache_block/: a 512-token
// block through covattn_cache_prefill against append alone, covattn_prefill
// alone and append + decode per token. cache_decode_threads/: decode on the
// calling thread against a pool of 1 and 2 threads (tests/thread_pool.h): one
// task per KV head for the 2-head caches above, and a 1-KV-head cache with a
// window of 4096 tokens (kv1/.../hybrid+window4096), whose exact tokens are
// cut into ranges over the pool.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "bench_util.h"
#include "covattn/cache.h"
#include "machine_limits.h"
#include "thread_pool.h"
#include "workloads.h"

namespace covattn_bench {
namespace {

using covattn_tools::Layer;
using covattn_tools::Workload;
using covattn_tools::WorkloadSpec;

constexpr size_t kKvHeads = 2, kQHeads = 8, kBudget = 256, kSinks = 4;

enum class Method { kExact, kReadout, kWindow, kHybrid, kOutliers, kLongWindow };

const char* MethodName(Method m) {
  switch (m) {
    case Method::kExact:
      return "exact";
    case Method::kReadout:
      return "readout";
    case Method::kWindow:
      return "sinks+window";
    case Method::kHybrid:
      return "hybrid";
    case Method::kOutliers:
      return "hybrid+outliers";
    case Method::kLongWindow:
      return "hybrid+window4096";
  }
  return "?";
}

// Bytes of the summary (weight, means, co-moments) and of the whitening per
// head, as window tokens: the baseline's extra memory.
size_t SummaryTokens(size_t dim, bool with_whitening) {
  const size_t token_bytes = 2 * dim * sizeof(float);
  size_t bytes = 8 * (1 + 2 * dim) + 4 * 2 * dim * dim;
  if (with_whitening) bytes += 2 * dim * dim + 4 * dim;  // bf16 W^T, f32 mean
  return (bytes + token_bytes - 1) / token_bytes;
}

// dtype: what the cache stores its exact tokens in (the token counts stay
// those of f32, so an int8 cache here is the same policy in fewer bytes).
covattn_cache_config ConfigFor(Method m, size_t dim, size_t kv_heads = kKvHeads,
                               uint32_t dtype = COVATTN_F32) {
  covattn_cache_config c{kv_heads, dim, dtype, 0, 0, 0, 1.0f, 0, 0, 0, 0.0f, 0, 0};
  switch (m) {
    case Method::kReadout:
      break;
    case Method::kWindow:  // at the memory of the hybrid with outliers
      c.n_sinks = kSinks;
      c.window = kBudget - kSinks + SummaryTokens(dim, true);
      c.flags = COVATTN_CACHE_DROP_EVICTED;
      break;
    case Method::kHybrid:
      c.n_sinks = kSinks;
      c.window = kBudget - kSinks;
      break;
    case Method::kLongWindow:
      c.n_sinks = kSinks;
      c.window = 4096;
      break;
    default:  // kOutliers
      c.n_sinks = kSinks;
      c.window = 64 - kSinks;
      c.n_outliers = kBudget - 64;
      break;
  }
  return c;
}

struct CacheDeleter {
  void operator()(covattn_cache* c) const { covattn_cache_destroy(c); }
};
using CachePtr = std::unique_ptr<covattn_cache, CacheDeleter>;

const Layer& SharedLayer(Workload workload, size_t dim, size_t n, size_t kv_heads = kKvHeads) {
  static std::map<std::tuple<int, size_t, size_t, size_t>, std::unique_ptr<Layer>> layers;
  auto& slot = layers[{static_cast<int>(workload), dim, n, kv_heads}];
  if (!slot) {
    WorkloadSpec spec;
    spec.workload = workload;
    spec.n_tokens = n;
    spec.n_kv_heads = kv_heads;
    spec.n_q_heads = kQHeads;
    spec.head_dim = dim;
    spec.sigma = 1.0;
    spec.seed = 17;
    slot.reset(new Layer(covattn_tools::MakeLayer(spec)));
  }
  return *slot;
}

covattn_kv_cache ViewOf(const Layer& layer) {
  const size_t d = layer.head_dim, h = layer.n_kv_heads;
  return covattn_kv_cache{
      COVATTN_F32, layer.k.data(), layer.v.data(), layer.n_tokens, h, d, h * d, d, h * d,
      d,           nullptr};
}

// Scratch for every call on a cache of this configuration.
std::vector<unsigned char> CacheScratch(const covattn_cache_config& config) {
  size_t bytes = 0;
  covattn_cache_scratch_size(&config, kQHeads, &bytes);
  return std::vector<unsigned char>(bytes);
}

// A new cache, or null (and the benchmark skipped, if there is one).
CachePtr CreateCache(const covattn_cache_config& config, benchmark::State* state = nullptr) {
  covattn_cache* c = nullptr;
  if (covattn_cache_create(&config, &c) == COVATTN_OK) return CachePtr(c);
  if (state != nullptr) state->SkipWithError("create failed");
  return nullptr;
}

CachePtr BuildCache(Method m, const Layer& layer, uint32_t dtype) {
  const covattn_cache_config config = ConfigFor(m, layer.head_dim, layer.n_kv_heads, dtype);
  CachePtr cache = CreateCache(config);
  if (cache == nullptr) return nullptr;
  covattn_cache* c = cache.get();
  const covattn_kv_cache all = ViewOf(layer);
  std::vector<unsigned char> scratch = CacheScratch(config);
  if (covattn_cache_append(c, &all, scratch.data(), scratch.size()) != COVATTN_OK) {
    return nullptr;  // one prompt, block-wise
  }
  return cache;
}

// Decodes the layer's queries with a method, the cache's on the calling
// thread (pool null) or over the pool; Run() returns false on failure.
class Decoder {
 public:
  Decoder(Method method, const Layer& layer, const covattn_thread_pool* pool = nullptr,
          uint32_t dtype = COVATTN_F32)
      : method_(method), layer_(layer), pool_(pool) {
    const size_t d = layer.head_dim;
    out_.resize(kQHeads * d);
    if (method == Method::kExact) {
      size_t bytes = 0;
      covattn_attention_scratch_size(d, &bytes);
      scratch_.resize(bytes);
      view_ = ViewOf(layer);
    } else {
      const covattn_cache_config config = ConfigFor(method, d, layer.n_kv_heads, dtype);
      cache_ = BuildCache(method, layer, dtype);
      size_t bytes = 0;
      if (pool == nullptr) {
        covattn_cache_scratch_size(&config, kQHeads, &bytes);
      } else {
        covattn_cache_scratch_size_threads(&config, kQHeads, pool->n_threads, &bytes);
      }
      scratch_.resize(bytes);
    }
  }
  bool ok() const { return method_ == Method::kExact || cache_ != nullptr; }
  bool Run() {
    if (method_ == Method::kExact) {
      return covattn_decode(&view_, layer_.q.data(), kQHeads, nullptr, out_.data(), scratch_.data(),
                            scratch_.size()) == COVATTN_OK;
    }
    return covattn_cache_decode_threads(cache_.get(), layer_.q.data(), kQHeads, 0.0f, pool_,
                                        out_.data(), nullptr, scratch_.data(),
                                        scratch_.size()) == COVATTN_OK;
  }
  const std::vector<float>& out() const { return out_; }
  size_t MemoryBytes() const {
    if (method_ == Method::kExact) return 2 * layer_.k.size() * sizeof(float);
    covattn_cache_info info;
    covattn_cache_info_get(cache_.get(), &info);
    return info.bytes;
  }

 private:
  Method method_;
  const Layer& layer_;
  const covattn_thread_pool* pool_;
  covattn_kv_cache view_{};
  CachePtr cache_;
  std::vector<float> out_;
  std::vector<uint8_t> scratch_;
};

// Median over query heads of ||out - exact|| / ||exact||.
double RelativeError(Method method, Workload workload, size_t dim, size_t n, uint32_t dtype) {
  const Layer& layer = SharedLayer(workload, dim, n);
  Decoder exact(Method::kExact, layer), approx(method, layer, nullptr, dtype);
  if (!approx.ok() || !exact.Run() || !approx.Run()) return NAN;
  std::vector<double> errors;
  for (size_t h = 0; h < kQHeads; ++h) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < dim; ++i) {
      const double e = exact.out()[h * dim + i], a = approx.out()[h * dim + i];
      num += (a - e) * (a - e), den += e * e;
    }
    errors.push_back(std::sqrt(num / den));
  }
  std::sort(errors.begin(), errors.end());
  return errors[errors.size() / 2];
}

// Times the decoder; false (the benchmark skipped) if it failed.
bool TimeDecodes(benchmark::State& state, Decoder& decoder) {
  if (!decoder.ok()) {
    state.SkipWithError("cache setup failed");
    return false;
  }
  for (auto _ : state) {
    if (!decoder.Run()) {
      state.SkipWithError("decode failed");
      break;
    }
    benchmark::DoNotOptimize(decoder.out().data());
  }
  return !state.error_occurred();
}

void DecodeBench(benchmark::State& state, Method method, size_t dim, size_t n, uint32_t dtype) {
  const Layer& layer = SharedLayer(Workload::kGaussian, dim, n);
  Decoder decoder(method, layer, nullptr, dtype);
  if (!TimeDecodes(state, decoder)) return;
  state.counters["memory_bytes"] = static_cast<double>(decoder.MemoryBytes());
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
  if (method != Method::kExact) {
    state.counters["err_gaussian"] = RelativeError(method, Workload::kGaussian, dim, n, dtype);
    state.counters["err_drift"] = RelativeError(method, Workload::kDrift, dim, n, dtype);
    state.counters["err_student_t"] = RelativeError(method, Workload::kStudentT, dim, n, dtype);
  }
}

// Decode on the calling thread (n_threads 0) or over a pool of n_threads.
void DecodeThreadsBench(benchmark::State& state, Method method, size_t dim, size_t n,
                        size_t kv_heads, size_t n_threads) {
  const Layer& layer = SharedLayer(Workload::kGaussian, dim, n, kv_heads);
  covattn_test::ThreadPool pool(std::max<size_t>(n_threads, 1));
  const covattn_thread_pool view = pool.Pool();
  Decoder decoder(method, layer, n_threads == 0 ? nullptr : &view);
  TimeDecodes(state, decoder);
}

// Appending a prompt: tokens per second for a whole-prompt append.
void AppendBench(benchmark::State& state, Method method, size_t dim, size_t n) {
  const Layer& layer = SharedLayer(Workload::kGaussian, dim, n);
  const covattn_cache_config config = ConfigFor(method, dim);
  CachePtr cache = CreateCache(config, &state);
  if (cache == nullptr) return;
  covattn_cache* c = cache.get();
  const covattn_kv_cache all = ViewOf(layer);
  std::vector<unsigned char> scratch = CacheScratch(config);
  for (auto _ : state) {
    covattn_cache_reset(c);
    if (covattn_cache_append(c, &all, scratch.data(), scratch.size()) != COVATTN_OK) {
      state.SkipWithError("append failed");
      break;
    }
  }
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}

// A 512-token block (the prompt, or its next chunk) on a cache holding
// `context` tokens: covattn_cache_prefill, and what it is measured against:
// covattn_cache_append of the block alone, covattn_prefill over the block
// alone (causal, no cache), and appending and decoding it token by token.
// Each iteration starts from the same cache (restored outside the timing).
// flops counts 4 head_dim per query row and token attended exactly: the
// causal block for both prefills, plus the cache's exact tokens for the
// cache's; per token, the exact tokens held (an upper bound with outliers).
enum class BlockCall { kCachePrefill, kAppend, kExactPrefill, kTokenwise };
constexpr size_t kBlock = 512;

// Names of the calls, in the order of BlockCall.
const char* const kBlockCallNames[] = {"cache_prefill", "cache_append", "exact_prefill",
                                       "append+decode_per_token"};

// Exact tokens per head a read of a cache of `config` holding `context` sees.
size_t ExactTokens(const covattn_cache_config& c, size_t context) {
  return std::min(context, c.n_sinks + c.window + c.n_retained + c.n_outliers);
}

void BlockBench(benchmark::State& state, BlockCall call, Method method, size_t dim,
                size_t context) {
  const Layer& layer = SharedLayer(Workload::kGaussian, dim, context + kBlock);
  const size_t d = dim, row = kKvHeads * d;
  covattn_kv_cache all = ViewOf(layer);
  covattn_kv_cache before = all, block = all;
  before.n_tokens = context;
  block.k = layer.k.data() + context * row;
  block.v = layer.v.data() + context * row;
  block.n_tokens = kBlock;
  const std::vector<float> q = RandomVector(kBlock * kQHeads * d, 29);
  std::vector<float> out(q.size());
  const covattn_queries queries{q.data(), kBlock, kQHeads, kQHeads * d, d};
  const covattn_outputs outputs{out.data(), kQHeads * d, d, nullptr};
  const covattn_cache_config config = ConfigFor(method, dim);
  CachePtr cache = CreateCache(config, &state);
  if (cache == nullptr) return;
  covattn_cache* c = cache.get();
  std::vector<unsigned char> scratch = CacheScratch(config);
  size_t attention_bytes = 0;
  covattn_attention_scratch_size(d, &attention_bytes);
  if (scratch.size() < attention_bytes) scratch.resize(attention_bytes);
  size_t file_bytes = 0, written = 0;
  if ((context != 0 &&
       covattn_cache_append(c, &before, scratch.data(), scratch.size()) != COVATTN_OK) ||
      covattn_cache_serialized_size(c, &file_bytes) != COVATTN_OK) {
    state.SkipWithError("setup failed");
    return;
  }
  std::vector<unsigned char> file(file_bytes);
  covattn_cache_serialize(c, file.data(), file.size(), &written);
  for (auto _ : state) {
    state.PauseTiming();
    covattn_cache_load(c, file.data(), file.size());
    state.ResumeTiming();
    bool ok = true;
    switch (call) {
      case BlockCall::kCachePrefill:
        ok = covattn_cache_prefill(c, &block, &queries, 0.0f, &outputs, scratch.data(),
                                   scratch.size()) == COVATTN_OK;
        break;
      case BlockCall::kAppend:
        ok = covattn_cache_append(c, &block, scratch.data(), scratch.size()) == COVATTN_OK;
        break;
      case BlockCall::kExactPrefill:
        ok = covattn_prefill(&block, &queries, 0, nullptr, &outputs, scratch.data(),
                             scratch.size()) == COVATTN_OK;
        break;
      case BlockCall::kTokenwise:
        for (size_t t = 0; t < kBlock && ok; ++t) {
          covattn_kv_cache token = block;
          token.k = layer.k.data() + (context + t) * row;
          token.v = layer.v.data() + (context + t) * row;
          token.n_tokens = 1;
          ok = covattn_cache_append(c, &token, scratch.data(), scratch.size()) == COVATTN_OK &&
               covattn_cache_decode(c, q.data() + t * kQHeads * d, kQHeads, 0.0f,
                                    out.data() + t * kQHeads * d, nullptr, scratch.data(),
                                    scratch.size()) == COVATTN_OK;
        }
        break;
    }
    if (!ok) {
      state.SkipWithError("call failed");
      break;
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["tokens_per_second"] = benchmark::Counter(
      static_cast<double>(kBlock), benchmark::Counter::kIsIterationInvariantRate);
  if (call == BlockCall::kAppend) return;
  // Query-token pairs attended exactly: the causal block (and the cache's
  // exact tokens) for the prefills; per token, the exact tokens held then.
  double pairs = 0.0;
  if (call == BlockCall::kTokenwise) {
    for (size_t t = 0; t < kBlock; ++t) pairs += double(ExactTokens(config, context + t + 1));
  } else {
    pairs = 0.5 * kBlock * (kBlock + 1);
    if (call == BlockCall::kCachePrefill) pairs += double(kBlock * ExactTokens(config, context));
  }
  const double flops = 4.0 * d * kQHeads * pairs;
  state.counters["flops"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["of_fma_peak"] = benchmark::Counter(flops / Limits().fma_flops_per_second,
                                                     benchmark::Counter::kIsIterationInvariantRate);
}

void RegisterAll() {
  RegisterLimitBenchmarks();
  const Method methods[] = {Method::kExact, Method::kReadout, Method::kWindow, Method::kHybrid,
                            Method::kOutliers};
  for (size_t dim : {size_t{64}, size_t{128}}) {
    for (size_t n : {size_t{512}, size_t{2048}, size_t{8192}, size_t{32768}, size_t{131072}}) {
      for (Method m : methods) {
        const std::string name = std::string("cache_decode/") + MethodName(m) + "/d" +
                                 std::to_string(dim) + "/ctx" + std::to_string(n);
        benchmark::RegisterBenchmark(name.c_str(), DecodeBench, m, dim, n, COVATTN_F32)
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
      }
    }
    // The same caches storing int8 (one f32 scale per vector): the same
    // tokens in about a quarter of their bytes.
    for (Method m : {Method::kWindow, Method::kHybrid, Method::kOutliers}) {
      const std::string name = std::string("cache_decode/") + MethodName(m) + "/d" +
                               std::to_string(dim) + "/ctx8192/int8";
      benchmark::RegisterBenchmark(name.c_str(), DecodeBench, m, dim, size_t{8192}, COVATTN_INT8)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
    for (Method m : {Method::kHybrid, Method::kOutliers, Method::kLongWindow}) {
      // The long window on one KV head: more threads than heads.
      const size_t kv_heads = m == Method::kLongWindow ? 1 : kKvHeads;
      for (size_t n_threads : {0, 1, 2}) {
        const std::string threads =
            n_threads == 0 ? "/calling_thread" : "/pool_threads:" + std::to_string(n_threads);
        const std::string name = std::string("cache_decode_threads/") +
                                 (kv_heads == 1 ? "kv1/" : "") + MethodName(m) + "/d" +
                                 std::to_string(dim) + "/ctx8192" + threads;
        benchmark::RegisterBenchmark(name.c_str(), DecodeThreadsBench, m, dim, size_t{8192},
                                     kv_heads, n_threads)
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
      }
    }
    for (Method m : {Method::kReadout, Method::kHybrid, Method::kOutliers}) {
      const std::string name =
          std::string("cache_append/") + MethodName(m) + "/d" + std::to_string(dim) + "/prompt8192";
      benchmark::RegisterBenchmark(name.c_str(), AppendBench, m, dim, size_t{8192})
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
    for (Method m : {Method::kHybrid, Method::kOutliers}) {
      for (size_t context : {size_t{0}, size_t{8192}}) {
        for (BlockCall call : {BlockCall::kCachePrefill, BlockCall::kAppend,
                               BlockCall::kExactPrefill, BlockCall::kTokenwise}) {
          const std::string name = std::string("cache_block/") +
                                   kBlockCallNames[static_cast<int>(call)] + "/" + MethodName(m) +
                                   "/d" + std::to_string(dim) + "/ctx" + std::to_string(context) +
                                   "/block512";
          benchmark::RegisterBenchmark(name.c_str(), BlockBench, call, m, dim, context)
              ->UseRealTime()
              ->Unit(benchmark::kMillisecond);
        }
      }
    }
  }
}

}  // namespace
}  // namespace covattn_bench

int main(int argc, char** argv) {
  return covattn_bench::BenchmarkMain(argc, argv, covattn_bench::RegisterAll);
}
