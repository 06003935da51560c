// Writes a model's attention activations in the layout covattn-compare
// --qkv reads (docs/compare.md): DIR/layer<N>_q.npy [tokens, n_heads,
// head_dim], DIR/layer<N>_k.npy and layer<N>_v.npy [tokens, n_kv_heads,
// head_dim], float32, q and k after RoPE. Rows are streamed as the model runs,
// so memory does not grow with the sequence.
#ifndef COVATTN_TOOLS_MODEL_QKV_DUMP_H_
#define COVATTN_TOOLS_MODEL_QKV_DUMP_H_

#include <string>
#include <vector>

#include "checkpoint.h"
#include "npy.h"
#include "transformer.h"

namespace covattn_model {

class QkvDumper : public StepObserver {
 public:
  // Creates DIR if needed and opens the files of every layer for n_tokens
  // rows. Refuses a directory holding other q/k/v files covattn-compare would
  // read together with these (q.npy, k.npy, v.npy, or layers >= n_layers).
  bool Open(const std::string& dir, const ModelConfig& config, size_t n_tokens, std::string* error);
  bool OnLayer(const LayerActivations& a, std::string* error) override;
  // Closes every file; false if a file did not get all its rows.
  bool Close(std::string* error);

 private:
  ModelConfig config_;
  std::vector<covattn_compare::NpyF32Writer> q_, k_, v_;  // per layer
};

}  // namespace covattn_model

#endif  // COVATTN_TOOLS_MODEL_QKV_DUMP_H_
