// Fuzz target for the llama2.c checkpoint reader of the model evaluation
// (tools/model/checkpoint.h), and the forward pass over what it accepts.
//
// The input picks one of two modes:
//  0: the rest of the input is a checkpoint file, parsed as it is;
//  1: a small valid checkpoint built from the input (shape, shared or
//     separate classifier, weight values with planted specials, a header
//     field overwritten now and then), damaged as the input says (truncated,
//     bit flips, overwritten bytes), then parsed.
// Checked: a refused file gives a message naming it and leaves the
// checkpoint empty; an accepted one has the size its header implies, finite
// weights and tensors inside its buffer, and runs a few tokens through the
// model with exact attention and with a bounded cache without a crash (a
// step may fail cleanly when huge weights overflow the activations).
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "covattn/cache.h"
#include "fuzz_util.h"
#include "model/attention_methods.h"
#include "model/checkpoint.h"
#include "model/transformer.h"

using namespace covattn_fuzz;
using namespace covattn_model;

namespace {

const std::string kName = "fuzz.bin";

void PutI32(std::vector<uint8_t>* out, int32_t x) {
  const uint32_t u = static_cast<uint32_t>(x);
  for (int b = 0; b < 4; ++b) out->push_back(static_cast<uint8_t>(u >> (8 * b)));
}

void PutF32(std::vector<uint8_t>* out, float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  for (int b = 0; b < 4; ++b) out->push_back(static_cast<uint8_t>(u >> (8 * b)));
}

// A checkpoint of a small shape chosen by the input, in the llama2.c layout.
std::vector<uint8_t> BuildFile(ByteReader& in) {
  const int32_t head_dim = 2 * (1 + in.U8() % 4), kv_heads = 1 + in.U8() % 3;
  const int32_t heads = kv_heads * (1 + in.U8() % 3), dim = heads * head_dim;
  const int32_t hidden = 1 + in.U8() % 16, layers = 1 + in.U8() % 3, vocab = 1 + in.U8() % 16;
  const int32_t seq_len = 1 + in.U8() % 8;
  const bool shared = in.U8() % 2;
  int32_t fields[7] = {dim, hidden, layers, heads, kv_heads, shared ? vocab : -vocab, seq_len};
  const uint8_t overwrite = in.U8();
  if (overwrite < 7 * 16) fields[overwrite % 7] = static_cast<int32_t>(in.U32());

  const size_t kv = size_t(kv_heads * head_dim), d = size_t(dim), L = size_t(layers);
  const size_t n = size_t(vocab) * d * (shared ? 1 : 2) + L * (2 * d + 2 * d * d + 2 * kv * d) +
                   3 * L * size_t(hidden) * d + d + size_t(seq_len) * size_t(head_dim);
  const double magnitude = std::ldexp(1.0, static_cast<int>(in.U8() % 40) - 20);
  Prng rng{in.U64()};
  std::vector<float> weights(n);
  for (float& w : weights) w = static_cast<float>(magnitude * (2 * rng.Uniform() - 1));
  for (size_t planted = in.U8() % 4; planted > 0; --planted) {
    const size_t at = in.U32() % n;
    weights[at] = ByteReader::Special(in.U8());
  }
  std::vector<uint8_t> file;
  for (int32_t f : fields) PutI32(&file, f);
  for (float w : weights) PutF32(&file, w);
  DamageFile(in, &file);
  return file;
}

void CheckAccepted(const Checkpoint& ck, size_t size, ByteReader& in) {
  const ModelConfig& c = ck.config;
  FUZZ_CHECK(ck.weights.size() * 4 + kCheckpointHeaderBytes == size,
             "%zu weights accepted from %zu bytes", ck.weights.size(), size);
  FUZZ_CHECK(c.dim % c.n_heads == 0 && c.n_heads % c.n_kv_heads == 0 && c.head_dim() % 2 == 0,
             "accepted heads that do not divide");
  const float* begin = ck.weights.data();
  const float* end = begin + ck.weights.size();
  auto inside = [&](const float* p, size_t count) { return p >= begin && p + count <= end; };
  FUZZ_CHECK(inside(ck.token_embedding, c.vocab_size * c.dim) &&
                 inside(ck.classifier, c.vocab_size * c.dim) && inside(ck.rms_final, c.dim),
             "tensors outside the weights");
  FUZZ_CHECK(ck.layers.size() == c.n_layers, "layers");
  for (const LayerWeights& w : ck.layers) {
    FUZZ_CHECK(inside(w.wq, c.dim * c.dim) && inside(w.w2, c.dim * c.hidden_dim) &&
                   inside(w.w3, c.hidden_dim * c.dim) && inside(w.rms_ffn, c.dim),
               "layer tensors outside the weights");
    for (size_t i = 0; i < c.dim * c.dim; ++i) FUZZ_CHECK(std::isfinite(w.wq[i]), "non-finite wq");
  }
  // A few tokens through the model; huge accepted shapes are not run.
  if (ck.weights.size() > (size_t{1} << 20)) return;
  MethodSpec exact;
  exact.exact = true;
  MethodSpec bounded;
  bounded.cache = covattn_cache_config{0, 0, COVATTN_F32, 1, 1, 0, 1.0f, 0, 0, 0, 0.0f, 0, 0};
  for (const MethodSpec& spec : {exact, bounded}) {
    const size_t n_tokens = std::min<size_t>(c.seq_len, 3);
    std::vector<std::unique_ptr<LayerAttention>> attention;
    std::vector<LayerAttention*> layers;
    std::string error;
    for (size_t l = 0; l < c.n_layers; ++l) {
      attention.push_back(CreateLayerAttention(spec, c, n_tokens, &error));
      FUZZ_CHECK(attention.back() != nullptr, "attention for layer %zu: %s", l, error.c_str());
      layers.push_back(attention.back().get());
    }
    ForwardPass forward(ck);
    std::vector<float> logits(c.vocab_size);
    for (size_t pos = 0; pos < n_tokens; ++pos) {
      const int32_t token = static_cast<int32_t>(in.U8() % c.vocab_size);
      if (!forward.Step(token, pos, layers.data(), true, nullptr, logits.data(), nullptr, &error)) {
        FUZZ_CHECK(!error.empty(), "a failed step without a message");
        break;
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteReader in(data, size);
  const uint8_t mode = size ? data[0] % 2 : 0;
  std::vector<uint8_t> file;
  if (mode == 0) {
    file.assign(data + (size ? 1 : 0), data + size);
  } else {
    in.U8();
    file = BuildFile(in);
  }
  // An exactly sized copy: ASan reports any read past the end.
  Block copy(file.size());
  if (!file.empty()) std::memcpy(copy.data(), file.data(), file.size());
  Checkpoint ck;
  std::string error;
  const bool ok = ParseCheckpoint(kName, copy.data(), file.size(), &ck, &error);
  if (Verbose()) std::fprintf(stderr, "%s\n", ok ? "accepted" : error.c_str());
  if (!ok) {
    FUZZ_CHECK(error.rfind(kName + ": ", 0) == 0 && error.size() > kName.size() + 2,
               "message does not name the file: %s", error.c_str());
    FUZZ_CHECK(ck.weights.empty() && ck.layers.empty(), "a refused file left weights");
    return 0;
  }
  CheckAccepted(ck, file.size(), in);
  return 0;
}
