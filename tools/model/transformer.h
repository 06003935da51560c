// The forward pass of a llama2.c checkpoint, one token at a time, as run.c
// computes it: RMSNorm (eps 1e-5), RoPE on interleaved pairs (dims 2i, 2i+1
// of each head rotated by pos * 10000^(-2i/head_dim)), grouped-query
// attention with scale 1/sqrt(head_dim), SwiGLU FFN (w2 (silu(w1 x) * w3 x)),
// final RMSNorm, classifier. Projections are plain f32 matrix-vector
// products (angles and RMSNorm sums in double).
//
// Attention is pluggable per layer (LayerAttention): at each position a layer
// appends the post-RoPE keys and values of its KV heads, then decodes its
// queries against what the attention keeps. An observer sees every layer's
// q, k, v and attention output (untimed), for metrics and dumps.
#ifndef COVATTN_TOOLS_MODEL_TRANSFORMER_H_
#define COVATTN_TOOLS_MODEL_TRANSFORMER_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint.h"

namespace covattn_model {

// Per query head, optional outputs of a decode; NaN where a method has no
// such figure.
struct AttentionDiagnostics {
  std::vector<float> log_z;          // [n_heads] log of the softmax normaliser
  std::vector<float> summary_share;  // [n_heads] share of the mass in a summary
};

// The attention of one layer for one method.
class LayerAttention {
 public:
  virtual ~LayerAttention() = default;
  // k and v: [n_kv_heads][head_dim] of the newest token.
  virtual bool Append(const float* k, const float* v, std::string* error) = 0;
  // q and out: [n_heads][head_dim]; the newest token attends to what the
  // method keeps. diagnostics may be null (the fast path).
  virtual bool Decode(const float* q, float* out, AttentionDiagnostics* diagnostics,
                      std::string* error) = 0;
};

// What an observer is shown after each layer's attention.
struct LayerActivations {
  size_t layer = 0, pos = 0;
  const float* q = nullptr;                           // [n_heads][head_dim], after RoPE
  const float* k = nullptr;                           // [n_kv_heads][head_dim], after RoPE
  const float* v = nullptr;                           // [n_kv_heads][head_dim]
  const float* out = nullptr;                         // [n_heads][head_dim], the attention output
  const AttentionDiagnostics* diagnostics = nullptr;  // null unless asked for
};

class StepObserver {
 public:
  virtual ~StepObserver() = default;
  virtual bool OnLayer(const LayerActivations& activations, std::string* error) = 0;
};

struct StepTimes {
  double attention_seconds = 0.0;  // the layers' Append + Decode
  double total_seconds = 0.0;      // the whole step, observer excluded
};

// Activations of one sequence through the model (one per method compared).
class ForwardPass {
 public:
  explicit ForwardPass(const Checkpoint& checkpoint);

  // Runs `token` at position `pos` (0, 1, 2, ... in order, the same sequence
  // for every attention) through the layers, attention[l] for layer l, and
  // writes the logits [vocab_size]. With want_diagnostics the decodes fill
  // AttentionDiagnostics for the observer. times may be null.
  bool Step(int32_t token, size_t pos, LayerAttention* const* attention, bool want_diagnostics,
            StepObserver* observer, float* logits, StepTimes* times, std::string* error);

 private:
  // The attention half of layer l (norm, q/k/v, RoPE, attention, wo, residual).
  bool Attend(size_t l, size_t pos, LayerAttention* attention, bool want_diagnostics,
              StepObserver* observer, double* attention_seconds, double* observer_seconds,
              std::string* error);
  // The FFN half of layer l (norm, SwiGLU, residual).
  void FeedForward(size_t l);

  const Checkpoint& ck_;
  std::vector<double> inverse_frequency_;  // [head_dim / 2]
  std::vector<float> cos_, sin_;           // [head_dim / 2] at the current position
  std::vector<float> x_, xb_, xb2_, q_, k_, v_, att_, hb_, hb2_;
  AttentionDiagnostics diagnostics_;
};

// y[r] = sum_c w[r][c] x[c] for r < rows (w row-major, rows x cols).
void MatVec(const float* w, const float* x, size_t rows, size_t cols, float* y);

}  // namespace covattn_model

#endif  // COVATTN_TOOLS_MODEL_TRANSFORMER_H_
