// Real activations for covattn-compare: query, key and value arrays dumped
// from a model as .npy files, one set per layer (docs/compare.md):
//
//   DIR/q.npy, DIR/k.npy, DIR/v.npy                  one layer (number 0)
//   DIR/layer<N>_q.npy, layer<N>_k.npy, layer<N>_v.npy  layer N
//   "Q.npy,K.npy,V.npy"                              three files, one layer
//
// q is [tokens, query heads, head_dim], k and v [tokens, KV heads, head_dim]
// (post-RoPE, as attention sees them); query heads are a multiple of KV
// heads (grouped-query attention). A 2-D [tokens, head_dim] array is one head.
#ifndef COVATTN_TOOLS_COMPARE_QKV_H_
#define COVATTN_TOOLS_COMPARE_QKV_H_

#include <string>
#include <vector>

#include "evaluate.h"
#include "options.h"

namespace covattn_compare {

struct QkvFiles {
  long layer = 0;
  std::string q, k, v;
};

// Resolves --qkv into the layers to evaluate (filtered by --layers), in layer
// order. False with a message naming the path when nothing usable is found.
bool FindQkvFiles(const Options& options, std::vector<QkvFiles>* layers, std::string* error);

// The sampled contexts of a layer of n_tokens: `positions` points spaced
// evenly in log between min_context and n_tokens, always ending at n_tokens.
std::vector<size_t> SampleContexts(size_t n_tokens, size_t min_context, size_t positions);

// Loads one layer and checks it (shapes, dtypes, finiteness) into a series
// whose contexts are the sampled query positions + 1.
bool LoadQkvLayer(const QkvFiles& files, const Options& options, Series* series,
                  std::string* error);

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_QKV_H_
