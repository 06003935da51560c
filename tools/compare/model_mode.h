// covattn-compare --model: a llama2.c checkpoint run with exact attention
// (the reference) and with every method at every budget, teacher-forced on
// the same tokens (tools/model/evaluate.h), over --windows windows of
// --max-tokens tokens cut evenly from --tokens (or one sampled sequence).
// Every figure is the median over the windows of the window's figure over
// positions >= --from.
#ifndef COVATTN_TOOLS_COMPARE_MODEL_MODE_H_
#define COVATTN_TOOLS_COMPARE_MODEL_MODE_H_

#include <cstddef>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "options.h"
#include "progress.h"

namespace covattn_compare {

struct ModelLayerRow {
  // Against exact attention over the method's own q, k, v: medians over
  // positions and query heads; the summary's share of the mass, mean.
  double rel_l2_median = 0, log_z_error_median = 0, summary_share_mean = 0;
};

// One method at one budget (exact: budget 0).
struct ModelRow {
  Method method = Method::kExact;
  std::string name;
  size_t budget = 0, sinks = 0, window = 0, outliers = 0;
  size_t persistent_bytes = 0;  // per KV head
  double kl_mean = 0, kl_p95 = 0, top1_agreement = 0, ppl_ratio = 0;
  double decode_seconds_per_token = 0;  // every layer's append + decode
  double step_seconds_per_token = 0;    // the whole forward step
  std::vector<double> kl_mean_per_window;
  std::vector<ModelLayerRow> layers;
};

struct ModelResult {
  std::string path, tokens;  // tokens: the file, or "sampled"
  covattn_model::ModelConfig config;
  size_t n_tokens = 0;             // per window
  std::vector<size_t> offsets;     // first token of each window in the file
  std::vector<double> exact_bits;  // per window: exact's mean NLL in bits per token
  std::vector<ModelRow> rows;      // exact first, then by budget and method
  std::vector<std::string> notes;  // methods left out at a budget, and why
  // The reference's attention, medians over windows of per-window means,
  // [layer][head]: the std of the scores a.k, the largest softmax weight, and
  // per budget the mass that sinks + the hybrid's window would have evicted.
  std::vector<std::vector<double>> score_std, max_weight;
  std::vector<std::vector<std::vector<double>>> evicted_mass;  // [budget][layer][head]
};

// False with a message naming the file and the problem (exit status 1).
bool RunModel(const Options& options, Progress& progress, ModelResult* result, std::string* error);

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_MODEL_MODE_H_
