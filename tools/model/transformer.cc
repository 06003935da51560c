#include "transformer.h"

#include <chrono>
#include <cmath>
#include <limits>

namespace covattn_model {
namespace {

constexpr double kRmsNormEps = 1e-5;
constexpr double kRopeTheta = 10000.0;

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Independent partial sums in fixed lanes: the compiler vectorises the lane
// loop without reassociating anything (no -ffast-math needed).
float Dot(const float* a, const float* b, size_t n) {
  constexpr size_t kLanes = 16;
  float acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) acc[l] += a[i + l] * b[i + l];
  }
  for (size_t l = 0; i < n; ++i, ++l) acc[l] += a[i] * b[i];
  for (size_t width = kLanes / 2; width > 0; width /= 2) {
    for (size_t l = 0; l < width; ++l) acc[l] += acc[l + width];
  }
  return acc[0];
}

void RmsNorm(const float* x, const float* weight, size_t n, float* out) {
  double sum_squares = 0.0;
  for (size_t i = 0; i < n; ++i) sum_squares += double(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(sum_squares / double(n) + kRmsNormEps));
  for (size_t i = 0; i < n; ++i) out[i] = weight[i] * (inv * x[i]);
}

// Rotates each head's pairs (2i, 2i+1) by the position's angles.
void Rope(const float* cos, const float* sin, size_t n_heads, size_t head_dim, float* x) {
  for (size_t h = 0; h < n_heads; ++h) {
    float* p = x + h * head_dim;
    for (size_t i = 0; i < head_dim / 2; ++i) {
      const float a = p[2 * i], b = p[2 * i + 1];
      p[2 * i] = a * cos[i] - b * sin[i];
      p[2 * i + 1] = a * sin[i] + b * cos[i];
    }
  }
}

}  // namespace

void MatVec(const float* w, const float* x, size_t rows, size_t cols, float* y) {
  for (size_t r = 0; r < rows; ++r) y[r] = Dot(w + r * cols, x, cols);
}

ForwardPass::ForwardPass(const Checkpoint& checkpoint) : ck_(checkpoint) {
  const ModelConfig& c = ck_.config;
  const size_t half = c.head_dim() / 2;
  inverse_frequency_.resize(half);
  for (size_t i = 0; i < half; ++i) {
    inverse_frequency_[i] = std::pow(kRopeTheta, -double(2 * i) / double(c.head_dim()));
  }
  cos_.resize(half);
  sin_.resize(half);
  for (auto* v : {&x_, &xb_, &xb2_, &q_, &att_}) v->resize(c.dim);
  k_.resize(c.kv_dim());
  v_.resize(c.kv_dim());
  hb_.resize(c.hidden_dim);
  hb2_.resize(c.hidden_dim);
  diagnostics_.log_z.resize(c.n_heads);
  diagnostics_.summary_share.resize(c.n_heads);
}

bool ForwardPass::Attend(size_t l, size_t pos, LayerAttention* attention, bool want_diagnostics,
                         StepObserver* observer, double* attention_seconds,
                         double* observer_seconds, std::string* error) {
  const ModelConfig& c = ck_.config;
  const size_t dim = c.dim, kv_dim = c.kv_dim();
  const LayerWeights& w = ck_.layers[l];
  RmsNorm(x_.data(), w.rms_att, dim, xb_.data());
  MatVec(w.wq, xb_.data(), dim, dim, q_.data());
  MatVec(w.wk, xb_.data(), kv_dim, dim, k_.data());
  MatVec(w.wv, xb_.data(), kv_dim, dim, v_.data());
  Rope(cos_.data(), sin_.data(), c.n_heads, c.head_dim(), q_.data());
  Rope(cos_.data(), sin_.data(), c.n_kv_heads, c.head_dim(), k_.data());

  AttentionDiagnostics* diagnostics = want_diagnostics ? &diagnostics_ : nullptr;
  if (diagnostics) {
    diagnostics->log_z.assign(c.n_heads, std::numeric_limits<float>::quiet_NaN());
    diagnostics->summary_share.assign(c.n_heads, std::numeric_limits<float>::quiet_NaN());
  }
  const auto attention_start = Clock::now();
  if (!attention->Append(k_.data(), v_.data(), error) ||
      !attention->Decode(q_.data(), att_.data(), diagnostics, error)) {
    *error = "layer " + std::to_string(l) + ", position " + std::to_string(pos) + ": " + *error;
    return false;
  }
  const auto attention_end = Clock::now();
  *attention_seconds += Seconds(attention_start, attention_end);
  if (observer) {
    const LayerActivations a{l, pos, q_.data(), k_.data(), v_.data(), att_.data(), diagnostics};
    if (!observer->OnLayer(a, error)) return false;
    *observer_seconds += Seconds(attention_end, Clock::now());
  }
  MatVec(w.wo, att_.data(), dim, dim, xb2_.data());
  for (size_t i = 0; i < dim; ++i) x_[i] += xb2_[i];
  return true;
}

void ForwardPass::FeedForward(size_t l) {
  const size_t dim = ck_.config.dim, hidden = ck_.config.hidden_dim;
  const LayerWeights& w = ck_.layers[l];
  RmsNorm(x_.data(), w.rms_ffn, dim, xb_.data());
  MatVec(w.w1, xb_.data(), hidden, dim, hb_.data());
  MatVec(w.w3, xb_.data(), hidden, dim, hb2_.data());
  for (size_t i = 0; i < hidden; ++i) {
    const float a = hb_[i];
    hb_[i] = a / (1.0f + std::exp(-a)) * hb2_[i];  // silu(w1 x) * w3 x
  }
  MatVec(w.w2, hb_.data(), dim, hidden, xb_.data());
  for (size_t i = 0; i < dim; ++i) x_[i] += xb_[i];
}

bool ForwardPass::Step(int32_t token, size_t pos, LayerAttention* const* attention,
                       bool want_diagnostics, StepObserver* observer, float* logits,
                       StepTimes* times, std::string* error) {
  const auto start = Clock::now();
  const ModelConfig& c = ck_.config;
  if (token < 0 || static_cast<size_t>(token) >= c.vocab_size) {
    *error = "token " + std::to_string(token) + " at position " + std::to_string(pos) +
             " is outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")";
    return false;
  }
  for (size_t i = 0; i < cos_.size(); ++i) {
    const double angle = double(pos) * inverse_frequency_[i];
    cos_[i] = static_cast<float>(std::cos(angle));
    sin_[i] = static_cast<float>(std::sin(angle));
  }
  const float* embedding = ck_.token_embedding + static_cast<size_t>(token) * c.dim;
  x_.assign(embedding, embedding + c.dim);
  double attention_seconds = 0.0, observer_seconds = 0.0;
  for (size_t l = 0; l < c.n_layers; ++l) {
    if (!Attend(l, pos, attention[l], want_diagnostics, observer, &attention_seconds,
                &observer_seconds, error)) {
      return false;
    }
    FeedForward(l);
  }
  RmsNorm(x_.data(), ck_.rms_final, c.dim, xb_.data());
  MatVec(ck_.classifier, xb_.data(), c.vocab_size, c.dim, logits);
  if (times) {
    times->attention_seconds = attention_seconds;
    times->total_seconds = Seconds(start, Clock::now()) - observer_seconds;
  }
  return true;
}

}  // namespace covattn_model
