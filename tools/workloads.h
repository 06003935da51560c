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
  // What trained models' attention has and the others do not: keys rotated
  // by RoPE (positions 0, 1, ..., pairs (2i, 2i+1) by t 10000^(-2i/d)), a
  // recency bias (queries share the keys' mean direction, so their scores
  // peak at the query's own position), and sharp queries (sigma 3 unless
  // asked otherwise). kRopeSinks adds attention sinks: the first kSinkTokens
  // keys carry a large component along a direction RoPE leaves alone, and
  // queries weigh it so that the sinks take kSinkShare of the softmax mass.
  kRope,
  kRopeSinks,
};

constexpr Workload kAllWorkloads[] = {Workload::kGaussian,       Workload::kStudentT,
                                      Workload::kAutoregressive, Workload::kDrift,
                                      Workload::kRope,           Workload::kRopeSinks};

constexpr size_t kSinkTokens = 4;
constexpr double kSinkShare = 0.4;

// The sharpness a workload's queries get when none is asked for: 1 for the
// stationary workloads, 3 for the RoPE ones (trained models' score std is
// 2 to 5 per head).
double NaturalSigma(Workload workload);

// "gaussian", "student-t", "ar", "drift", "rope", "rope-sinks"; false for an
// unknown name.
bool ParseWorkload(const std::string& name, Workload* workload);
const char* WorkloadName(Workload workload);

// K and V as f32, [token][head][dim] contiguous, plus the queries of the last
// position, [n_q_heads][dim]. Query head h reads KV head h / (n_q / n_kv).
struct Layer {
  Workload workload = Workload::kGaussian;
  size_t n_tokens = 0, n_kv_heads = 0, n_q_heads = 0, head_dim = 0;
  std::vector<float> k, v, q;
  // RoPE workloads, per KV head [head][dim]: the keys' mean before rotation
  // (the recency direction of the queries) and the sink direction.
  std::vector<double> key_mean, sink_direction;
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
// n_tokens tokens: a random direction scaled so that std(a.k) = sigma. RoPE
// workloads: the query of position n_tokens - 1, R(p) (u + key mean) for a
// random u, scaled so that the scores of the keys after the sinks have std
// sigma, plus (kRopeSinks) the sink direction weighed so that the sinks take
// kSinkShare of the mass.
std::vector<float> SharpQueries(const Layer& layer, size_t kv_head, size_t n_queries,
                                size_t n_tokens, double sigma, uint64_t seed);

}  // namespace covattn_tools

#endif  // COVATTN_TOOLS_WORKLOADS_H_
