// The compact summary (COVATTN_SUMMARY_COMPACT, MATH.md section 6): per KV
// head the weight W, the means mu_k and mu_v and the centred second moments
// m2 of each key dimension, all f64, O(d) memory. Its normaliser is
//
//   log Z_S = log W + a.mu_k + psi(a),
//   psi(a)  = sum_i log I_0(|a_i| rho_i)   with RoPE, per rotation plane i
//                                          (rho_i^2 = var_p + var_p'),
//           = 1/2 sum_j a_j^2 var_j        without (the diagonal Gaussian),
//
// and its readout is mu_v (it keeps no key-value covariance).
//
// Head h's memory: CompactHeadBytes(d) bytes at h * CompactHeadBytes(d) of
// the summary region, doubles [W, mu_k (d), mu_v (d), m2 (d)].

#include <cmath>
#include <cstring>
#include <limits>

#include "bytes.h"
#include "cache.h"
#include "ring.h"
#include "summary.h"
#include "summary_kinds.h"

namespace covattn {
namespace detail {
namespace {

constexpr size_t CompactHeadDoubles(size_t d) { return 1 + 3 * d; }
constexpr size_t CompactHeadBytes(size_t d) { return RoundUp(8 * CompactHeadDoubles(d), 64); }

template <class Cache>
auto* CompactHead(Cache* c, size_t h) {
  return c->template At<Like<Cache, double>>(c->layout.summary + h * CompactHeadBytes(c->Dim()));
}

// psi(a) of head h's statistics (doubles of the head) for the scaled query a.
double CompactPsi(const covattn_cache_config& c, const double* head, const float* a,
                  double factor) {
  const size_t d = c.head_dim;
  const double w = head[0];
  const double* m2 = head + 1 + 2 * d;
  double psi = 0.0;
  if (c.rope == COVATTN_ROPE_NONE) {
    for (size_t j = 0; j < d; ++j) {
      const double aj = factor * a[j];
      psi += 0.5 * aj * aj * (m2[j] / w);
    }
    return psi;
  }
  const RopePlanes planes{c.rope, d};
  for (size_t i = 0; i < planes.Count(); ++i) {
    const size_t p = planes.First(i), r = planes.Second(i);
    const double ap = factor * a[p], ar = factor * a[r];
    const double rho = std::sqrt((m2[p] + m2[r]) / w);
    psi += LogBesselI0(std::sqrt(ap * ap + ar * ar) * rho);
  }
  return psi;
}

}  // namespace

size_t CompactSummaryBytes(size_t n_heads, size_t d) { return n_heads * CompactHeadBytes(d); }

void CompactReset(covattn_cache* cache) {
  std::memset(CompactHead(cache, 0), 0, CompactSummaryBytes(cache->Heads(), cache->Dim()));
}

// Weighted Welford, row by row (MATH.md section 3 with a diagonal M): with
// W_a = lambda W, W <- W_a + 1, delta = x - mu, mu <- mu + delta / W,
// m2 <- lambda m2 + delta^2 W_a / W.
void CompactFold(covattn_cache* cache, size_t h, const float* k, const float* v, size_t n) {
  const size_t d = cache->Dim();
  const double lambda = cache->config.forgetting;
  double* head = CompactHead(cache, h);
  double *mu_k = head + 1, *mu_v = head + 1 + d, *m2 = head + 1 + 2 * d;
  for (size_t t = 0; t < n; ++t) {
    const double w_a = lambda * head[0], w = w_a + 1.0;
    const double frac = 1.0 / w, keep = w_a / w;
    const float* kt = k + t * d;
    const float* vt = v + t * d;
    for (size_t j = 0; j < d; ++j) {
      const double delta = kt[j] - mu_k[j];
      mu_k[j] += delta * frac;
      m2[j] = lambda * m2[j] + delta * delta * keep;
      mu_v[j] += (vt[j] - mu_v[j]) * frac;
    }
    head[0] = w;
  }
}

bool CompactReadout(const covattn_cache* cache, const SummaryQueries& q) {
  const covattn_cache_config& c = cache->config;
  const size_t d = c.head_dim, group = q.n_q_heads / q.n_kv_heads;
  constexpr size_t kLda = COVATTN_MAX_HEAD_DIM;
  float a[kLda];
  bool finite = true;
  for (size_t r = 0; r < q.n_q_heads; ++r) {
    const double* head = CompactHead(cache, q.first_kv_head + r / group);
    const double w = head[0];
    float* out = q.out + r * d;
    if (w == 0.0) {
      std::fill(out, out + d, 0.0f);
      q.log_z[r] = -std::numeric_limits<float>::infinity();
      if (q.ess != nullptr) q.ess[r] = 0.0f;
      continue;
    }
    double a_mu = 0.0;
    for (size_t j = 0; j < d; ++j) {
      a[j] = q.scale * q.q[r * d + j];
      a_mu += double{a[j]} * head[1 + j];
      out[j] = static_cast<float>(head[1 + d + j]);
      finite &= std::isfinite(out[j]);
    }
    const double psi = CompactPsi(c, head, a, 1.0);
    q.log_z[r] = static_cast<float>(std::log(w) + a_mu + psi);
    finite &= std::isfinite(q.log_z[r]);
    if (q.ess != nullptr) q.ess[r] = SummaryEss(w, psi, CompactPsi(c, head, a, 2.0));
  }
  return finite;
}

void CompactKeyMoments(const covattn_cache* cache, size_t h, float* mean, float* cov) {
  const size_t d = cache->Dim();
  const double* head = CompactHead(cache, h);
  std::fill(cov, cov + d * d, 0.0f);
  for (size_t j = 0; j < d; ++j) {
    mean[j] = static_cast<float>(head[1 + j]);
    cov[j * d + j] = static_cast<float>(head[1 + 2 * d + j] / head[0]);
  }
}

size_t CompactSerializedBytes(const covattn_cache* cache) {
  return cache->Heads() * 8 * CompactHeadDoubles(cache->Dim());
}

void CompactSerialize(const covattn_cache* cache, unsigned char* p) {
  const size_t doubles = CompactHeadDoubles(cache->Dim());
  for (size_t h = 0; h < cache->Heads(); ++h) {
    CopyLE(p + h * 8 * doubles, reinterpret_cast<const unsigned char*>(CompactHead(cache, h)),
           doubles, 8);
  }
}

// Every head finite, empty exactly when it folded nothing (then all zeros),
// otherwise of weight in [1, folded] (the newest token weighs 1, forgetting
// only lowers the rest), with non-negative second moments.
covattn_status CompactLoad(covattn_cache* cache, const unsigned char* p, size_t size,
                           const unsigned char* fold_counts, size_t fold_stride) {
  const size_t d = cache->Dim(), doubles = CompactHeadDoubles(d);
  if (size != CompactSerializedBytes(cache)) return COVATTN_ERR_CORRUPT;
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const unsigned char* head = p + h * 8 * doubles;
    const uint64_t folded = GetLE(fold_counts + h * fold_stride, 8);
    const double w = F64FromLE(head);
    if (!std::isfinite(w)) return COVATTN_ERR_CORRUPT;
    const bool empty = folded == 0;
    if (empty ? w != 0.0 : !(w >= 1.0 && w <= static_cast<double>(folded) * (1.0 + 0x1p-20))) {
      return COVATTN_ERR_CORRUPT;
    }
    for (size_t i = 1; i < doubles; ++i) {
      const double x = F64FromLE(head + 8 * i);
      if (!std::isfinite(x) || (empty && x != 0.0)) return COVATTN_ERR_CORRUPT;
      if (i > 2 * d && x < 0.0) return COVATTN_ERR_CORRUPT;
    }
  }
  for (size_t h = 0; h < cache->Heads(); ++h) {
    CopyLE(reinterpret_cast<unsigned char*>(CompactHead(cache, h)), p + h * 8 * doubles, doubles,
           8);
  }
  return COVATTN_OK;
}

}  // namespace detail
}  // namespace covattn
