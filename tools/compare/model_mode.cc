#include "model_mode.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "methods.h"
#include "model/evaluate.h"
#include "model/tokens.h"
#include "model_methods.h"

namespace covattn_compare {
namespace {

using covattn_model::Evaluation;
using covattn_model::MethodSpec;

double Median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Every method at every budget, exact once (first). A method that does not
// fit in the hybrid's bytes at a budget is left out with a note.
bool PlanAll(const Options& options, size_t d, std::vector<MethodSpec>* specs,
             std::vector<ModelRow>* rows, std::vector<std::string>* notes, std::string* error) {
  const std::vector<Method> methods = ModelMethods(options);
  auto add = [&](Method method, size_t budget) {
    MethodSpec spec;
    std::string why;
    if (!PlanModelMethod(method, budget, options, d, &spec, &why)) {
      if (why.rfind("covattn_cache_size", 0) == 0) {
        *error = why;
        return false;
      }
      notes->push_back(std::string(MethodName(method)) + " left out: " + why);
      return true;
    }
    ModelRow row;
    row.method = method;
    row.name = spec.name;
    row.budget = spec.budget;
    row.sinks = spec.cache.n_sinks, row.window = spec.cache.window;
    row.outliers = spec.cache.n_outliers;
    row.persistent_bytes = spec.persistent_bytes_per_kv_head;
    specs->push_back(spec);
    rows->push_back(row);
    return true;
  };
  if (std::find(methods.begin(), methods.end(), Method::kExact) != methods.end()) {
    if (!add(Method::kExact, 0)) return false;
  }
  if (std::find(methods.begin(), methods.end(), Method::kExactInt8) != methods.end()) {
    if (!add(Method::kExactInt8, 0)) return false;  // no budget either
  }
  for (size_t budget : options.budgets) {
    for (Method method : methods) {
      if (!IsExact(method) && !add(method, budget)) return false;
    }
  }
  if (specs->empty()) {
    *error = "no method to run inside the model (onednn is not one)";
    return false;
  }
  return true;
}

// The windows of the token file: their first tokens and how many tokens each
// reads (the rest of a window past the file's end is sampled).
struct Windows {
  std::vector<size_t> offsets;
  size_t given = 0;  // tokens read per window (0: sampled from token 0)
};

bool CutWindows(const Options& options, size_t n_tokens, Windows* w, std::string* error) {
  if (options.tokens.empty()) {
    w->offsets.assign(options.windows, 0);
    return true;
  }
  const auto format =
      options.bytes ? covattn_model::TokenFormat::kBytes : covattn_model::TokenFormat::kNpy;
  size_t count = 0;
  if (!covattn_model::CountTokens(options.tokens, format, &count, error)) return false;
  if (count == 0) {
    *error = options.tokens + ": no tokens";
    return false;
  }
  w->given = std::min(count, n_tokens);
  const size_t span = count - w->given;
  for (size_t i = 0; i < options.windows; ++i) {
    w->offsets.push_back(options.windows > 1 ? span * i / (options.windows - 1) : 0);
  }
  return true;
}

bool WindowTokens(const Options& options, const Windows& w, size_t i, size_t vocab,
                  std::vector<int32_t>* tokens, std::string* error) {
  if (options.tokens.empty()) {
    tokens->assign(1, 0);  // sampling starts from token 0
    return true;
  }
  covattn_model::TokenWindow window;
  window.offset = w.offsets[i];
  window.max_tokens = w.given;
  const auto format =
      options.bytes ? covattn_model::TokenFormat::kBytes : covattn_model::TokenFormat::kNpy;
  return covattn_model::ReadTokens(options.tokens, format, window, vocab, tokens, error);
}

// Per-window figures of every row, then their medians.
struct WindowFigures {
  std::vector<std::vector<covattn_model::MethodSummary>> methods;  // [row][window]
  std::vector<covattn_model::AttentionSummary> attention;          // [window]
};

void Aggregate(const WindowFigures& f, ModelResult* r) {
  for (size_t m = 0; m < r->rows.size(); ++m) {
    ModelRow& row = r->rows[m];
    const std::vector<covattn_model::MethodSummary>& s = f.methods[m];
    auto median = [&](auto get) {
      std::vector<double> v;
      for (const covattn_model::MethodSummary& x : s) v.push_back(get(x));
      return Median(v);
    };
    using MS = covattn_model::MethodSummary;
    row.kl_mean = median([](const MS& x) { return x.kl_mean; });
    row.kl_p95 = median([](const MS& x) { return x.kl_p95; });
    row.top1_agreement = median([](const MS& x) { return x.top1_agreement; });
    row.ppl_ratio = median([](const MS& x) { return x.ppl_ratio; });
    row.decode_seconds_per_token =
        median([](const MS& x) { return x.attention_seconds_per_token; });
    row.step_seconds_per_token = median([](const MS& x) { return x.total_seconds_per_token; });
    for (const MS& x : s) row.kl_mean_per_window.push_back(x.kl_mean);
    for (size_t l = 0; l < s[0].layers.size(); ++l) {
      ModelLayerRow layer;
      layer.rel_l2_median = median([l](const MS& x) { return x.layers[l].rel_l2_median; });
      layer.log_z_error_median =
          median([l](const MS& x) { return x.layers[l].log_z_error_median; });
      layer.summary_share_mean = median([l](const MS& x) {
        const std::vector<double>& share = x.layers[l].summary_share_mean;
        double sum = 0;
        for (double v : share) sum += v;
        return sum / double(share.size());
      });
      row.layers.push_back(layer);
    }
  }
  // [layer][head] medians over windows of one per-window table.
  auto medians = [&](auto get) {
    const std::vector<std::vector<double>>& first = get(f.attention[0]);
    std::vector<std::vector<double>> out(first.size());
    for (size_t l = 0; l < first.size(); ++l) {
      for (size_t h = 0; h < first[l].size(); ++h) {
        std::vector<double> v;
        for (const covattn_model::AttentionSummary& a : f.attention) v.push_back(get(a)[l][h]);
        out[l].push_back(Median(v));
      }
    }
    return out;
  };
  using AS = covattn_model::AttentionSummary;
  r->score_std =
      medians([](const AS& a) -> const std::vector<std::vector<double>>& { return a.score_std; });
  r->max_weight =
      medians([](const AS& a) -> const std::vector<std::vector<double>>& { return a.max_weight; });
  for (size_t b = 0; b < f.attention[0].evicted_mass.size(); ++b) {
    r->evicted_mass.push_back(medians(
        [b](const AS& a) -> const std::vector<std::vector<double>>& { return a.evicted_mass[b]; }));
  }
}

}  // namespace

bool RunModel(const Options& options, Progress& progress, ModelResult* result, std::string* error) {
  ModelResult& r = *result;
  r = ModelResult();
  covattn_model::Checkpoint ck;
  if (!covattn_model::ReadCheckpoint(options.model, &ck, error)) return false;
  r.path = options.model;
  r.tokens = options.tokens.empty() ? "sampled" : options.tokens;
  r.config = ck.config;
  r.n_tokens = options.max_tokens ? options.max_tokens : ck.config.seq_len;
  if (r.n_tokens > ck.config.seq_len) {
    *error = options.model + ": --max-tokens " + std::to_string(r.n_tokens) +
             " exceeds the model's seq_len of " + std::to_string(ck.config.seq_len);
    return false;
  }
  if (options.from >= r.n_tokens) {
    *error = "--from " + std::to_string(options.from) + " leaves no position of the " +
             std::to_string(r.n_tokens) + " tokens to aggregate";
    return false;
  }
  std::vector<MethodSpec> specs;
  if (!PlanAll(options, ck.config.head_dim(), &specs, &r.rows, &r.notes, error)) return false;
  for (ModelRow& row : r.rows) {
    if (row.method == Method::kExact) {
      row.persistent_bytes = r.n_tokens * covattn_model::TokenBytes(ck.config.head_dim());
    } else if (row.method == Method::kExactInt8) {
      row.persistent_bytes = r.n_tokens * Int8TokenBytes(ck.config.head_dim());
    }
  }
  Windows windows;
  if (!CutWindows(options, r.n_tokens, &windows, error)) return false;
  r.offsets = windows.offsets;

  covattn_model::EvalOptions eval;
  eval.n_tokens = r.n_tokens;
  eval.stats_sinks = options.sinks;
  for (size_t budget : options.budgets) eval.evicted_windows.push_back(budget - options.sinks);
  WindowFigures figures;
  figures.methods.resize(specs.size());
  const size_t n = windows.offsets.size();
  for (size_t w = 0; w < n; ++w) {
    std::vector<int32_t> tokens;
    if (!WindowTokens(options, windows, w, ck.config.vocab_size, &tokens, error)) return false;
    eval.seed = options.seed + w;
    eval.dump_qkv_dir = w == 0 ? options.dump_qkv : "";
    eval.progress = [&](size_t done, size_t all) {
      progress.Update((double(w) + double(done) / double(all)) / double(n),
                      "window " + std::to_string(w + 1) + "/" + std::to_string(n));
    };
    Evaluation e;
    if (!covattn_model::Evaluate(ck, tokens, specs, eval, &e, error)) {
      *error = options.model + ": " + *error;
      return false;
    }
    double nll = 0;
    for (double x : e.reference.nll) nll += x;
    r.exact_bits.push_back(nll / double(std::max<size_t>(1, e.reference.nll.size())) /
                           std::log(2.0));
    for (size_t m = 0; m < specs.size(); ++m) {
      figures.methods[m].push_back(Summarize(e, e.methods[m], options.from, SIZE_MAX));
    }
    figures.attention.push_back(SummarizeAttention(e, options.from, SIZE_MAX));
  }
  Aggregate(figures, &r);
  return true;
}

}  // namespace covattn_compare
