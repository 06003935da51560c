// Synthetic attention workloads with fixed seeds, shared by the benchmarks
// and covattn-compare: keys and values of one layer plus queries of a chosen
// sharpness (MATH.md sections 2 and 4).
#ifndef COVATTN_TOOLS_WORKLOADS_H_
#define COVATTN_TOOLS_WORKLOADS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace covattn_tools {

enum class Workload {
  kGaussian,        // jointly Gaussian keys and values with a non-zero mean
  kStudentT,        // elliptical, heavy-tailed: Gaussian times a chi(3) radius
  kAutoregressive,  // s_{t+1} = W s_t + noise, W orthogonal, projected to k, v
  kDrift,           // Gaussian whose mean drifts slowly along the sequence
};

constexpr Workload kAllWorkloads[] = {Workload::kGaussian, Workload::kStudentT,
                                      Workload::kAutoregressive, Workload::kDrift};

// "gaussian", "student-t", "ar", "drift"; false for an unknown name.
bool ParseWorkload(const std::string& name, Workload* workload);
const char* WorkloadName(Workload workload);

// K and V as f32, [token][head][dim] contiguous, plus the queries of the last
// position, [n_q_heads][dim]. Query head h reads KV head h / (n_q / n_kv).
struct Layer {
  size_t n_tokens = 0, n_kv_heads = 0, n_q_heads = 0, head_dim = 0;
  std::vector<float> k, v, q;
};

struct WorkloadSpec {
  Workload workload = Workload::kGaussian;
  size_t n_tokens = 4096;
  size_t n_kv_heads = 1;
  size_t n_q_heads = 4;
  size_t head_dim = 64;
  // Standard deviation of the scores a.k (a = q / sqrt(head_dim)) over the
  // keys: the sharpness of attention.
  double sigma = 1.0;
  uint64_t seed = 1;
};

// Deterministic for a given spec (its own generator, seeded from spec.seed).
Layer MakeLayer(const WorkloadSpec& spec);

// Queries of sharpness sigma for KV head `kv_head` of a layer's first
// n_tokens tokens: a random direction scaled so that std(a.k) = sigma.
std::vector<float> SharpQueries(const Layer& layer, size_t kv_head, size_t n_queries,
                                size_t n_tokens, double sigma, uint64_t seed);

}  // namespace covattn_tools

#endif  // COVATTN_TOOLS_WORKLOADS_H_
