// Model-in-the-loop evaluation: one token sequence through the model with
// exact attention (the reference) and with every method, teacher-forced (each
// method sees the reference's tokens, whatever it would have predicted), and
// the next-token distributions compared position by position (MATH.md
// section 5):
//
//   KL(exact || method) in nats, from the logits in double;
//   top-1 agreement (the argmaxes are equal);
//   perplexity ratio exp(mean NLL_method - mean NLL_exact) over the
//   teacher-forced tokens (position t predicts tokens[t + 1]);
//   time per token: attention (every layer's append + decode) and the whole
//   step.
//
// Per layer and query head, each method's attention output is compared with
// exact attention over the same (the method's own) q, k, v: rel L2 and
// |log Z - log Z_exact|, with the summary's share of the softmax mass. The
// reference run also gives each head's score std (of a.k over the visible
// keys, a = q / sqrt(head_dim)) and its largest softmax weight, and can dump
// its activations for covattn-compare --qkv.
//
// Positions beyond the given tokens can be sampled from the exact model:
// temperature 1, one uniform draw u in [0, 1) per token from SplitMix64
// seeded with `seed`, the first token whose cumulative probability (in
// double, in vocabulary order) exceeds u.
#ifndef COVATTN_TOOLS_MODEL_EVALUATE_H_
#define COVATTN_TOOLS_MODEL_EVALUATE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "attention_methods.h"
#include "checkpoint.h"

namespace covattn_model {

struct EvalOptions {
  // Tokens in all: the given ones, then sampled ones (0: the given ones).
  size_t n_tokens = 0;
  uint64_t seed = 1;
  bool layer_errors = true;     // per-layer comparison with exact attention
  bool attention_stats = true;  // the reference's score std, max weight, evicted mass
  // The exact softmax mass a sinks + window cache would not hold: for each
  // window W here, the mass on tokens j with stats_sinks <= j <= pos - W
  // (what a cache of stats_sinks sinks and a window of W has evicted).
  std::vector<size_t> evicted_windows;
  size_t stats_sinks = 4;
  std::string dump_qkv_dir;  // empty: no dump
  // Called after each position (done positions, all positions).
  std::function<void(size_t, size_t)> progress;
};

// Per layer, [position][query head] flattened (position * n_heads + head).
using LayerSeries = std::vector<std::vector<float>>;

struct MethodRun {
  MethodSpec spec;
  size_t persistent_bytes_per_layer = 0;                 // exact: at the full sequence
  std::vector<double> kl;                                // [n_tokens]
  std::vector<uint8_t> top1_agree;                       // [n_tokens]
  std::vector<double> nll;                               // [n_tokens - 1]
  std::vector<double> attention_seconds, total_seconds;  // [n_tokens]
  LayerSeries rel_l2, log_z_error, summary_share;        // empty without layer_errors
};

struct Evaluation {
  ModelConfig config;
  std::vector<int32_t> tokens;  // the sequence every method ran
  size_t n_given = 0;           // tokens[0, n_given) were given, the rest sampled
  MethodRun reference;          // exact attention (KL 0, agreement 1)
  std::vector<MethodRun> methods;
  // The reference's attention (empty without attention_stats): score std,
  // largest softmax weight, and per evicted_windows entry the evicted mass.
  LayerSeries score_std, max_weight;
  std::vector<LayerSeries> evicted_mass;
};

// Runs the evaluation. `tokens` must hold at least one token, every one in
// the vocabulary, and the sequence may not exceed the model's seq_len.
bool Evaluate(const Checkpoint& checkpoint, const std::vector<int32_t>& tokens,
              const std::vector<MethodSpec>& methods, const EvalOptions& options,
              Evaluation* evaluation, std::string* error);

// Aggregates over positions [begin, end) (clamped to the sequence).
struct LayerSummary {
  // Medians and maxima over positions and query heads; per head, means.
  double rel_l2_median = 0, rel_l2_max = 0, log_z_error_median = 0, log_z_error_max = 0;
  std::vector<double> summary_share_mean;  // [n_heads], NaN without a summary
};

struct MethodSummary {
  size_t positions = 0;
  double kl_mean = 0, kl_p95 = 0, kl_max = 0, top1_agreement = 0, ppl_ratio = 0;
  double attention_seconds_per_token = 0, total_seconds_per_token = 0;  // means
  std::vector<LayerSummary> layers;  // empty without layer_errors
};

MethodSummary Summarize(const Evaluation& evaluation, const MethodRun& run, size_t begin,
                        size_t end);

// Per layer and query head, means over positions [begin, end) of the
// reference's attention statistics.
struct AttentionSummary {
  std::vector<std::vector<double>> score_std, max_weight;      // [layer][head]
  std::vector<std::vector<std::vector<double>>> evicted_mass;  // [window][layer][head]
};

AttentionSummary SummarizeAttention(const Evaluation& evaluation, size_t begin, size_t end);

// KL(p || q) of the softmax distributions of two logit vectors, in nats,
// computed in double; the argmax (first on ties) of each.
double KlDivergence(const float* logits_p, const float* logits_q, size_t n);
size_t Argmax(const float* logits, size_t n);

// Nearest-rank percentile (0 < fraction <= 1) of values; NaN when empty.
double Percentile(std::vector<double> values, double fraction);

}  // namespace covattn_model

#endif  // COVATTN_TOOLS_MODEL_EVALUATE_H_
