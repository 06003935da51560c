// The attention methods a model runs with, one object per layer:
//  - exact: covattn_decode over every token of the sequence (a KV buffer per
//    layer, [token][kv_head][head_dim], f32, or int8 with one scale per
//    vector, quantised by covattn_quantize_int8 as each token arrives);
//  - bounded cache: one covattn_cache per layer (include/covattn/cache.h),
//    each new token appended, then the layer's queries decoded.
// A method is described by a MethodSpec; a new cache configuration is a new
// spec, not new code.
#ifndef COVATTN_TOOLS_MODEL_ATTENTION_METHODS_H_
#define COVATTN_TOOLS_MODEL_ATTENTION_METHODS_H_

#include <cstddef>
#include <memory>
#include <string>

#include "checkpoint.h"
#include "covattn/cache.h"
#include "transformer.h"

namespace covattn_model {

struct MethodSpec {
  std::string key;   // short name for files, e.g. "hybrid"
  std::string name;  // for tables, e.g. "hybrid, budget 64"
  bool exact = false;
  uint32_t exact_dtype = COVATTN_F32;  // exact: COVATTN_INT8 quantises each token's rows
  // Bounded methods: the cache of one layer. n_kv_heads and head_dim are
  // taken from the model; everything else (sinks, window, outliers, dtype,
  // forgetting, flags) from here.
  covattn_cache_config cache{};
  // The state this method keeps per KV head, by the caller's accounting
  // (bounded methods; exact attention keeps every token: computed).
  size_t persistent_bytes_per_kv_head = 0;
  size_t budget = 0;  // the budget the spec was planned for (a label; 0: none)
};

// f32 K and V of one token of one KV head.
inline size_t TokenBytes(size_t head_dim) { return 2 * head_dim * sizeof(float); }

// The attention of one layer; max_tokens bounds the sequence (exact
// attention's buffer). Null with a message when the cache cannot be made.
std::unique_ptr<LayerAttention> CreateLayerAttention(const MethodSpec& spec,
                                                     const ModelConfig& config, size_t max_tokens,
                                                     std::string* error);

}  // namespace covattn_model

#endif  // COVATTN_TOOLS_MODEL_ATTENTION_METHODS_H_
