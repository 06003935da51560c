// covattn-model-eval: a development driver of the model evaluation
// (tools/model/evaluate.h) until covattn-compare --model lands. It cuts
// --windows windows of --window-tokens tokens, evenly spaced, from a token
// file, runs each through the model with exact attention and with the bounded
// cache at every budget, and prints medians over the windows.
//
// Equal persistent bytes per KV head (token: K and V in f32, 8d bytes;
// summary: 8 (1 + 2d) + 8 d^2 bytes; outlier whitening: 4 (d(d+1)/2 + d) +
// 4 per slot), with a budget B of exact tokens and S sinks:
//   window    S sinks + (B - S + ceil(summary / token)) window, evicted dropped
//   window-same  S sinks + (B - S) window, evicted dropped (the hybrid without
//             its summary: fewer bytes, to see what the summary adds)
//   hybrid    S sinks + (B - S) window + summary
//   outliers  S sinks + O slots + (B - S - O - ceil(whitening / token)) window
//             + summary + whitening
//   POLICY+SUMMARY  query-aware retention (POLICY ema, h2o or tova), observed
//             after every decode: S sinks, then equal numbers of window and
//             retained slots (a window slot costs a token and a 4-byte score,
//             a retained slot a token, a score and an 8-byte token number)
//             filling the window method's bytes after the SUMMARY: none,
//             mean (compact, no RoPE: diagonal Gaussian), ring (compact with
//             the ring correction of interleaved RoPE), cov (covariance), or
//             covring (covariance with the ring correction)
//   hybrid-ring  hybrid with the ring correction of interleaved RoPE
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "model/attention_methods.h"
#include "model/checkpoint.h"
#include "model/evaluate.h"
#include "model/tokens.h"

namespace {

using namespace covattn_model;

struct Args {
  std::string model, tokens;
  bool bytes = false;
  size_t windows = 4, window_tokens = 1024, sinks = 4;
  std::vector<size_t> budgets = {32, 64, 128, 256};
  double outlier_fraction = 0.25;  // outlier slots = fraction of the budget
  std::vector<std::string> methods = {"window", "hybrid", "outliers"};
  std::vector<size_t> from = {0, 256};  // aggregate over positions [from, end)
  std::string dump_qkv;
  size_t sample = 0;  // > 0: sample this many tokens after the first of each window
  uint64_t seed = 1;
  bool layer_errors = true;
};

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t comma; (comma = s.find(',', start)) != std::string::npos; start = comma + 1) {
    out.push_back(s.substr(start, comma - start));
  }
  out.push_back(s.substr(start));
  return out;
}

std::vector<size_t> SplitSizes(const std::string& s) {
  std::vector<size_t> out;
  for (const std::string& part : Split(s)) out.push_back(std::strtoull(part.c_str(), nullptr, 10));
  return out;
}

bool ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    const std::string name = argv[i];
    if (name == "--bytes") {
      a->bytes = true;
      continue;
    }
    if (name == "--no-layer-errors") {
      a->layer_errors = false;
      continue;
    }
    if (i + 1 >= argc) return false;
    const std::string value = argv[++i];
    if (name == "--model")
      a->model = value;
    else if (name == "--tokens")
      a->tokens = value;
    else if (name == "--windows")
      a->windows = std::strtoull(value.c_str(), nullptr, 10);
    else if (name == "--window-tokens")
      a->window_tokens = std::strtoull(value.c_str(), nullptr, 10);
    else if (name == "--sinks")
      a->sinks = std::strtoull(value.c_str(), nullptr, 10);
    else if (name == "--budgets")
      a->budgets = SplitSizes(value);
    else if (name == "--outlier-fraction")
      a->outlier_fraction = std::atof(value.c_str());
    else if (name == "--methods")
      a->methods = Split(value);
    else if (name == "--from")
      a->from = SplitSizes(value);
    else if (name == "--dump-qkv")
      a->dump_qkv = value;
    else if (name == "--sample")
      a->sample = std::strtoull(value.c_str(), nullptr, 10);
    else if (name == "--seed")
      a->seed = std::strtoull(value.c_str(), nullptr, 10);
    else
      return false;
  }
  return !a->model.empty() && !a->tokens.empty();
}

size_t CeilDiv(size_t a, size_t b) { return (a + b - 1) / b; }

covattn_cache_config Config(size_t sinks, size_t window, size_t outliers, uint32_t flags) {
  covattn_cache_config c{};
  c.dtype = COVATTN_F32;
  c.n_sinks = sinks;
  c.window = window;
  c.n_outliers = outliers;
  c.forgetting = 1.0f;
  c.flags = flags;
  return c;
}

// POLICY+SUMMARY methods (see the top of the file); false for other names.
bool PlanRetention(const std::string& method, size_t budget, const Args& a, size_t d,
                   MethodSpec* spec) {
  const size_t plus = method.find('+');
  if (plus == std::string::npos) return false;
  const std::string policy = method.substr(0, plus), kind = method.substr(plus + 1);
  const std::map<std::string, uint32_t> policies = {{"ema", COVATTN_RETENTION_EMA},
                                                    {"h2o", COVATTN_RETENTION_H2O},
                                                    {"tova", COVATTN_RETENTION_TOVA}};
  struct Kind {
    uint32_t summary, rope;
    size_t bytes;
  };
  const size_t compact = 8 * (1 + 3 * d), covariance = 8 * (1 + 2 * d) + 8 * d * d;
  const std::map<std::string, Kind> kinds = {
      {"none", {COVATTN_SUMMARY_NONE, COVATTN_ROPE_NONE, 0}},
      {"mean", {COVATTN_SUMMARY_COMPACT, COVATTN_ROPE_NONE, compact}},
      {"ring", {COVATTN_SUMMARY_COMPACT, COVATTN_ROPE_INTERLEAVED, compact}},
      {"cov", {COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_NONE, covariance}},
      {"covring", {COVATTN_SUMMARY_COVARIANCE, COVATTN_ROPE_INTERLEAVED, covariance}}};
  if (!policies.count(policy) || !kinds.count(kind)) return false;
  const Kind k = kinds.at(kind);
  const size_t token = TokenBytes(d), summary = 8 * (1 + 2 * d) + 8 * d * d;
  const size_t total = (budget + CeilDiv(summary, token)) * token;  // the window method's
  const size_t window_slot = token + 4, retained_slot = token + 12;
  if (total < a.sinks * token + k.bytes + window_slot + retained_slot) return false;
  const size_t left = total - a.sinks * token - k.bytes;
  const size_t pairs = left / (window_slot + retained_slot);
  const size_t window = pairs + (left - pairs * (window_slot + retained_slot)) / window_slot;
  spec->cache = Config(a.sinks, window, 0, 0);
  spec->cache.n_retained = pairs;
  spec->cache.retention = policies.at(policy);
  spec->cache.summary = k.summary;
  spec->cache.rope = k.rope;
  spec->persistent_bytes_per_kv_head =
      a.sinks * token + window * window_slot + pairs * retained_slot + k.bytes;
  return true;
}

bool Plan(const std::string& method, size_t budget, const Args& a, size_t d, MethodSpec* spec,
          std::string* error) {
  const size_t token = TokenBytes(d), summary = 8 * (1 + 2 * d) + 8 * d * d;
  spec->key = method;
  spec->name = method + " B=" + std::to_string(budget);
  spec->budget = budget;
  if (method == "exact") {
    spec->exact = true;
  } else if (method == "window") {
    const size_t window = budget - a.sinks + CeilDiv(summary, token);
    spec->cache = Config(a.sinks, window, 0, COVATTN_CACHE_DROP_EVICTED);
    spec->persistent_bytes_per_kv_head = (a.sinks + window) * token;
  } else if (method == "window-same") {  // the hybrid's exact tokens, no summary
    spec->cache = Config(a.sinks, budget - a.sinks, 0, COVATTN_CACHE_DROP_EVICTED);
    spec->persistent_bytes_per_kv_head = budget * token;
  } else if (method == "hybrid") {
    spec->cache = Config(a.sinks, budget - a.sinks, 0, 0);
    spec->persistent_bytes_per_kv_head = budget * token + summary;
  } else if (method == "outliers") {
    const size_t slots = static_cast<size_t>(a.outlier_fraction * double(budget));
    const size_t whitening = 4 * (d * (d + 1) / 2 + d) + 4 * slots;
    const size_t given_up = CeilDiv(whitening, token);
    if (a.sinks + slots + given_up >= budget) {
      *error = "budget " + std::to_string(budget) + " leaves no window for outliers";
      return false;
    }
    const size_t window = budget - a.sinks - slots - given_up;
    spec->cache = Config(a.sinks, window, slots, 0);
    spec->persistent_bytes_per_kv_head = (a.sinks + window + slots) * token + summary + whitening;
  } else if (method == "hybrid-ring") {
    spec->cache = Config(a.sinks, budget - a.sinks, 0, 0);
    spec->cache.rope = COVATTN_ROPE_INTERLEAVED;
    spec->persistent_bytes_per_kv_head = budget * token + summary;
  } else if (!PlanRetention(method, budget, a, d, spec)) {
    *error = "unknown method " + method;
    return false;
  }
  spec->name += " (" + std::to_string(spec->cache.n_sinks) + "/" +
                std::to_string(spec->cache.window) + "/" + std::to_string(spec->cache.n_outliers) +
                (spec->cache.n_retained ? "/" + std::to_string(spec->cache.n_retained) : "") + ")";
  return true;
}

double Median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void PrintAttention(const std::vector<Evaluation>& evals, const std::vector<size_t>& windows,
                    size_t from) {
  const size_t layers = evals[0].config.n_layers, heads = evals[0].config.n_heads;
  std::vector<AttentionSummary> sums;
  for (const Evaluation& e : evals) sums.push_back(SummarizeAttention(e, from, SIZE_MAX));
  std::printf(
      "\nexact attention, positions >= %zu (median over windows of per-window means)\n"
      "layer head  score_std  max_weight  evicted mass (sinks 4 + window W), W =",
      from);
  for (size_t w : windows) std::printf(" %zu", w);
  std::printf("\n");
  auto median = [&](auto get) {
    std::vector<double> v;
    for (const AttentionSummary& s : sums) v.push_back(get(s));
    return Median(v);
  };
  for (size_t l = 0; l < layers; ++l) {
    for (size_t h = 0; h < heads; ++h) {
      std::printf("%5zu %4zu  %9.3f  %10.3f ", l, h,
                  median([&](const AttentionSummary& s) { return s.score_std[l][h]; }),
                  median([&](const AttentionSummary& s) { return s.max_weight[l][h]; }));
      for (size_t w = 0; w < windows.size(); ++w) {
        std::printf(" %6.3f",
                    median([&](const AttentionSummary& s) { return s.evicted_mass[w][l][h]; }));
      }
      std::printf("\n");
    }
  }
}

void PrintMethods(const std::vector<Evaluation>& evals, size_t from, bool layer_details) {
  std::printf("\npositions >= %zu, medians over %zu windows\n", from, evals.size());
  std::printf("%-34s %10s %9s %9s %8s %9s %10s %10s\n", "method", "bytes/kvh", "kl_mean", "kl_p95",
              "top1", "ppl_ratio", "attn_us", "total_us");
  const size_t n_methods = evals[0].methods.size();
  for (size_t m = 0; m <= n_methods; ++m) {
    std::vector<double> kl, p95, top1, ppl, att, tot;
    std::vector<MethodSummary> sums;
    for (const Evaluation& e : evals) {
      const MethodRun& run = m == 0 ? e.reference : e.methods[m - 1];
      sums.push_back(Summarize(e, run, from, SIZE_MAX));
      const MethodSummary& s = sums.back();
      kl.push_back(s.kl_mean), p95.push_back(s.kl_p95), top1.push_back(s.top1_agreement);
      ppl.push_back(s.ppl_ratio), att.push_back(s.attention_seconds_per_token * 1e6);
      tot.push_back(s.total_seconds_per_token * 1e6);
    }
    const MethodRun& run0 = m == 0 ? evals[0].reference : evals[0].methods[m - 1];
    std::printf("%-34s %10zu %9.4f %9.4f %8.4f %9.4f %10.1f %10.1f\n", run0.spec.name.c_str(),
                run0.persistent_bytes_per_layer / evals[0].config.n_kv_heads, Median(kl),
                Median(p95), Median(top1), Median(ppl), Median(att), Median(tot));
    if (!layer_details || m == 0 || sums[0].layers.empty()) continue;
    for (size_t l = 0; l < sums[0].layers.size(); ++l) {
      std::vector<double> rel, dz;
      std::vector<std::vector<double>> share(evals[0].config.n_heads);
      for (const MethodSummary& s : sums) {
        rel.push_back(s.layers[l].rel_l2_median), dz.push_back(s.layers[l].log_z_error_median);
        for (size_t h = 0; h < share.size(); ++h)
          share[h].push_back(s.layers[l].summary_share_mean[h]);
      }
      std::printf("    layer %zu: rel_l2 %.3e  |dlogZ| %.3e  summary_share", l, Median(rel),
                  Median(dz));
      for (auto& s : share) std::printf(" %.3f", Median(s));
      std::printf("\n");
    }
  }
}

// Each method's mean KL in every window, to see how much the windows differ.
void PrintPerWindow(const std::vector<Evaluation>& evals, size_t from) {
  std::printf("\nmean KL per window, positions >= %zu\n%-34s", from, "method");
  for (size_t w = 0; w < evals.size(); ++w) std::printf(" %8zu", w);
  std::printf("\n");
  for (size_t m = 0; m < evals[0].methods.size(); ++m) {
    std::printf("%-34s", evals[0].methods[m].spec.name.c_str());
    for (const Evaluation& e : evals) {
      std::printf(" %8.4f", Summarize(e, e.methods[m], from, SIZE_MAX).kl_mean);
    }
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (!ParseArgs(argc, argv, &a)) {
    std::fprintf(stderr,
                 "usage: covattn-model-eval --model BIN --tokens FILE [--bytes] "
                 "[--windows N] [--window-tokens T] [--budgets LIST] [--sinks S] "
                 "[--outlier-fraction F] [--methods LIST] [--from LIST] "
                 "[--dump-qkv DIR] [--sample N --seed S] [--no-layer-errors]\n");
    return 2;
  }
  std::string error;
  Checkpoint ck;
  if (!ReadCheckpoint(a.model, &ck, &error)) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 1;
  }
  const ModelConfig& c = ck.config;
  std::printf(
      "%s: dim %zu, hidden %zu, %zu layers, %zu/%zu heads, head_dim %zu, vocab %zu, "
      "seq_len %zu\n",
      a.model.c_str(), c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim(),
      c.vocab_size, c.seq_len);
  std::vector<MethodSpec> specs;
  for (size_t budget : a.budgets) {
    for (const std::string& method : a.methods) {
      MethodSpec spec;
      if (!Plan(method, budget, a, c.head_dim(), &spec, &error)) {
        std::fprintf(stderr, "%s\n", error.c_str());
        return 1;
      }
      specs.push_back(spec);
    }
  }
  const TokenFormat format = a.bytes ? TokenFormat::kBytes : TokenFormat::kNpy;
  size_t count = 0;
  if (!CountTokens(a.tokens, format, &count, &error)) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 1;
  }
  // The hybrid's window at each budget: the mass its summary should carry.
  std::vector<size_t> windows;
  for (size_t budget : a.budgets) windows.push_back(budget - a.sinks);
  std::vector<Evaluation> evals(a.windows);
  for (size_t w = 0; w < a.windows; ++w) {
    const size_t span = count > a.window_tokens ? count - a.window_tokens : 0;
    TokenWindow window;
    window.offset = a.windows > 1 ? span * w / (a.windows - 1) : 0;
    window.max_tokens = a.sample ? 1 : a.window_tokens;
    std::vector<int32_t> tokens;
    if (!ReadTokens(a.tokens, format, window, c.vocab_size, &tokens, &error)) {
      std::fprintf(stderr, "%s\n", error.c_str());
      return 1;
    }
    EvalOptions options;
    options.n_tokens = a.sample;
    options.seed = a.seed + w;
    options.layer_errors = a.layer_errors;
    options.evicted_windows = windows;
    options.stats_sinks = a.sinks;
    if (!a.dump_qkv.empty() && w == 0) options.dump_qkv_dir = a.dump_qkv;
    std::fprintf(stderr, "window %zu/%zu at token %zu\n", w + 1, a.windows, window.offset);
    if (!Evaluate(ck, tokens, specs, options, &evals[w], &error)) {
      std::fprintf(stderr, "%s\n", error.c_str());
      return 1;
    }
    std::vector<double> nll(evals[w].reference.nll);
    double sum = 0;
    for (double x : nll) sum += x;
    std::printf("window %zu (tokens %zu..%zu): exact %.4f bits/token\n", w, window.offset,
                window.offset + evals[w].tokens.size(), sum / double(nll.size()) / std::log(2.0));
  }
  for (size_t from : a.from) PrintMethods(evals, from, true);
  for (size_t from : a.from) PrintPerWindow(evals, from);
  for (size_t from : a.from) PrintAttention(evals, windows, from);
  return 0;
}
