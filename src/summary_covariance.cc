// The covariance summary (COVATTN_SUMMARY_COVARIANCE): one covariance state
// (covariance_state.h) whose heads fold different tokens, read out as the
// Gaussian of MATH.md section 2 or, with RoPE, with the ring correction of
// section 6:
//
//   psi(a)  = 1/2 a^T C_kk a - sum_i |a_i|^2 rho_i^2 / 4 + sum_i log I_0(|a_i| rho_i),
//             clamped to [0, 1/2 a^T C_kk a] (Jensen below, the Gaussian above),
//   log Z_S = log W + a.mu_k + psi(a),
//   r_S     = mu_v + C_vk a',  a' = a shrunk plane by plane by RingShrink(|a_i| rho_i),
//
// with rho_i^2 = tr C_kk over plane i. The state's readout kernel gives
// a^T C_kk a and C_vk a' in one pass (value queries a' for the value part).

#include <algorithm>
#include <cmath>
#include <limits>

#include "cache.h"
#include "covariance.h"
#include "ring.h"
#include "summary.h"
#include "summary_kinds.h"

namespace covattn {
namespace detail {
namespace {

template <class Cache>
auto* State(Cache* c) {
  return c->template At<Like<Cache, covattn_cov_state>>(c->layout.summary);
}

// The ring terms of one query against head kv: a' = shrink * q (unscaled, as
// the kernel scales it) and the corrections to psi at a and, for the ESS, 2a.
struct RingCorrection {
  double at_a, at_2a;
};
RingCorrection RingQuery(const covattn_cov_state* s, uint32_t rope, size_t kv, const float* q,
                         float scale, bool want_2a, float* value_q) {
  const size_t d = s->head_dim, width = 2 * d;
  const double w = s->Doubles(kv)[0];
  const float* m = s->Moments(kv);
  const RopePlanes planes{rope, d};
  RingCorrection c{0.0, 0.0};
  for (size_t i = 0; i < planes.Count(); ++i) {
    const size_t p = planes.First(i), r = planes.Second(i);
    const double ap = scale * q[p], ar = scale * q[r];
    const double rho2 = std::max(0.0, (double{m[p * width + p]} + m[r * width + r]) / w);
    const double z = std::sqrt((ap * ap + ar * ar) * rho2);
    const RingTerms t = RingAt(z);
    c.at_a += t.log_i0 - 0.25 * z * z;
    if (want_2a) c.at_2a += LogBesselI0(2.0 * z) - z * z;
    value_q[p] = static_cast<float>(t.shrink * q[p]);
    value_q[r] = static_cast<float>(t.shrink * q[r]);
  }
  return c;
}

}  // namespace

covattn_status CovarianceSummaryBytes(size_t n_heads, size_t d, size_t* bytes) {
  return CovStateBytes(n_heads, d, bytes);
}

size_t CovarianceFoldWorkBytes(size_t d) { return WorkspaceBytes(d); }

// Value queries [n][d], then a^T C_kk a and the two corrections per query
// (doubles, 8-byte aligned after an odd float).
size_t CovarianceReadoutWorkFloats(const covattn_cache_config& c, size_t n_q_heads) {
  if (c.rope == COVATTN_ROPE_NONE) return 0;
  return n_q_heads * c.head_dim + 1 + 6 * n_q_heads;
}

void CovarianceInit(covattn_cache* cache) {
  CovStateInit(State(cache), cache->layout.summary_bytes, cache->Heads(), cache->Dim(),
               cache->config.forgetting, covattn_cov_state::kIndependentHeads);
}

void CovarianceReset(covattn_cache* cache) { CovStateReset(State(cache)); }

void CovarianceFold(covattn_cache* cache, size_t h, const float* k, const float* v, size_t n,
                    void* work) {
  const size_t d = cache->Dim();
  covattn_cov_state* s = State(cache);
  CovUpdateHeads(s, CovBlock{COVATTN_F32, k, v, n, d, 0, d, 0, nullptr}, h, 1,
                 static_cast<float*>(work));
  // The state counts the tokens of its busiest head, which bounds every
  // head's weight.
  s->n_tokens = std::max(s->n_tokens, Head(cache, h).refresh->folded);
}

bool CovarianceReadout(const covattn_cache* cache, const SummaryQueries& q, float* work) {
  const covattn_cov_state* s = State(cache);
  const uint32_t rope = cache->config.rope;
  if (rope == COVATTN_ROPE_NONE) {
    return CovReadout(s, CovReadoutProblem{q.q, q.n_q_heads, q.scale, q.out, q.log_z, q.ess,
                                           nullptr, nullptr, q.first_kv_head, q.n_kv_heads});
  }
  const size_t d = s->head_dim, n = q.n_q_heads, group = n / q.n_kv_heads;
  float* value_q = work;
  auto* doubles =
      reinterpret_cast<double*>((reinterpret_cast<uintptr_t>(work + n * d) + 7) & ~uintptr_t{7});
  double* sigma2 = doubles;
  double* at_a = doubles + n;
  double* at_2a = doubles + 2 * n;
  for (size_t r = 0; r < n; ++r) {
    const RingCorrection c = RingQuery(s, rope, q.first_kv_head + r / group, q.q + r * d, q.scale,
                                       q.ess != nullptr, value_q + r * d);
    at_a[r] = c.at_a, at_2a[r] = c.at_2a;
  }
  bool finite = CovReadout(s, CovReadoutProblem{q.q, n, q.scale, q.out, nullptr, nullptr, value_q,
                                                sigma2, q.first_kv_head, q.n_kv_heads});
  for (size_t r = 0; r < n; ++r) {
    const double* head = s->Doubles(q.first_kv_head + r / group);
    const double w = head[0];
    if (w == 0.0) {  // nothing folded: no mass
      q.log_z[r] = -std::numeric_limits<float>::infinity();
      if (q.ess != nullptr) q.ess[r] = 0.0f;
      continue;
    }
    double a_mu = 0.0;
    for (size_t i = 0; i < d; ++i) a_mu += double{q.scale * q.q[r * d + i]} * head[1 + i];
    const double gauss = 0.5 * sigma2[r];
    const double psi = std::min(gauss, std::max(0.0, gauss + at_a[r]));
    q.log_z[r] = static_cast<float>(std::log(w) + a_mu + psi);
    finite &= std::isfinite(q.log_z[r]);
    if (q.ess != nullptr) {
      const double gauss_2a = 2.0 * sigma2[r];
      q.ess[r] = SummaryEss(w, psi, std::min(gauss_2a, std::max(0.0, gauss_2a + at_2a[r])));
    }
  }
  return finite;
}

void CovarianceKeyMoments(const covattn_cache* cache, size_t h, float* mean, float* cov) {
  CovExport(State(cache), h, CovExportOutputs{nullptr, mean, nullptr, cov, nullptr});
}

size_t CovarianceSerializedBytes(const covattn_cache* cache) {
  return CovSerializedBytes(State(cache));
}

void CovarianceSerialize(const covattn_cache* cache, unsigned char* p) {
  CovSerialize(State(cache), p);
}

covattn_status CovarianceLoad(covattn_cache* cache, const unsigned char* p, size_t size) {
  const covattn_status status = CovLoad(State(cache), p, size);
  return status == COVATTN_ERR_SHAPE_MISMATCH ? COVATTN_ERR_CORRUPT : status;
}

}  // namespace detail
}  // namespace covattn
