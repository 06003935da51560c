// The oneDNN peer of the benchmarks and covattn-compare: exact attention as
// oneDNN primitives (matmul, softmax, matmul), on the same f32 data and shapes
// as covattn's kernels.
#ifndef COVATTN_TOOLS_ONEDNN_PEER_H_
#define COVATTN_TOOLS_ONEDNN_PEER_H_

#include <cstddef>
#include <memory>

namespace covattn_tools {

// Decode for a layer: q [n_q_heads][dim] against an f32 cache whose element
// (token t, head h, dim i) is at t * token_stride + h * head_stride + i,
// out [n_q_heads][dim]. Per KV head: S = (scale q_group) K^T,
// softmax over tokens, O = P V, with oneDNN's primitives created once.
class OneDnnDecode {
 public:
  OneDnnDecode(size_t n_kv_heads, size_t group, size_t dim, size_t n_tokens, size_t token_stride,
               size_t head_stride, const float* k, const float* v);
  ~OneDnnDecode();
  void Run(const float* q, float* out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Causal prefill for one head: q, k, v, out all [n][dim]. The mask is a
// post-op added to the scores; the n x n score matrix is materialised, as
// primitive-based attention does.
class OneDnnPrefill {
 public:
  OneDnnPrefill(size_t dim, size_t n, const float* k, const float* v);
  ~OneDnnPrefill();
  void Run(const float* q, float* out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace covattn_tools

#endif  // COVATTN_TOOLS_ONEDNN_PEER_H_
