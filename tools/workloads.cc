#include "workloads.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace covattn_tools {
namespace {

struct Rng {
  explicit Rng(uint64_t seed) : engine(seed) {}
  double Normal() { return normal(engine); }
  std::mt19937_64 engine;
  std::normal_distribution<double> normal{0.0, 1.0};
};

// A random orthogonal matrix (Gram-Schmidt on Gaussian columns), n x n
// row-major.
std::vector<double> RandomOrthogonal(size_t n, Rng& rng) {
  std::vector<double> q(n * n);
  for (double& x : q) x = rng.Normal();
  for (size_t c = 0; c < n; ++c) {
    for (size_t p = 0; p < c; ++p) {
      double dot = 0.0;
      for (size_t r = 0; r < n; ++r) dot += q[r * n + c] * q[r * n + p];
      for (size_t r = 0; r < n; ++r) q[r * n + c] -= dot * q[r * n + p];
    }
    double norm = 0.0;
    for (size_t r = 0; r < n; ++r) norm += q[r * n + c] * q[r * n + c];
    norm = std::sqrt(norm);
    for (size_t r = 0; r < n; ++r) q[r * n + c] /= norm;
  }
  return q;
}

// Rotates x in place as RoPE does at position pos: pairs (2i, 2i + 1) by
// pos * 10000^(-2i/d) (an odd last element stays).
void Rotate(double* x, size_t d, double pos) {
  for (size_t i = 0; 2 * i + 1 < d; ++i) {
    const double angle = pos * std::pow(10000.0, -2.0 * double(i) / double(d));
    const double c = std::cos(angle), s = std::sin(angle);
    const double a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * c - b * s;
    x[2 * i + 1] = a * s + b * c;
  }
}

bool IsRope(Workload w) { return w == Workload::kRope || w == Workload::kRopeSinks; }

// The coordinates a sink workload keeps for the sinks: the last pair (the
// lowest RoPE frequency), or the odd last element RoPE does not rotate.
// Content keys are zero there, sink keys carry kSinkNorm on the first.
size_t SinkCoordinate(size_t d) { return d % 2 ? d - 1 : d - 2; }
constexpr double kSinkNorm = 4.0;  // times sqrt(d): a "massive activation"

// Post-processing of a RoPE workload's keys of one head, in place: rotation
// by position, and the sinks' component.
void RopeKeys(Workload w, size_t t, size_t d, double* k) {
  const bool sinks = w == Workload::kRopeSinks && d >= 2;
  if (sinks) std::fill(k + SinkCoordinate(d), k + d, 0.0);
  Rotate(k, d, double(t));
  if (sinks && t < kSinkTokens) k[SinkCoordinate(d)] = kSinkNorm * std::sqrt(double(d));
}

std::vector<float> RopeQueries(const Layer& layer, size_t kv_head, size_t n_queries,
                               size_t n_tokens, double sigma, uint64_t seed);

}  // namespace

double NaturalSigma(Workload workload) { return IsRope(workload) ? 3.0 : 1.0; }

bool ParseWorkload(const std::string& name, Workload* workload) {
  for (Workload w : kAllWorkloads) {
    if (name == WorkloadName(w)) {
      *workload = w;
      return true;
    }
  }
  return false;
}

const char* WorkloadName(Workload workload) {
  switch (workload) {
    case Workload::kGaussian:
      return "gaussian";
    case Workload::kStudentT:
      return "student-t";
    case Workload::kAutoregressive:
      return "ar";
    case Workload::kDrift:
      return "drift";
    case Workload::kRope:
      return "rope";
    case Workload::kRopeSinks:
      return "rope-sinks";
  }
  return "?";
}

Layer MakeLayer(const WorkloadSpec& spec) {
  Rng rng(spec.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(spec.workload));
  Layer layer;
  layer.workload = spec.workload;
  layer.n_tokens = spec.n_tokens;
  layer.n_kv_heads = spec.n_kv_heads;
  layer.n_q_heads = spec.n_q_heads;
  layer.head_dim = spec.head_dim;
  const size_t d = spec.head_dim, width = 2 * d, heads = spec.n_kv_heads;
  layer.k.resize(spec.n_tokens * heads * d);
  layer.v.resize(spec.n_tokens * heads * d);
  std::vector<double> z(width), x(width);
  for (size_t h = 0; h < heads; ++h) {
    // z = [k; v] = mu(t) + (I + U V^T) x per head: a fixed random mixing of
    // rank kMixRank around the identity correlates keys with values at
    // O(width) cost per token.
    constexpr size_t kMixRank = 8;
    std::vector<double> u(width * kMixRank), w(width * kMixRank), mean(width), drift(width),
        low(kMixRank);
    for (size_t i = 0; i < width; ++i) {
      for (size_t r = 0; r < kMixRank; ++r) {
        u[i * kMixRank + r] = 0.5 * rng.Normal();
        w[i * kMixRank + r] = rng.Normal() / std::sqrt(double(width));
      }
      mean[i] = 1.0 + 0.5 * rng.Normal();
      drift[i] = 2.0 * rng.Normal();
    }
    if (IsRope(spec.workload)) {
      std::vector<double> m(mean.begin(), mean.begin() + long(d)), sink(d, 0.0);
      if (spec.workload == Workload::kRopeSinks && d >= 2) {
        std::fill(m.begin() + long(SinkCoordinate(d)), m.end(), 0.0);
        sink[SinkCoordinate(d)] = 1.0;
      }
      layer.key_mean.insert(layer.key_mean.end(), m.begin(), m.end());
      layer.sink_direction.insert(layer.sink_direction.end(), sink.begin(), sink.end());
    }
    // The autoregressive state lives in d dimensions; keys and values are two
    // fixed projections of it.
    std::vector<double> transition, state(d), proj;
    if (spec.workload == Workload::kAutoregressive) {
      transition = RandomOrthogonal(d, rng);
      proj.resize(width * d);
      for (double& p : proj) p = rng.Normal() / std::sqrt(double(d));
      for (double& s : state) s = rng.Normal();
    }
    for (size_t t = 0; t < spec.n_tokens; ++t) {
      if (spec.workload == Workload::kAutoregressive) {
        std::vector<double> next(d, 0.0);
        for (size_t i = 0; i < d; ++i) {
          for (size_t j = 0; j < d; ++j) next[i] += transition[i * d + j] * state[j];
          next[i] += 0.1 * rng.Normal();
        }
        double norm = 0.0;  // keep the orbit on the sphere of radius sqrt(d)
        for (double s : next) norm += s * s;
        norm = std::sqrt(norm / d);
        for (size_t i = 0; i < d; ++i) state[i] = next[i] / norm;
        for (size_t i = 0; i < width; ++i) {
          double s = 0.0;
          for (size_t j = 0; j < d; ++j) s += proj[i * d + j] * state[j];
          z[i] = s;
        }
      } else {
        double radius = 1.0;
        if (spec.workload == Workload::kStudentT) {
          double chi2 = 0.0;
          for (int i = 0; i < 3; ++i) {
            const double g = rng.Normal();
            chi2 += g * g;
          }
          radius = std::sqrt(3.0 / chi2);
        }
        for (double& xi : x) xi = rng.Normal();
        std::fill(low.begin(), low.end(), 0.0);
        for (size_t j = 0; j < width; ++j)
          for (size_t r = 0; r < kMixRank; ++r) low[r] += w[j * kMixRank + r] * x[j];
        const double progress = spec.workload == Workload::kDrift ? double(t) / spec.n_tokens : 0.0;
        for (size_t i = 0; i < width; ++i) {
          double s = x[i];
          for (size_t r = 0; r < kMixRank; ++r) s += u[i * kMixRank + r] * low[r];
          z[i] = mean[i] + drift[i] * progress + radius * s;
        }
      }
      if (IsRope(spec.workload)) RopeKeys(spec.workload, t, d, z.data());
      float* k = layer.k.data() + (t * heads + h) * d;
      float* v = layer.v.data() + (t * heads + h) * d;
      for (size_t i = 0; i < d; ++i) {
        k[i] = static_cast<float>(z[i]);
        v[i] = static_cast<float>(z[d + i]);
      }
    }
  }
  const size_t group = spec.n_q_heads / spec.n_kv_heads;
  layer.q.resize(spec.n_q_heads * d);
  for (size_t h = 0; h < heads; ++h) {
    const std::vector<float> q =
        SharpQueries(layer, h, group, spec.n_tokens, spec.sigma, spec.seed + 7919 * h);
    std::copy(q.begin(), q.end(), layer.q.begin() + h * group * d);
  }
  return layer;
}

std::vector<float> SharpQueries(const Layer& layer, size_t kv_head, size_t n_queries,
                                size_t n_tokens, double sigma, uint64_t seed) {
  if (IsRope(layer.workload)) return RopeQueries(layer, kv_head, n_queries, n_tokens, sigma, seed);
  Rng rng(seed);
  const size_t d = layer.head_dim;
  std::vector<double> mean(d, 0.0);
  for (size_t t = 0; t < n_tokens; ++t) {
    const float* k = layer.k.data() + (t * layer.n_kv_heads + kv_head) * d;
    for (size_t i = 0; i < d; ++i) mean[i] += k[i] / double(n_tokens);
  }
  std::vector<float> queries(n_queries * d);
  std::vector<double> u(d);
  for (size_t n = 0; n < n_queries; ++n) {
    for (double& x : u) x = rng.Normal();
    double var = 0.0;  // variance of u.k over the tokens
    for (size_t t = 0; t < n_tokens; ++t) {
      const float* k = layer.k.data() + (t * layer.n_kv_heads + kv_head) * d;
      double s = 0.0;
      for (size_t i = 0; i < d; ++i) s += u[i] * (k[i] - mean[i]);
      var += s * s / double(n_tokens);
    }
    const double to_q = sigma / std::sqrt(var) * std::sqrt(double(d));  // a = q / sqrt(d)
    for (size_t i = 0; i < d; ++i) queries[n * d + i] = static_cast<float>(u[i] * to_q);
  }
  return queries;
}

namespace {

// The weight of the keys' mean direction in a query against its random part:
// the height of the recency peak mqT R(t - p) m at t = p.
constexpr double kRecency = 3.0;

// See SharpQueries. The sink coordinate is zero in every key but the sinks',
// so the sinks' share fixes the query's weight on it in closed form:
// exp(beta c) Z_sinks / (exp(beta c) Z_sinks + Z_rest) = kSinkShare.
std::vector<float> RopeQueries(const Layer& layer, size_t kv_head, size_t n_queries,
                               size_t n_tokens, double sigma, uint64_t seed) {
  Rng rng(seed);
  const size_t d = layer.head_dim;
  const bool sinks = layer.workload == Workload::kRopeSinks && d >= 2;
  const size_t first = sinks ? std::min(kSinkTokens, n_tokens - 1) : 0;  // first non-sink key
  const double* mean = layer.key_mean.data() + kv_head * d;
  auto key = [&](size_t t) { return layer.k.data() + (t * layer.n_kv_heads + kv_head) * d; };
  std::vector<float> queries(n_queries * d);
  std::vector<double> q(d), scores(n_tokens);
  for (size_t n = 0; n < n_queries; ++n) {
    for (size_t i = 0; i < d; ++i) q[i] = rng.Normal() + kRecency * mean[i];
    if (sinks) std::fill(q.begin() + long(SinkCoordinate(d)), q.end(), 0.0);
    Rotate(q.data(), d, double(n_tokens - 1));
    double sum = 0.0, squares = 0.0;
    for (size_t t = 0; t < n_tokens; ++t) {
      double s = 0.0;
      for (size_t i = 0; i < d; ++i) s += q[i] * key(t)[i];
      scores[t] = s;
      if (t >= first) sum += s, squares += s * s;
    }
    const double count = double(n_tokens - first), mean_score = sum / count;
    const double std = std::sqrt(std::max(squares / count - mean_score * mean_score, 1e-300));
    const double to_a = sigma / std;  // scores a.k of q scaled by to_q
    const double to_q = to_a * std::sqrt(double(d));
    for (size_t i = 0; i < d; ++i) queries[n * d + i] = static_cast<float>(q[i] * to_q);
    if (!sinks || first == 0) continue;
    double top = -INFINITY;
    for (double s : scores) top = std::max(top, s * to_a);
    double z_sinks = 0.0, z_rest = 0.0;
    for (size_t t = 0; t < n_tokens; ++t) {
      (t < first ? z_sinks : z_rest) += std::exp(scores[t] * to_a - top);
    }
    // The sinks' a.k gain g = log(kSinkShare / (1 - kSinkShare) Z_rest / Z_sinks);
    // q's sink coordinate x adds (x / sqrt(d)) kSinkNorm sqrt(d) = x kSinkNorm.
    const double gain = std::log(kSinkShare / (1.0 - kSinkShare) * z_rest / z_sinks);
    queries[n * d + SinkCoordinate(d)] = static_cast<float>(gain / kSinkNorm);
  }
  return queries;
}

}  // namespace
}  // namespace covattn_tools
