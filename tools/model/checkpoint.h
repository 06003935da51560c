// A reader of llama2.c checkpoints (the legacy ".bin" format that run.c reads):
// a header of seven little-endian int32 (dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len; a negative vocab_size says the classifier
// has its own weights after the others), then f32 weights in run.c's order:
//
//   token_embedding [vocab][dim]        rms_att [layers][dim]
//   wq [layers][dim][dim]               wk, wv [layers][kv_dim][dim]
//   wo [layers][dim][dim]               rms_ffn [layers][dim]
//   w1 [layers][hidden][dim]            w2 [layers][dim][hidden]
//   w3 [layers][hidden][dim]            rms_final [dim]
//   freq_cis_real, freq_cis_imag [seq_len][head_dim / 2] (unused: RoPE is
//   computed), then wcls [vocab][dim] when the classifier is not shared.
//
// (matrices row-major [out][in], head_dim = dim / n_heads, kv_dim =
// n_kv_heads * head_dim). Every header field is checked (positive, heads
// that divide, an even head_dim of at most COVATTN_MAX_HEAD_DIM, sizes that
// do not overflow), the size the header implies is compared with the file's
// before anything is allocated, and every weight run.c uses must be finite;
// every problem is a message naming the file, never a crash.
#ifndef COVATTN_TOOLS_MODEL_CHECKPOINT_H_
#define COVATTN_TOOLS_MODEL_CHECKPOINT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace covattn_model {

struct ModelConfig {
  size_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0;
  size_t vocab_size = 0, seq_len = 0;
  bool shared_classifier = true;

  size_t head_dim() const { return dim / n_heads; }
  size_t kv_dim() const { return n_kv_heads * head_dim(); }
};

// The weights of one layer, pointing into Checkpoint::weights.
struct LayerWeights {
  const float* rms_att;  // [dim]
  const float* wq;       // [dim][dim]
  const float* wk;       // [kv_dim][dim]
  const float* wv;       // [kv_dim][dim]
  const float* wo;       // [dim][dim]
  const float* rms_ffn;  // [dim]
  const float* w1;       // [hidden][dim]
  const float* w2;       // [dim][hidden]
  const float* w3;       // [hidden][dim]
};

// A loaded checkpoint. Move-only in effect: the pointers refer to `weights`
// (moving a std::vector keeps its buffer, copying would not).
struct Checkpoint {
  std::string path;
  ModelConfig config;
  std::vector<float> weights;              // everything after the header, as in the file
  const float* token_embedding = nullptr;  // [vocab][dim]
  const float* rms_final = nullptr;        // [dim]
  const float* classifier = nullptr;       // [vocab][dim]
  std::vector<LayerWeights> layers;

  Checkpoint() = default;
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;
  Checkpoint(Checkpoint&&) = default;
  Checkpoint& operator=(Checkpoint&&) = default;
};

// Header bytes, and the number of f32 weights a valid header implies.
constexpr size_t kCheckpointHeaderBytes = 7 * 4;

// Checks a header (the seven fields as read) and computes the configuration
// and the number of f32 values that must follow it. False with a message
// (without the file name) when a field is not positive, the heads do not
// divide, head_dim is odd or above covattn's limit, or a size overflows.
bool ParseCheckpointHeader(const int32_t fields[7], ModelConfig* config, uint64_t* n_floats,
                           std::string* error);

// Parses a whole checkpoint held in memory; `name` stands for the file in
// messages. On failure returns false, fills *error ("<name>: <problem>") and
// leaves *checkpoint empty.
bool ParseCheckpoint(const std::string& name, const uint8_t* data, size_t size,
                     Checkpoint* checkpoint, std::string* error);

// Reads and parses a checkpoint file; the header is checked against the
// file's size before the weights are read.
bool ReadCheckpoint(const std::string& path, Checkpoint* checkpoint, std::string* error);

}  // namespace covattn_model

#endif  // COVATTN_TOOLS_MODEL_CHECKPOINT_H_
