// The model evaluation (tools/model): the forward pass against a float64
// forward written here with a first-order bound on the f32 rounding, the
// metrics (exact against exact is KL 0; a cache that never evicts is exact),
// token sequences, sampling, and the --qkv dump read back with
// covattn-compare's reader and evaluated by it (model_files_test.cc has the
// checkpoint reader, token files and --model end to end).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "compare_test_util.h"
#include "model/checkpoint.h"
#include "model/evaluate.h"
#include "model/tokens.h"
#include "model/transformer.h"
#include "npy.h"
#include "test_util.h"

namespace {

using namespace covattn_model;
using covattn_compare_test::CheckpointBytes;
using covattn_compare_test::Contains;
using covattn_compare_test::HeaderBytes;
using covattn_compare_test::MakeCheckpoint;
using covattn_compare_test::RandomWeights;
using covattn_compare_test::ScratchDir;
using covattn_compare_test::Shape;
using covattn_test::kU;

// ---------------------------------------------------------------------------
// The float64 forward pass, independent of the library, with a bound e on
// |f32 - f64| per element carried through every step (first order, u =
// 2^-24):
//  - a dot product of n terms in 16 lanes then a 4-level tree has at most
//    ceil(n/16) + 5 roundings in any term's path: (ceil(n/16) + 5) u
//    sum |w x|; the input errors propagate as sum |w| e;
//  - RMSNorm: d y_i = w_i / r (d x_i - x_i sum_j x_j d x_j / (n r^2)),
//    plus 3 roundings of y;
//  - RoPE: |cos| e_a + |sin| e_b, plus 3 u (|a cos| + |b sin|) (the
//    rounded angles' cos and sin, the products, the sum);
//  - attention: the score error d s_j = scale (|q| . e_k + |k| . e_q)
//    moves output i by sum_j p_j (d s_j + mean d s) |v_ji - o_i|, the
//    values' errors by sum_j p_j e_v; the kernel's own rounding is the
//    bound of tests/test_util.h (ReferenceAttention);
//  - SwiGLU: |silu'(a)| |b| e_a + |silu(a)| e_b, plus 5 u |silu(a) b|
//    (exp, the sum, the division, the product);
//  - every sum of two vectors: e_x + e_y + u |x + y|.

struct Vec {
  std::vector<double> x, e;
  explicit Vec(size_t n = 0) : x(n, 0.0), e(n, 0.0) {}
};

class ReferenceModel {
 public:
  ReferenceModel(const Shape& s, const std::vector<float>& w) : s_(s) {
    const size_t d = size_t(s.dim), kv = size_t(s.kv_heads * s.head_dim()), L = size_t(s.layers);
    const size_t hidden = size_t(s.hidden), vocab = size_t(s.vocab);
    const float* p = w.data();
    auto take = [&](size_t n) {
      const float* at = p;
      p += n;
      return at;
    };
    emb_ = take(vocab * d);
    rms_att_ = take(L * d), wq_ = take(L * d * d), wk_ = take(L * kv * d);
    wv_ = take(L * kv * d), wo_ = take(L * d * d), rms_ffn_ = take(L * d);
    w1_ = take(L * hidden * d), w2_ = take(L * d * hidden), w3_ = take(L * hidden * d);
    rms_final_ = take(d);
    take(2 * size_t(s.seq_len) * size_t(s.head_dim() / 2));
    cls_ = s.shared ? emb_ : take(vocab * d);
    k_.assign(L, {}), v_.assign(L, {});
    scores_.assign(L, std::vector<std::vector<double>>(size_t(s.heads)));
    score_errors_ = scores_;
    q_.assign(L, Vec()), knew_.assign(L, Vec()), vnew_.assign(L, Vec());
  }

  // The logits (with bounds) of `token` at the next position.
  Vec Step(int32_t token) {
    const size_t d = size_t(s_.dim), hd = size_t(s_.head_dim()), kv = size_t(s_.kv_heads) * hd;
    const size_t hidden = size_t(s_.hidden);
    Vec x(d);
    for (size_t i = 0; i < d; ++i) x.x[i] = emb_[size_t(token) * d + i];
    for (size_t l = 0; l < size_t(s_.layers); ++l) {
      const Vec xb = RmsNorm(x, rms_att_ + l * d);
      Vec q = MatVec(wq_ + l * d * d, xb, d), k = MatVec(wk_ + l * kv * d, xb, kv);
      const Vec v = MatVec(wv_ + l * kv * d, xb, kv);
      Rope(&q), Rope(&k);
      q_[l] = q, knew_[l] = k, vnew_[l] = v;
      k_[l].push_back(k), v_[l].push_back(v);
      const Vec att = Attention(l, q);
      x = Add(x, MatVec(wo_ + l * d * d, att, d));
      const Vec xf = RmsNorm(x, rms_ffn_ + l * d);
      const Vec h1 = MatVec(w1_ + l * hidden * d, xf, hidden);
      const Vec h3 = MatVec(w3_ + l * hidden * d, xf, hidden);
      Vec g(hidden);
      for (size_t i = 0; i < hidden; ++i) {
        const double a = h1.x[i], sig = 1.0 / (1.0 + std::exp(-a)), silu = a * sig;
        const double dsilu = sig * (1.0 + a * (1.0 - sig));
        g.x[i] = silu * h3.x[i];
        g.e[i] = std::fabs(dsilu * h3.x[i]) * h1.e[i] + std::fabs(silu) * h3.e[i] +
                 5 * kU * std::fabs(g.x[i]);
      }
      x = Add(x, MatVec(w2_ + l * d * hidden, g, d));
    }
    ++pos_;
    return MatVec(cls_, RmsNorm(x, rms_final_), size_t(s_.vocab));
  }

  // The newest position's q, k, v of layer l (after RoPE), with bounds.
  const Vec& q(size_t l) const { return q_[l]; }
  const Vec& k(size_t l) const { return knew_[l]; }
  const Vec& v(size_t l) const { return vnew_[l]; }
  // The newest position's scores a.k_j of layer l, head h, and their bounds.
  const std::vector<double>& scores(size_t l, size_t h) const { return scores_[l][h]; }
  const std::vector<double>& score_errors(size_t l, size_t h) const { return score_errors_[l][h]; }

 private:
  Vec MatVec(const float* w, const Vec& x, size_t rows) const {
    const size_t n = x.x.size();
    const double rounding = double((n + 15) / 16 + 5) * kU;
    Vec y(rows);
    for (size_t r = 0; r < rows; ++r) {
      double sum = 0, abs_sum = 0, propagated = 0;
      for (size_t c = 0; c < n; ++c) {
        sum += double(w[r * n + c]) * x.x[c];
        abs_sum += std::fabs(double(w[r * n + c]) * x.x[c]);
        propagated += std::fabs(double(w[r * n + c])) * x.e[c];
      }
      y.x[r] = sum;
      y.e[r] = propagated + rounding * abs_sum;
    }
    return y;
  }

  static Vec Add(const Vec& a, const Vec& b) {
    Vec y(a.x.size());
    for (size_t i = 0; i < y.x.size(); ++i) {
      y.x[i] = a.x[i] + b.x[i];
      y.e[i] = a.e[i] + b.e[i] + kU * std::fabs(y.x[i]);
    }
    return y;
  }

  static Vec RmsNorm(const Vec& x, const float* w) {
    const size_t n = x.x.size();
    double squares = 0, weighted_error = 0;
    for (size_t i = 0; i < n; ++i) {
      squares += x.x[i] * x.x[i];
      weighted_error += std::fabs(x.x[i]) * x.e[i];
    }
    const double r2 = squares / double(n) + 1e-5, r = std::sqrt(r2);
    Vec y(n);
    for (size_t i = 0; i < n; ++i) {
      y.x[i] = w[i] * x.x[i] / r;
      y.e[i] =
          std::fabs(w[i]) / r * (x.e[i] + std::fabs(x.x[i]) * weighted_error / (double(n) * r2)) +
          3 * kU * std::fabs(y.x[i]);
    }
    return y;
  }

  void Rope(Vec* x) const {
    const size_t hd = size_t(s_.head_dim());
    for (size_t base = 0; base < x->x.size(); base += hd) {
      for (size_t i = 0; i < hd / 2; ++i) {
        const double angle = double(pos_) * std::pow(10000.0, -double(2 * i) / double(hd));
        const double c = std::cos(angle), s = std::sin(angle);
        const size_t i0 = base + 2 * i, i1 = i0 + 1;
        const double a = x->x[i0], b = x->x[i1], ea = x->e[i0], eb = x->e[i1];
        const double rounding = 3 * kU * (std::fabs(a * c) + std::fabs(b * s));
        const double rounding1 = 3 * kU * (std::fabs(a * s) + std::fabs(b * c));
        x->x[i0] = a * c - b * s;
        x->x[i1] = a * s + b * c;
        x->e[i0] = std::fabs(c) * ea + std::fabs(s) * eb + rounding;
        x->e[i1] = std::fabs(s) * ea + std::fabs(c) * eb + rounding1;
      }
    }
  }

  Vec Attention(size_t l, const Vec& q) const {
    const size_t hd = size_t(s_.head_dim()), group = size_t(s_.heads / s_.kv_heads);
    const size_t n = k_[l].size();
    const double scale = 1.0 / std::sqrt(double(hd)), sqrt_n = std::sqrt(double(n));
    Vec out(q.x.size());
    for (size_t h = 0; h < size_t(s_.heads); ++h) {
      const size_t qo = h * hd, ko = (h / group) * hd;
      std::vector<double> s(n), ds(n), eps(n), p(n);
      for (size_t j = 0; j < n; ++j) {
        double dot = 0, abs_dot = 0, err = 0;
        for (size_t i = 0; i < hd; ++i) {
          const double qi = q.x[qo + i], ki = k_[l][j].x[ko + i];
          dot += qi * ki;
          abs_dot += std::fabs(qi * ki);
          err += std::fabs(qi) * k_[l][j].e[ko + i] + std::fabs(ki) * q.e[qo + i];
        }
        s[j] = scale * dot;
        ds[j] = scale * err;

        eps[j] = (hd + 2) * kU * scale * abs_dot;  // before the |s - m| term, added below
      }
      scores_[l][h] = s, score_errors_[l][h] = ds;
      const double m = *std::max_element(s.begin(), s.end());
      double z = 0, mean_ds = 0;
      for (size_t j = 0; j < n; ++j) z += (p[j] = std::exp(s[j] - m));
      for (size_t j = 0; j < n; ++j) {
        p[j] /= z;
        mean_ds += p[j] * ds[j];
        eps[j] += kU * std::fabs(s[j] - m) + 4 * kU;
      }
      for (size_t i = 0; i < hd; ++i) {
        double o = 0, abs_mean = 0;
        for (size_t j = 0; j < n; ++j) {
          o += p[j] * v_[l][j].x[ko + i];
          abs_mean += p[j] * std::fabs(v_[l][j].x[ko + i]);
        }
        double bound = 2 * 4 * kU * sqrt_n * abs_mean + 2 * kU * std::fabs(o);
        for (size_t j = 0; j < n; ++j) {
          const double spread = std::fabs(v_[l][j].x[ko + i] - o);
          bound += p[j] * ((ds[j] + mean_ds + eps[j]) * spread + v_[l][j].e[ko + i]);
        }
        out.x[qo + i] = o;
        out.e[qo + i] = bound;
      }
    }
    return out;
  }

  Shape s_;
  const float *emb_, *rms_att_, *wq_, *wk_, *wv_, *wo_, *rms_ffn_, *w1_, *w2_, *w3_, *rms_final_,
      *cls_;
  size_t pos_ = 0;
  std::vector<std::vector<Vec>> k_, v_;  // per layer, per token
  std::vector<Vec> q_, knew_, vnew_;     // per layer, the newest position
  mutable std::vector<std::vector<std::vector<double>>> scores_, score_errors_;  // [layer][head]
};

std::vector<int32_t> RandomTokens(size_t n, int32_t vocab, uint64_t seed) {
  covattn_test::Rng rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng.Uniform(0, vocab)) % vocab;
  return t;
}

// Checks f32 values against a reference within its bound; reports the worst.
void CheckWithinBound(const float* got, const Vec& ref, const std::string& what) {
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < ref.x.size(); ++i) {
    const double ratio = std::fabs(got[i] - ref.x[i]) / (ref.e[i] + 1e-30);
    if (!(ratio <= worst)) worst = ratio, at = i;
  }
  INFO(what << ": element " << at << " is " << got[at] << ", f64 " << ref.x[at] << ", bound "
            << ref.e[at] << " (worst ratio " << worst << ")");
  CHECK(worst <= 1.0);
}

// Records every layer's q, k, v as the library's forward pass sees them.
class Recorder : public StepObserver {
 public:
  explicit Recorder(const ModelConfig& c) : c_(c), q_(c.n_layers), k_(c.n_layers), v_(c.n_layers) {}
  bool OnLayer(const LayerActivations& a, std::string*) override {
    q_[a.layer].assign(a.q, a.q + c_.dim);
    k_[a.layer].assign(a.k, a.k + c_.kv_dim());
    v_[a.layer].assign(a.v, a.v + c_.kv_dim());
    return true;
  }
  ModelConfig c_;
  std::vector<std::vector<float>> q_, k_, v_;
};

MethodSpec ExactSpec() {
  MethodSpec spec;
  spec.key = spec.name = "exact";
  spec.exact = true;
  return spec;
}

MethodSpec CacheSpec(size_t sinks, size_t window, size_t outliers, uint32_t flags) {
  MethodSpec spec;
  spec.key = spec.name = "cache";
  spec.cache.dtype = COVATTN_F32;
  spec.cache.n_sinks = sinks;
  spec.cache.window = window;
  spec.cache.n_outliers = outliers;
  spec.cache.forgetting = 1.0f;
  spec.cache.flags = flags;
  return spec;
}

}  // namespace

// ---------------------------------------------------------------------------

TEST_CASE("forward pass matches a float64 forward within the f32 rounding bound") {
  for (bool shared : {true, false}) {
    Shape s;
    s.shared = shared;
    const std::vector<float> weights = RandomWeights(s, shared ? 11 : 12);
    const Checkpoint ck = MakeCheckpoint(s, weights);
    REQUIRE(ck.config.shared_classifier == shared);
    const std::vector<int32_t> tokens = RandomTokens(size_t(s.seq_len), s.vocab, 5);
    covattn_test::ForEachTarget([&] {
      INFO((shared ? "shared" : "separate") << " classifier");
      ForwardPass forward(ck);
      ReferenceModel reference(s, weights);
      std::vector<std::unique_ptr<LayerAttention>> attention;
      std::vector<LayerAttention*> layers;
      std::string error;
      for (int l = 0; l < s.layers; ++l) {
        attention.push_back(CreateLayerAttention(ExactSpec(), ck.config, tokens.size(), &error));
        REQUIRE(attention.back());
        layers.push_back(attention.back().get());
      }
      Recorder recorder(ck.config);
      std::vector<float> logits(size_t(s.vocab));
      for (size_t pos = 0; pos < tokens.size(); ++pos) {
        REQUIRE_MESSAGE(forward.Step(tokens[pos], pos, layers.data(), false, &recorder,
                                     logits.data(), nullptr, &error),
                        error);
        const Vec ref = reference.Step(tokens[pos]);
        INFO("position " << pos);
        for (int l = 0; l < s.layers; ++l) {
          CheckWithinBound(recorder.q_[size_t(l)].data(), reference.q(size_t(l)), "q");
          CheckWithinBound(recorder.k_[size_t(l)].data(), reference.k(size_t(l)), "k");
          CheckWithinBound(recorder.v_[size_t(l)].data(), reference.v(size_t(l)), "v");
        }
        CheckWithinBound(logits.data(), ref, "logits");
      }
    });
  }
}

TEST_CASE("exact against exact: KL 0, top-1 agreement 1, perplexity ratio 1") {
  Shape s;
  const std::vector<float> weights = RandomWeights(s, 21);
  const Checkpoint ck = MakeCheckpoint(s, weights);
  const std::vector<int32_t> tokens = RandomTokens(48, s.vocab, 6);
  Evaluation e;
  std::string error;
  REQUIRE_MESSAGE(Evaluate(ck, tokens, {ExactSpec()}, EvalOptions(), &e, &error), error);
  REQUIRE(e.methods.size() == 1);
  const MethodSummary sum = Summarize(e, e.methods[0], 0, SIZE_MAX);
  CHECK(sum.positions == tokens.size());
  CHECK(sum.kl_mean == 0.0);
  CHECK(sum.kl_max == 0.0);
  CHECK(sum.top1_agreement == 1.0);
  CHECK(sum.ppl_ratio == 1.0);
  for (const LayerSummary& layer : sum.layers) {
    CHECK(layer.rel_l2_max == 0.0);
    CHECK(layer.log_z_error_max == 0.0);
  }
  // The reference's NLL is that of the float64 forward (within twice the
  // logits' bound: the log-sum-exp moves by at most the largest shift).
  ReferenceModel reference(s, weights);
  for (size_t p = 0; p + 1 < tokens.size(); ++p) {
    const Vec ref = reference.Step(tokens[p]);
    double m = -1e300, z = 0;
    for (double x : ref.x) m = std::max(m, x);
    for (double x : ref.x) z += std::exp(x - m);
    const double nll = m + std::log(z) - ref.x[size_t(tokens[p + 1])];
    const double bound = 2 * *std::max_element(ref.e.begin(), ref.e.end()) + 1e-12;
    INFO("position " << p);
    CHECK(std::fabs(e.reference.nll[p] - nll) <= bound);
  }
  CHECK(e.methods[0].persistent_bytes_per_layer == 48 * TokenBytes(8) * 2);
}

TEST_CASE("the reference's attention statistics are those of the float64 forward") {
  Shape s;
  const std::vector<float> weights = RandomWeights(s, 25);
  const Checkpoint ck = MakeCheckpoint(s, weights);
  const std::vector<int32_t> tokens = RandomTokens(size_t(s.seq_len), s.vocab, 9);
  EvalOptions options;
  options.evicted_windows = {1, 8, 30};
  options.stats_sinks = 3;
  Evaluation e;
  std::string error;
  REQUIRE_MESSAGE(Evaluate(ck, tokens, {}, options, &e, &error), error);
  REQUIRE(e.evicted_mass.size() == 3);
  ReferenceModel reference(s, weights);
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    reference.Step(tokens[pos]);
    for (size_t l = 0; l < 2; ++l) {
      for (size_t h = 0; h < 4; ++h) {
        INFO("position " << pos << ", layer " << l << ", head " << h);
        const std::vector<double>& sc = reference.scores(l, h);
        // The scores move by at most D, so the std by at most D, and every
        // softmax weight by a factor within e^(+-2D); then f32 storage.
        const std::vector<double>& err = reference.score_errors(l, h);
        const double d = *std::max_element(err.begin(), err.end());
        const double factor = std::expm1(2 * d) + 2 * kU;
        double mean = 0, m = -1e300, z = 0, var = 0;
        for (double x : sc) mean += x / double(sc.size()), m = std::max(m, x);
        for (double x : sc)
          var += (x - mean) * (x - mean) / double(sc.size()), z += std::exp(x - m);
        const size_t at = pos * 4 + h;
        CHECK(std::fabs(e.score_std[l][at] - std::sqrt(var)) <= d + 2 * kU * std::sqrt(var));
        CHECK(std::fabs(e.max_weight[l][at] - 1 / z) <= factor / z);
        for (size_t w = 0; w < 3; ++w) {
          double evicted = 0;
          for (size_t j = 3; j + options.evicted_windows[w] <= pos; ++j)
            evicted += std::exp(sc[j] - m) / z;
          CHECK(std::fabs(e.evicted_mass[w][l][at] - evicted) <= factor * evicted);
        }
      }
    }
  }
  const AttentionSummary sum = SummarizeAttention(e, 32, SIZE_MAX);
  // With a window of one token everything but the sinks and the newest token
  // is evicted; a longer window evicts less.
  for (size_t l = 0; l < 2; ++l) {
    for (size_t h = 0; h < 4; ++h) {
      CHECK(sum.evicted_mass[0][l][h] > sum.evicted_mass[1][l][h]);
      CHECK(sum.evicted_mass[1][l][h] > sum.evicted_mass[2][l][h]);
      CHECK(sum.max_weight[l][h] > 1.0 / 32);
      CHECK(sum.score_std[l][h] > 0.5);
    }
  }
}

TEST_CASE("a bounded cache that never evicts is exact attention; one that does is not") {
  Shape s;
  const std::vector<float> weights = RandomWeights(s, 31);
  const Checkpoint ck = MakeCheckpoint(s, weights);
  const std::vector<int32_t> tokens = RandomTokens(size_t(s.seq_len), s.vocab, 7);
  // Both runs are within the f64 bound of the same forward, so their logits
  // differ by at most d = twice the bound, and KL is second order in that.
  ReferenceModel reference(s, weights);
  std::vector<double> kl_bound;
  for (int32_t t : tokens) {
    const Vec ref = reference.Step(t);
    const double d = 2 * *std::max_element(ref.e.begin(), ref.e.end());
    // KL ~ Var_p(d logit) / 2 <= d^2 / 2; 1e-15 for the KL's own rounding.
    kl_bound.push_back(0.5 * d * d * (1 + d) + 1e-15);
  }
  const std::vector<MethodSpec> methods = {CacheSpec(4, 100, 0, 0),
                                           CacheSpec(4, 100, 0, COVATTN_CACHE_DROP_EVICTED),
                                           CacheSpec(4, 100, 8, 0), CacheSpec(2, 8, 0, 0),
                                           CacheSpec(2, 8, 0, COVATTN_CACHE_DROP_EVICTED)};
  covattn_test::ForEachTarget([&] {
    Evaluation e;
    std::string error;
    REQUIRE_MESSAGE(Evaluate(ck, tokens, methods, EvalOptions(), &e, &error), error);
    for (size_t m = 0; m < 3; ++m) {
      INFO("method " << m);
      const MethodSummary sum = Summarize(e, e.methods[m], 0, SIZE_MAX);
      CHECK(sum.top1_agreement == 1.0);
      for (size_t p = 0; p < tokens.size(); ++p) {
        INFO("position " << p);
        CHECK(e.methods[m].kl[p] <= kl_bound[p]);
      }
      for (const LayerSummary& layer : sum.layers) CHECK(layer.rel_l2_max < 1e-5);
    }
    // 10 exact tokens of 64: the summary or the dropping shows.
    for (size_t m = 3; m < 5; ++m) {
      const MethodSummary sum = Summarize(e, e.methods[m], 16, SIZE_MAX);
      CHECK(sum.kl_mean > 1e-4);
      CHECK(sum.layers[0].rel_l2_median > 1e-3);
      for (double share : sum.layers[0].summary_share_mean) {
        if (m == 3) CHECK((share > 0.0 && share < 1.0));
        if (m == 4) CHECK(std::isnan(share));  // no summary, no share
      }
    }
  });
}

TEST_CASE("evaluation refuses bad token sequences before running") {
  Shape s;
  const Checkpoint ck = MakeCheckpoint(s, RandomWeights(s, 51));
  Evaluation e;
  std::string error;
  CHECK_FALSE(Evaluate(ck, {1, 2, 40, 3}, {ExactSpec()}, EvalOptions(), &e, &error));
  CHECK(error == "the token sequence: token 40 at position 2 is outside the vocabulary [0, 40)");
  CHECK_FALSE(Evaluate(ck, {1, -2}, {ExactSpec()}, EvalOptions(), &e, &error));
  CHECK(Contains(error, "token -2 at position 1"));
  CHECK_FALSE(Evaluate(ck, {}, {ExactSpec()}, EvalOptions(), &e, &error));
  CHECK(Contains(error, "no tokens"));
  CHECK_FALSE(Evaluate(ck, RandomTokens(65, s.vocab, 1), {}, EvalOptions(), &e, &error));
  CHECK(Contains(error, "65 tokens exceed test.bin's seq_len of 64"));
  // A cache configuration the library refuses is named.
  MethodSpec broken = CacheSpec(0, 0, 4, COVATTN_CACHE_DROP_EVICTED);
  broken.name = "broken";
  CHECK_FALSE(Evaluate(ck, {1, 2}, {broken}, EvalOptions(), &e, &error));
  CHECK(Contains(error, "broken: covattn_cache_create failed"));
}

TEST_CASE("sampling continues the given tokens from the exact model, reproducibly") {
  Shape s;
  const Checkpoint ck = MakeCheckpoint(s, RandomWeights(s, 61));
  EvalOptions options;
  options.n_tokens = 40;
  options.seed = 9;
  Evaluation a, b, c;
  std::string error;
  REQUIRE_MESSAGE(Evaluate(ck, {3, 5}, {ExactSpec()}, options, &a, &error), error);
  REQUIRE(Evaluate(ck, {3, 5}, {}, options, &b, &error));
  options.seed = 10;
  REQUIRE(Evaluate(ck, {3, 5}, {}, options, &c, &error));
  REQUIRE(a.tokens.size() == 40);
  CHECK(a.n_given == 2);
  CHECK(a.tokens[0] == 3);
  CHECK(a.tokens[1] == 5);
  CHECK(a.tokens == b.tokens);
  CHECK(a.tokens != c.tokens);
  for (int32_t t : a.tokens) CHECK((t >= 0 && t < s.vocab));
  // The sampled tokens are likely under the model: their mean NLL is below
  // that of a uniform guess (log 40).
  double nll = 0;
  for (size_t p = 1; p < a.reference.nll.size(); ++p) nll += a.reference.nll[p];
  CHECK(nll / double(a.reference.nll.size() - 1) < std::log(40.0));
  CHECK(Summarize(a, a.methods[0], 0, SIZE_MAX).kl_max == 0.0);
}

// ---------------------------------------------------------------------------
// The --qkv dump, read back with covattn-compare's reader.

TEST_CASE("dump-qkv writes layer<N>_{q,k,v}.npy as covattn-compare --qkv reads them") {
  Shape s;
  const std::vector<float> weights = RandomWeights(s, 71);
  const Checkpoint ck = MakeCheckpoint(s, weights);
  const std::vector<int32_t> tokens = RandomTokens(20, s.vocab, 8);
  ScratchDir dir;
  EvalOptions options;
  options.dump_qkv_dir = (dir.path() / "dump").string();
  Evaluation e;
  std::string error;
  REQUIRE_MESSAGE(Evaluate(ck, tokens, {}, options, &e, &error), error);

  std::vector<std::vector<Vec>> q(2), k(2), v(2);  // the f64 forward's, per layer and token
  ReferenceModel reference(s, weights);
  for (int32_t t : tokens) {
    reference.Step(t);
    for (size_t l = 0; l < 2; ++l) {
      q[l].push_back(reference.q(l)), k[l].push_back(reference.k(l));
      v[l].push_back(reference.v(l));
    }
  }
  for (size_t l = 0; l < 2; ++l) {
    const struct {
      char which;
      size_t heads;
      const std::vector<Vec>& ref;
    } files[] = {{'q', 4, q[l]}, {'k', 2, k[l]}, {'v', 2, v[l]}};
    for (const auto& f : files) {
      const std::string path =
          (dir.path() / "dump" / ("layer" + std::to_string(l) + "_" + f.which + ".npy")).string();
      INFO(path);
      covattn_compare::NpyArray array;
      covattn_compare::NpyError npy_error;
      REQUIRE_MESSAGE(covattn_compare::ReadNpy(path, {}, &array, &npy_error), npy_error.message);
      CHECK(array.descr == "<f4");
      CHECK(array.shape == std::vector<size_t>{20, f.heads, 8});
      for (size_t t = 0; t < 20; ++t) {
        CheckWithinBound(array.data.data() + t * f.heads * 8, f.ref[t],
                         "token " + std::to_string(t));
      }
    }
  }
  // Files covattn-compare would mix with a dump are refused.
  covattn_compare_test::WriteBytes((dir.path() / "dump" / "layer7_q.npy").string(), "x");
  CHECK_FALSE(Evaluate(ck, tokens, {}, options, &e, &error));
  CHECK(Contains(error, "layer7_q.npy: already there"));
}

TEST_CASE("covattn-compare --qkv on a dump reproduces the model's layer-0 errors") {
  // Layer 0's q, k, v depend on the tokens only, so a method's layer-0
  // errors inside the model (against exact attention in f32) are --qkv's on
  // the exact model's dump (against float64 attention).
  Shape s;
  const Checkpoint ck = MakeCheckpoint(s, RandomWeights(s, 72));
  const std::vector<int32_t> tokens = RandomTokens(48, s.vocab, 9);
  ScratchDir dir;
  EvalOptions options;
  options.dump_qkv_dir = dir.File("dump");
  Evaluation e;
  std::string error;
  REQUIRE_MESSAGE(Evaluate(ck, tokens, {CacheSpec(2, 14, 0, 0)}, options, &e, &error), error);
  const covattn_compare_test::RunResult r = covattn_compare_test::Run({"--qkv",
                                                                       dir.File("dump"),
                                                                       "--methods",
                                                                       "hybrid",
                                                                       "--budget",
                                                                       "16",
                                                                       "--sinks",
                                                                       "2",
                                                                       "--positions",
                                                                       "48",
                                                                       "--min-context",
                                                                       "1",
                                                                       "--samples",
                                                                       "1",
                                                                       "--min-time",
                                                                       "0.01",
                                                                       "--quiet",
                                                                       "--csv",
                                                                       dir.File("qkv.csv"),
                                                                       "--json",
                                                                       dir.File("qkv.json"),
                                                                       "--svg",
                                                                       dir.File("qkv.svg")});
  INFO(r.err);
  REQUIRE(r.status == 0);
  const auto rows =
      covattn_compare_test::ParseCsv(covattn_compare_test::ReadBytes(dir.File("qkv.csv")));
  const std::vector<std::string>& header = rows[0];
  auto column = [&](const char* name) {
    return size_t(std::find(header.begin(), header.end(), name) - header.begin());
  };
  const size_t layer = column("layer"), context = column("context"), rel = column("rel_l2_median"),
               dz = column("log_z_error_median");
  // The median over the query heads at a position, as --qkv takes it.
  auto median = [&](const LayerSeries& series, size_t pos) {
    std::vector<double> v(series[0].begin() + long(pos * 4), series[0].begin() + long(pos * 4 + 4));
    std::sort(v.begin(), v.end());
    return 0.5 * (v[1] + v[2]);
  };
  size_t compared = 0, evicting = 0;
  for (size_t i = 1; i < rows.size(); ++i) {
    if (rows[i][layer] != "0") continue;
    const size_t pos = std::stoul(rows[i][context]) - 1;
    INFO("position " << pos);
    const double model_rel = median(e.methods[0].rel_l2, pos);
    const double model_dz = median(e.methods[0].log_z_error, pos);
    // f32 exact against float64 differs by a few 1e-7 (the f32 floor).
    const double qkv_rel = std::stod(rows[i][rel]), qkv_dz = std::stod(rows[i][dz]);
    INFO("rel L2 " << qkv_rel << " against " << model_rel << ", |dlog Z| " << qkv_dz << " against "
                   << model_dz);
    CHECK(std::fabs(qkv_rel - model_rel) <= 2e-6 + 1e-3 * model_rel);
    CHECK(std::fabs(qkv_dz - model_dz) <= 2e-6 + 1e-3 * model_dz);
    ++compared;
    evicting += model_rel > 1e-3;
  }
  CHECK(compared >= 25);  // log-spaced positions, the repeats removed
  CHECK(evicting > 10);   // the comparison is not only of exact figures
}
