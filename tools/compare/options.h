// The command line of covattn-compare (docs/compare.md documents every
// option; UsageText() is the --help text).
#ifndef COVATTN_TOOLS_COMPARE_OPTIONS_H_
#define COVATTN_TOOLS_COMPARE_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "covattn/cache.h"
#include "workloads.h"

namespace covattn_compare {

// The methods compared, in table order.
enum class Method {
  kExact,           // exact attention, covattn_decode
  kExactInt8,       // exact attention over an int8 cache (covattn_quantize_int8)
  kOneDnn,          // exact attention, oneDNN matmul -> softmax -> matmul
  kReadout,         // the covariance readout alone (summary of every token)
  kSinkWindow,      // sinks + recent window, evicted tokens dropped
  kHybrid,          // sinks + window + covariance summary
  kHybridOutliers,  // sinks + window + outlier keys + covariance summary
  kHeavyHitters,    // sinks + window + H2O-retained tokens, evicted tokens dropped
  kEmaRing,         // sinks + window + EMA-retained tokens + compact (ring) summary
};

constexpr Method kAllMethods[] = {Method::kExact,          Method::kExactInt8,    Method::kOneDnn,
                                  Method::kReadout,        Method::kSinkWindow,   Method::kHybrid,
                                  Method::kHybridOutliers, Method::kHeavyHitters, Method::kEmaRing};

// Long name for tables and legends, and the short key of --methods and CSV.
const char* MethodName(Method method);
const char* MethodKey(Method method);
bool IsExact(Method method);
// True for the methods that score tokens by the queries of every position
// (h2o, ema-ring): only --model has that stream (the synthetic and --qkv
// modes probe with a few queries at chosen contexts).
bool NeedsQueryStream(Method method);

// True when this build has the oneDNN peer.
bool HaveOneDnn();

enum class TableMode { kLongest, kAll };

struct Options {
  // Synthetic workloads (ignored with --qkv).
  std::vector<covattn_tools::Workload> workloads;
  std::vector<double> sigmas;
  bool sigmas_given = false;  // else each workload's NaturalSigma
  bool methods_all = false;   // --methods all (the --model-only ones dropped elsewhere)
  std::vector<size_t> contexts;
  std::vector<size_t> head_dims;
  size_t kv_heads = 2;
  size_t group = 4;     // query heads per KV head
  size_t queries = 16;  // error queries per KV head
  uint64_t seed = 1;

  // Real activations.
  std::string qkv;  // a directory, or "Q.npy,K.npy,V.npy"
  bool bf16 = false;
  size_t positions = 16;       // sampled query positions per layer
  size_t min_context = 256;    // first sampled context (clamped to the tokens)
  std::vector<size_t> layers;  // empty: every layer found
  float scale = 0.0f;          // 0: 1/sqrt(head_dim)

  // A llama2.c checkpoint run with every method (docs/compare.md).
  std::string model;
  // How the keys were rotated (covattn_rope), for the summaries of the
  // retention methods: --model sets run.c's interleaved pairs.
  uint32_t rope = COVATTN_ROPE_NONE;
  std::string tokens;        // empty: sampled from the exact model
  bool bytes = false;        // --tokens is raw bytes, one token each
  size_t max_tokens = 0;     // tokens per window; 0: the model's seq_len
  size_t windows = 1;        // windows cut evenly from the token file
  size_t from = 0;           // positions from here on are aggregated
  std::string dump_qkv;      // the exact model's activations for --qkv
  bool state_bytes = false;  // equal memory by the state's bytes, not covattn_cache_size

  // Methods and their memory.
  std::vector<Method> methods;
  bool methods_given = false;           // --methods was on the command line
  std::vector<size_t> budgets = {256};  // --budget: one, or a sweep
  size_t budget = 256;  // the budget being evaluated (budgets.front() after parsing)
  size_t sinks = 4;
  size_t outliers = 0;                 // outlier slots of the hybrid with outliers; 0: budget / 2
  uint32_t cache_dtype = COVATTN_F32;  // --cache-dtype: the bounded caches' stored tokens
  float forgetting = 1.0f;

  // Timing.
  size_t threads = 1;
  size_t samples = 9;
  double min_sample_ms = 5.0;
  bool cold = false;

  // Output.
  TableMode table = TableMode::kLongest;
  std::string csv_path, json_path, svg_path;
  bool write_files = true;
  bool progress = true;

  std::string command_line;
};

enum class ParseOutcome { kRun, kHelp, kVersion, kUsageError };

// Parses argv (GNU-style long options, "--name value" or "--name=value");
// on kUsageError *error says what is wrong.
ParseOutcome ParseOptions(int argc, const char* const* argv, Options* options, std::string* error);

std::string UsageText();

// "f32", "f16", "bf16" or "int8": --cache-dtype's names.
const char* CacheDtypeName(uint32_t dtype);

// "a,b,,c" -> {"a", "b", "", "c"}: the lists of the command line.
std::vector<std::string> SplitList(const std::string& s);

// The outlier slots actually used at a budget (the default is half of it).
size_t OutlierSlots(const Options& options, size_t budget);
inline size_t OutlierSlots(const Options& options) { return OutlierSlots(options, options.budget); }

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_OPTIONS_H_
