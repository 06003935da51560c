#include "evaluate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "qkv_dump.h"
#include "tokens.h"
#include "transformer.h"

namespace covattn_model {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double LogSumExp(const float* x, size_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < n; ++i) m = std::max(m, double(x[i]));
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(double(x[i]) - m);
  return m + std::log(sum);
}

// SplitMix64 (Steele, Lea, Flood 2014): a fixed, portable stream.
struct SplitMix64 {
  uint64_t state;
  uint64_t Next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform() { return double(Next() >> 11) * (1.0 / 9007199254740992.0); }
};

int32_t SampleToken(const float* logits, size_t n, SplitMix64* rng) {
  const double lse = LogSumExp(logits, n), u = rng->Uniform();
  double cumulative = 0.0;
  for (size_t i = 0; i < n; ++i) {
    cumulative += std::exp(double(logits[i]) - lse);
    if (u < cumulative) return static_cast<int32_t>(i);
  }
  return static_cast<int32_t>(Argmax(logits, n));  // u beyond the rounded total
}

class ObserverList : public StepObserver {
 public:
  void Add(StepObserver* o) { observers_.push_back(o); }
  bool empty() const { return observers_.empty(); }
  bool OnLayer(const LayerActivations& a, std::string* error) override {
    for (StepObserver* o : observers_) {
      if (!o->OnLayer(a, error)) return false;
    }
    return true;
  }

 private:
  std::vector<StepObserver*> observers_;
};

// The reference's score std and largest softmax weight per head, in double,
// over the keys it has seen (its own copy of them).
class AttentionStatsObserver : public StepObserver {
 public:
  AttentionStatsObserver(const ModelConfig& c, size_t n_tokens, const EvalOptions& options,
                         Evaluation* e)
      : c_(c),
        windows_(options.evicted_windows),
        sinks_(options.stats_sinks),
        keys_(c.n_layers),
        e_(e) {
    for (auto& k : keys_) k.reserve(n_tokens * c.kv_dim());
    const LayerSeries zeros(c.n_layers, std::vector<float>(n_tokens * c.n_heads));
    e->score_std = e->max_weight = zeros;
    e->evicted_mass.assign(windows_.size(), zeros);
  }

  bool OnLayer(const LayerActivations& a, std::string*) override {
    const size_t hd = c_.head_dim(), kv_dim = c_.kv_dim(), group = c_.n_heads / c_.n_kv_heads;
    std::vector<float>& keys = keys_[a.layer];
    keys.insert(keys.end(), a.k, a.k + kv_dim);
    const size_t n = a.pos + 1;
    scores_.resize(n);
    const double scale = 1.0 / std::sqrt(double(hd));
    for (size_t h = 0; h < c_.n_heads; ++h) {
      const float* q = a.q + h * hd;
      double sum = 0.0, max = -std::numeric_limits<double>::infinity();
      for (size_t j = 0; j < n; ++j) {
        const float* k = keys.data() + j * kv_dim + (h / group) * hd;
        double dot = 0.0;
        for (size_t i = 0; i < hd; ++i) dot += double(q[i]) * k[i];
        scores_[j] = scale * dot;
        sum += scores_[j];
        max = std::max(max, scores_[j]);
      }
      const double mean = sum / double(n);
      double squares = 0.0, z = 0.0;
      for (double s : scores_) squares += (s - mean) * (s - mean), z += std::exp(s - max);
      const size_t at = a.pos * c_.n_heads + h;
      e_->score_std[a.layer][at] = static_cast<float>(std::sqrt(squares / double(n)));
      e_->max_weight[a.layer][at] = static_cast<float>(1.0 / z);
      for (size_t w = 0; w < windows_.size(); ++w) {
        double evicted = 0.0;
        for (size_t j = sinks_; j + windows_[w] <= a.pos; ++j)
          evicted += std::exp(scores_[j] - max);
        e_->evicted_mass[w][a.layer][at] = static_cast<float>(evicted / z);
      }
    }
    return true;
  }

 private:
  ModelConfig c_;
  std::vector<size_t> windows_;
  size_t sinks_;
  std::vector<std::vector<float>> keys_;  // per layer [token][kv_dim]
  std::vector<double> scores_;
  Evaluation* e_;
};

// A method's attention output against exact attention over the same q, k, v.
class LayerErrorObserver : public StepObserver {
 public:
  LayerErrorObserver(const ModelConfig& c, size_t n_tokens, MethodRun* run)
      : c_(c), run_(run), exact_out_(c.dim) {
    diagnostics_.log_z.resize(c.n_heads);
    diagnostics_.summary_share.resize(c.n_heads);
    for (LayerSeries* s : {&run->rel_l2, &run->log_z_error, &run->summary_share}) {
      s->assign(c.n_layers, std::vector<float>(n_tokens * c.n_heads, float(kNaN)));
    }
  }

  bool Init(size_t n_tokens, std::string* error) {
    MethodSpec exact;
    exact.exact = true;
    for (size_t l = 0; l < c_.n_layers; ++l) {
      shadows_.push_back(CreateLayerAttention(exact, c_, n_tokens, error));
      if (!shadows_.back()) return false;
    }
    return true;
  }

  bool OnLayer(const LayerActivations& a, std::string* error) override {
    LayerAttention& shadow = *shadows_[a.layer];
    if (!shadow.Append(a.k, a.v, error) ||
        !shadow.Decode(a.q, exact_out_.data(), &diagnostics_, error)) {
      *error = "exact attention for comparison: " + *error;
      return false;
    }
    const size_t hd = c_.head_dim();
    for (size_t h = 0; h < c_.n_heads; ++h) {
      double diff = 0.0, norm = 0.0;
      for (size_t i = h * hd; i < (h + 1) * hd; ++i) {
        diff += (double(a.out[i]) - exact_out_[i]) * (double(a.out[i]) - exact_out_[i]);
        norm += double(exact_out_[i]) * exact_out_[i];
      }
      const size_t at = a.pos * c_.n_heads + h;
      run_->rel_l2[a.layer][at] = static_cast<float>(std::sqrt(diff / norm));
      run_->log_z_error[a.layer][at] = std::fabs(a.diagnostics->log_z[h] - diagnostics_.log_z[h]);
      run_->summary_share[a.layer][at] = a.diagnostics->summary_share[h];
    }
    return true;
  }

 private:
  ModelConfig c_;
  MethodRun* run_;
  std::vector<std::unique_ptr<LayerAttention>> shadows_;
  std::vector<float> exact_out_;
  AttentionDiagnostics diagnostics_;
};

// One sequence through the model with one method.
struct Stream {
  explicit Stream(const Checkpoint& ck) : forward(ck), logits(ck.config.vocab_size) {}
  ForwardPass forward;
  std::vector<std::unique_ptr<LayerAttention>> attention;
  std::vector<LayerAttention*> layers;
  std::vector<float> logits;
  std::unique_ptr<LayerErrorObserver> layer_errors;
  ObserverList observers;
  MethodRun* run = nullptr;

  bool Build(const MethodSpec& spec, const ModelConfig& c, size_t n_tokens, std::string* error) {
    for (size_t l = 0; l < c.n_layers; ++l) {
      attention.push_back(CreateLayerAttention(spec, c, n_tokens, error));
      if (!attention.back()) return false;
      layers.push_back(attention.back().get());
    }
    return true;
  }

  bool Step(int32_t token, size_t pos, std::string* error) {
    StepTimes times;
    // The decodes' diagnostics (log Z, summary share) feed the layer errors.
    if (!forward.Step(token, pos, layers.data(), layer_errors != nullptr,
                      observers.empty() ? nullptr : &observers, logits.data(), &times, error)) {
      return false;
    }
    run->attention_seconds[pos] = times.attention_seconds;
    run->total_seconds[pos] = times.total_seconds;
    return true;
  }
};

void StartRun(const MethodSpec& spec, const ModelConfig& c, size_t n_tokens, MethodRun* run) {
  run->spec = spec;
  const size_t per_kv_head =
      spec.exact ? n_tokens * TokenBytes(c.head_dim()) : spec.persistent_bytes_per_kv_head;
  run->persistent_bytes_per_layer = per_kv_head * c.n_kv_heads;
  run->kl.assign(n_tokens, 0.0);
  run->top1_agree.assign(n_tokens, 0);
  run->nll.assign(n_tokens - 1, 0.0);
  run->attention_seconds.assign(n_tokens, 0.0);
  run->total_seconds.assign(n_tokens, 0.0);
}

bool CheckInputs(const Checkpoint& ck, const std::vector<int32_t>& tokens,
                 const EvalOptions& options, size_t* n_tokens, std::string* error) {
  const ModelConfig& c = ck.config;
  if (tokens.empty()) {
    *error = "no tokens to evaluate (sampling needs at least one token to start from)";
    return false;
  }
  if (!CheckTokens(tokens, c.vocab_size, "the token sequence", 0, error)) return false;
  *n_tokens = std::max(tokens.size(), options.n_tokens);
  if (*n_tokens > c.seq_len) {
    *error = std::to_string(*n_tokens) + " tokens exceed " + ck.path + "'s seq_len of " +
             std::to_string(c.seq_len) + " (the positions it was trained for)";
    return false;
  }
  return true;
}

// The metrics of one method at position pos against the reference's logits.
void Score(const Evaluation& e, const Stream& reference, size_t pos, Stream* s) {
  const size_t vocab = e.config.vocab_size;
  s->run->kl[pos] = KlDivergence(reference.logits.data(), s->logits.data(), vocab);
  s->run->top1_agree[pos] =
      Argmax(reference.logits.data(), vocab) == Argmax(s->logits.data(), vocab);
  if (pos + 1 < e.tokens.size()) {
    const double lse = LogSumExp(s->logits.data(), vocab);
    s->run->nll[pos] = lse - double(s->logits[static_cast<size_t>(e.tokens[pos + 1])]);
  }
}

}  // namespace

double KlDivergence(const float* logits_p, const float* logits_q, size_t n) {
  const double lse_p = LogSumExp(logits_p, n), lse_q = LogSumExp(logits_q, n);
  double kl = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double log_p = double(logits_p[i]) - lse_p, log_q = double(logits_q[i]) - lse_q;
    kl += std::exp(log_p) * (log_p - log_q);
  }
  return kl;
}

size_t Argmax(const float* logits, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

double Percentile(std::vector<double> values, double fraction) {
  if (values.empty()) return kNaN;
  const size_t rank = static_cast<size_t>(std::ceil(fraction * double(values.size())));
  const size_t index = std::min(values.size() - 1, rank == 0 ? 0 : rank - 1);
  std::nth_element(values.begin(), values.begin() + long(index), values.end());
  return values[index];
}

bool Evaluate(const Checkpoint& checkpoint, const std::vector<int32_t>& tokens,
              const std::vector<MethodSpec>& methods, const EvalOptions& options,
              Evaluation* evaluation, std::string* error) {
  const ModelConfig& c = checkpoint.config;
  size_t n_tokens = 0;
  if (!CheckInputs(checkpoint, tokens, options, &n_tokens, error)) return false;
  Evaluation& e = *evaluation;
  e = Evaluation();
  e.config = c;
  e.tokens = tokens;
  e.tokens.resize(n_tokens, 0);
  e.n_given = tokens.size();
  e.methods.resize(methods.size());

  MethodSpec exact;
  exact.key = exact.name = "exact";
  exact.exact = true;
  Stream reference(checkpoint);
  reference.run = &e.reference;
  StartRun(exact, c, n_tokens, &e.reference);
  if (!reference.Build(exact, c, n_tokens, error)) return false;
  std::unique_ptr<AttentionStatsObserver> stats;
  if (options.attention_stats) {
    stats.reset(new AttentionStatsObserver(c, n_tokens, options, &e));
    reference.observers.Add(stats.get());
  }
  QkvDumper dumper;
  if (!options.dump_qkv_dir.empty()) {
    if (!dumper.Open(options.dump_qkv_dir, c, n_tokens, error)) return false;
    reference.observers.Add(&dumper);
  }

  std::vector<std::unique_ptr<Stream>> streams;
  for (size_t m = 0; m < methods.size(); ++m) {
    streams.emplace_back(new Stream(checkpoint));
    Stream& s = *streams.back();
    s.run = &e.methods[m];
    StartRun(methods[m], c, n_tokens, s.run);
    if (!s.Build(methods[m], c, n_tokens, error)) return false;
    if (options.layer_errors) {
      s.layer_errors.reset(new LayerErrorObserver(c, n_tokens, s.run));
      if (!s.layer_errors->Init(n_tokens, error)) return false;
      s.observers.Add(s.layer_errors.get());
    }
  }

  SplitMix64 rng{options.seed};
  for (size_t pos = 0; pos < n_tokens; ++pos) {
    if (!reference.Step(e.tokens[pos], pos, error)) return false;
    if (pos + 1 < n_tokens && pos + 1 >= e.n_given) {
      e.tokens[pos + 1] = SampleToken(reference.logits.data(), c.vocab_size, &rng);
    }
    Score(e, reference, pos, &reference);
    for (auto& s : streams) {
      if (!s->Step(e.tokens[pos], pos, error)) {
        *error = s->run->spec.name + ": " + *error;
        return false;
      }
      Score(e, reference, pos, s.get());
    }
    if (options.progress) options.progress(pos + 1, n_tokens);
  }
  return options.dump_qkv_dir.empty() || dumper.Close(error);
}

MethodSummary Summarize(const Evaluation& e, const MethodRun& run, size_t begin, size_t end) {
  MethodSummary s;
  end = std::min(end, run.kl.size());
  begin = std::min(begin, end);
  s.positions = end - begin;
  if (s.positions == 0) return s;
  const std::vector<double> kl(run.kl.begin() + long(begin), run.kl.begin() + long(end));
  double kl_sum = 0, agree = 0, attention = 0, total = 0, nll = 0, nll_ref = 0;
  size_t n_nll = 0;
  for (size_t p = begin; p < end; ++p) {
    kl_sum += run.kl[p];
    agree += run.top1_agree[p];
    attention += run.attention_seconds[p];
    total += run.total_seconds[p];
    if (p < run.nll.size()) nll += run.nll[p], nll_ref += e.reference.nll[p], ++n_nll;
  }
  s.kl_mean = kl_sum / double(s.positions);
  s.kl_p95 = Percentile(kl, 0.95);
  s.kl_max = *std::max_element(kl.begin(), kl.end());
  s.top1_agreement = agree / double(s.positions);
  s.ppl_ratio = n_nll ? std::exp((nll - nll_ref) / double(n_nll)) : kNaN;
  s.attention_seconds_per_token = attention / double(s.positions);
  s.total_seconds_per_token = total / double(s.positions);
  const size_t heads = e.config.n_heads;
  for (size_t l = 0; l < run.rel_l2.size(); ++l) {
    LayerSummary layer;
    std::vector<double> rel, dz;
    layer.summary_share_mean.assign(heads, 0.0);
    for (size_t p = begin; p < end; ++p) {
      for (size_t h = 0; h < heads; ++h) {
        rel.push_back(run.rel_l2[l][p * heads + h]);
        dz.push_back(run.log_z_error[l][p * heads + h]);
        layer.summary_share_mean[h] += run.summary_share[l][p * heads + h] / double(s.positions);
      }
    }
    layer.rel_l2_median = Percentile(rel, 0.5);
    layer.rel_l2_max = Percentile(rel, 1.0);
    layer.log_z_error_median = Percentile(dz, 0.5);
    layer.log_z_error_max = Percentile(dz, 1.0);
    s.layers.push_back(layer);
  }
  return s;
}

AttentionSummary SummarizeAttention(const Evaluation& e, size_t begin, size_t end) {
  const size_t heads = e.config.n_heads;
  end = std::min(end, e.tokens.size());
  begin = std::min(begin, end);
  // Per layer and head, the mean of a series over the positions.
  auto means = [&](const LayerSeries& series) {
    std::vector<std::vector<double>> m(series.size(), std::vector<double>(heads, kNaN));
    for (size_t l = 0; l < series.size() && begin < end; ++l) {
      for (size_t h = 0; h < heads; ++h) {
        double sum = 0;
        for (size_t p = begin; p < end; ++p) sum += series[l][p * heads + h];
        m[l][h] = sum / double(end - begin);
      }
    }
    return m;
  };
  AttentionSummary s;
  s.score_std = means(e.score_std);
  s.max_weight = means(e.max_weight);
  for (const LayerSeries& mass : e.evicted_mass) s.evicted_mass.push_back(means(mass));
  return s;
}

}  // namespace covattn_model
