// Evaluates every method on one series (the KV heads of one layer at a
// growing list of contexts): decode time per layer and error against a
// double-precision reference (MATH.md section 5).
//
// Time: one "decode" is one new token for the whole layer (every KV head with
// its group of query heads). Each measurement is a warm-up call, then
// `samples` samples of r back-to-back decodes, r chosen so that a sample
// lasts at least --min-time; the reported time is the median sample / r.
// With --cold, r = 1 and the caches are evicted before each sample.
//
// Error: the queries of each KV head (synthetic: --queries per head; real
// data: the query heads of the sampled position) are decoded untimed and
// compared with attention computed in double precision over the same
// tokens: relative L2 error, cosine similarity, |log Z - log Z_ref|.
#ifndef COVATTN_TOOLS_COMPARE_EVALUATE_H_
#define COVATTN_TOOLS_COMPARE_EVALUATE_H_

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "methods.h"
#include "options.h"
#include "thread_pool.h"

namespace covattn_compare {

struct Series {
  std::string label;     // e.g. "gaussian, d=64, sigma=1" or "layer 3"
  std::string workload;  // workload name, or "npy" for real data
  double sigma = 0.0;    // synthetic: the sharpness asked for; real data: NaN
  long layer = -1;       // real data: the layer number
  size_t dim = 0, n_kv_heads = 0, group = 0, n_tokens = 0;
  float scale = 0.0f;                    // 0: 1/sqrt(dim)
  std::vector<std::vector<float>> k, v;  // per KV head, [token][dim]
  std::vector<size_t> contexts;          // ascending, each in [1, n_tokens]
  // The queries at contexts[index] for one KV head: `timing` gets the group's
  // [group][dim] queries of a decode, `error` [n][dim] queries to measure.
  std::function<void(size_t index, size_t kv_head, std::vector<float>* timing,
                     std::vector<float>* error)>
      queries;
};

struct Measurement {
  std::string series, workload;
  double sigma = 0.0;
  long layer = -1;
  size_t dim = 0, n_kv_heads = 0, n_q_heads = 0, context = 0;
  Method method = Method::kExact;
  size_t budget = 0;           // --budget of the bounded methods
  size_t memory_bytes = 0;     // state per layer, by the accounting of methods.h
  size_t allocated_bytes = 0;  // per layer, as allocated (workspace included)
  double time_median = 0.0, time_min = 0.0, time_max = 0.0;  // seconds per layer decode
  size_t samples = 0, reps_per_sample = 0;
  double speedup = 0.0;  // exact (covattn) median time / this one; NaN without it
  size_t n_queries = 0;  // rows behind the error statistics
  double rel_l2_median = 0.0, rel_l2_max = 0.0;
  double cosine_median = 0.0, cosine_min = 0.0;
  double log_z_err_median = 0.0, log_z_err_max = 0.0;           // NaN when the method has no log Z
  double summary_share_median = 0.0, summary_ess_median = 0.0;  // NaN without a summary
  double append_ns_per_token = 0.0;  // bounded methods, per token and KV head; else NaN
};

// progress(fraction of this series done, what runs now).
using ProgressFn = std::function<void(double, const std::string&)>;

bool EvaluateSeries(const Series& series, const Options& options, ThreadPool& pool,
                    const ProgressFn& progress, std::vector<Measurement>* results,
                    std::string* error);

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_EVALUATE_H_
