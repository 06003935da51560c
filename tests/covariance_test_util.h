// Helpers for the covariance-state tests: an owning state, blocks as views
// into a TestCache, a double-precision two-pass reference of the (weighted)
// statistics, and the error model of the f32 state against it.
#ifndef COVATTN_TESTS_COV_TEST_UTIL_H_
#define COVATTN_TESTS_COV_TEST_UTIL_H_

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "covattn/covariance.h"
#include "test_util.h"

namespace covattn_test {

struct StateDeleter {
  void operator()(covattn_cov_state* s) const { covattn_cov_state_destroy(s); }
};
using StatePtr = std::unique_ptr<covattn_cov_state, StateDeleter>;

inline StatePtr MakeState(size_t n_heads, size_t dim, float forgetting = 1.0f) {
  covattn_cov_state* s = nullptr;
  REQUIRE(covattn_cov_state_create(n_heads, dim, forgetting, &s) == COVATTN_OK);
  return StatePtr(s);
}

// Tokens [t0, t0 + n) of a cache view, as a block. An int8 view's scales
// move too: the sliced scales live until the end of the test program.
inline covattn_kv_cache Slice(const covattn_kv_cache& view, size_t t0, size_t n) {
  const size_t elem = view.dtype == COVATTN_F32 ? 4 : view.dtype == COVATTN_INT8 ? 1 : 2;
  covattn_kv_cache s = view;
  s.k = static_cast<const uint8_t*>(view.k) + t0 * view.k_token_stride * elem;
  s.v = static_cast<const uint8_t*>(view.v) + t0 * view.v_token_stride * elem;
  s.n_tokens = n;
  if (view.dtype == COVATTN_INT8 && view.int8_scales != nullptr) {
    static std::deque<covattn_int8_scales> slices;  // a deque never moves its elements
    covattn_int8_scales scales = *view.int8_scales;
    scales.k_scale += t0 * scales.k_token_stride;
    scales.v_scale += t0 * scales.v_token_stride;
    slices.push_back(scales);
    s.int8_scales = &slices.back();
  }
  return s;
}

// Scratch for updates and merges of a state (its head_dim's size).
inline std::vector<uint8_t> CovScratch(const covattn_cov_state* s) {
  covattn_cov_info info;
  REQUIRE(covattn_cov_state_info(s, &info) == COVATTN_OK);
  size_t bytes = 0;
  REQUIRE(covattn_cov_state_scratch_size(info.head_dim, &bytes) == COVATTN_OK);
  return std::vector<uint8_t>(bytes);
}

// One scratch buffer per thread for the helpers below, grown to the largest
// need seen: the streams of 10^6 single-token updates would otherwise
// allocate and clear a workspace per token (minutes under TSan).
inline std::vector<uint8_t>& SharedCovScratch(const covattn_cov_state* s) {
  thread_local std::vector<uint8_t> scratch;
  covattn_cov_info info;
  size_t bytes = 0;
  if (covattn_cov_state_info(s, &info) != COVATTN_OK ||
      covattn_cov_state_scratch_size(info.head_dim, &bytes) != COVATTN_OK) {
    FAIL("covattn_cov_state_info or covattn_cov_state_scratch_size failed");
  }
  if (scratch.size() < bytes) scratch.resize(bytes);
  return scratch;
}

inline covattn_status UpdateStatus(covattn_cov_state* s, const covattn_kv_cache* block) {
  std::vector<uint8_t>& scratch = SharedCovScratch(s);
  return covattn_cov_state_update(s, block, scratch.data(), scratch.size());
}

inline covattn_status MergeStatus(covattn_cov_state* into, const covattn_cov_state* other) {
  std::vector<uint8_t>& scratch = SharedCovScratch(into);
  return covattn_cov_state_merge(into, other, scratch.data(), scratch.size());
}

inline void Update(covattn_cov_state* s, const covattn_kv_cache& view, size_t t0, size_t n) {
  const covattn_kv_cache block = Slice(view, t0, n);
  const covattn_status status = UpdateStatus(s, &block);
  if (status != COVATTN_OK) REQUIRE(status == COVATTN_OK);  // an assertion per token is slow
}

// One head's statistics as the library exports them.
struct Exported {
  double weight = 0.0;
  std::vector<float> mean_k, mean_v, cov_kk, cov_vk;
};

inline Exported Export(const covattn_cov_state* s, size_t head, size_t dim) {
  Exported e;
  e.mean_k.resize(dim), e.mean_v.resize(dim), e.cov_kk.resize(dim * dim),
      e.cov_vk.resize(dim * dim);
  REQUIRE(covattn_cov_state_export(s, head, &e.weight, e.mean_k.data(), e.mean_v.data(),
                                   e.cov_kk.data(), e.cov_vk.data()) == COVATTN_OK);
  return e;
}

// Weighted statistics in double, two passes (mean, then centred products):
// token t of [begin, end) weighs lambda^(end - 1 - t).
struct Reference {
  size_t dim = 0;
  double weight = 0.0;
  std::vector<double> mean_k, mean_v;
  std::vector<double> cov_kk, cov_vk, var_v;  // [dim][dim], [v dim][k dim], [dim]
};

template <class GetK, class GetV>
Reference ComputeReference(size_t dim, size_t begin, size_t end, double lambda, GetK k, GetV v) {
  Reference r;
  r.dim = dim;
  r.mean_k.assign(dim, 0.0), r.mean_v.assign(dim, 0.0);
  r.cov_kk.assign(dim * dim, 0.0), r.cov_vk.assign(dim * dim, 0.0), r.var_v.assign(dim, 0.0);
  std::vector<double> w(end - begin);
  double wt = 1.0;
  for (size_t t = end; t-- > begin;) w[t - begin] = wt, r.weight += wt, wt *= lambda;
  for (size_t t = begin; t < end; ++t) {
    for (size_t i = 0; i < dim; ++i) {
      r.mean_k[i] += w[t - begin] * k(t, i);
      r.mean_v[i] += w[t - begin] * v(t, i);
    }
  }
  for (size_t i = 0; i < dim; ++i) r.mean_k[i] /= r.weight, r.mean_v[i] /= r.weight;
  std::vector<double> ck(dim), cv(dim);
  for (size_t t = begin; t < end; ++t) {
    const double wt_t = w[t - begin];
    for (size_t i = 0; i < dim; ++i) ck[i] = k(t, i) - r.mean_k[i], cv[i] = v(t, i) - r.mean_v[i];
    for (size_t i = 0; i < dim; ++i) {
      r.var_v[i] += wt_t * cv[i] * cv[i];
      for (size_t j = 0; j < dim; ++j) {
        r.cov_kk[i * dim + j] += wt_t * ck[i] * ck[j];
        r.cov_vk[i * dim + j] += wt_t * cv[i] * ck[j];
      }
    }
  }
  for (double& x : r.cov_kk) x /= r.weight;
  for (double& x : r.cov_vk) x /= r.weight;
  for (double& x : r.var_v) x /= r.weight;
  return r;
}

// Head h of tokens [begin, end) of a TestCache.
inline Reference CacheReference(const TestCache& c, size_t h, size_t begin, size_t end,
                                double lambda = 1.0) {
  return ComputeReference(
      c.dim(), begin, end, lambda, [&](size_t t, size_t i) { return c.K(t, h, i); },
      [&](size_t t, size_t i) { return c.V(t, h, i); });
}

// The error model of the f32 state (u = 2^-24), per element, relative to the
// scale of the variables involved, sqrt(C_ii C_jj) (Cauchy-Schwarz bounds
// every partial sum of centred products by it):
//  - a block's co-moments: sums of at most 128 products (the sub-block) of
//    centred values that carry ~3 roundings each; with rounding errors as
//    independent random variables (Higham, section 2.8), 4 standard
//    deviations: 4 u (3 + sqrt(128));
//  - each merge into the state rounds twice (decay M + block, + u u^T) and
//    each rank-1 step the same: 4 u sqrt(2 merges);
//  - the export's division by W: u.
// Means: the f32 sums of a sub-block (4 u sqrt(128) sigma), plus the
// export's rounding u |mu|.
struct Tolerance {
  double cov;   // relative to sqrt(C_ii C_jj)
  double mean;  // relative to sigma_i
};

inline Tolerance StateTolerance(size_t n_merges) {
  return Tolerance{4 * kU * (3 + std::sqrt(128.0) + std::sqrt(2.0 * n_merges)) + kU,
                   4 * kU * (2 + std::sqrt(128.0))};
}

// Compares an exported head with the reference; reports the worst element.
inline void CheckStats(const Exported& e, const Reference& r, const Tolerance& tol,
                       double lambda = 1.0) {
  const size_t dim = r.dim;
  // W: exact for lambda = 1 (sums of integers); else f32 weights per token.
  CHECK(std::fabs(e.weight - r.weight) <= (lambda == 1.0 ? 0.0 : 4 * kU * r.weight));
  double worst = 0.0;
  std::string where;
  auto check = [&](double got, double want, double bound, const char* what, size_t i, size_t j) {
    const double ratio = std::fabs(got - want) / bound;
    if (!(ratio <= worst)) {
      worst = ratio;
      where = std::string(what) + "[" + std::to_string(i) + "][" + std::to_string(j) + "]: got " +
              std::to_string(got) + " want " + std::to_string(want) + " bound " +
              std::to_string(bound);
    }
  };
  for (size_t i = 0; i < dim; ++i) {
    const double sk = std::sqrt(r.cov_kk[i * dim + i]), sv = std::sqrt(r.var_v[i]);
    check(e.mean_k[i], r.mean_k[i], tol.mean * sk + kU * std::fabs(r.mean_k[i]) + 1e-300, "mean_k",
          i, 0);
    check(e.mean_v[i], r.mean_v[i], tol.mean * sv + kU * std::fabs(r.mean_v[i]) + 1e-300, "mean_v",
          i, 0);
    for (size_t j = 0; j < dim; ++j) {
      const double skj = std::sqrt(r.cov_kk[j * dim + j]);
      check(e.cov_kk[i * dim + j], r.cov_kk[i * dim + j], tol.cov * sk * skj + 1e-300, "cov_kk", i,
            j);
      check(e.cov_vk[i * dim + j], r.cov_vk[i * dim + j], tol.cov * sv * skj + 1e-300, "cov_vk", i,
            j);
    }
  }
  INFO(where);
  CHECK(worst <= 1.0);
}

// True when the kernels run on an emulated aarch64 CPU (qemu-user in
// scripts/test), where SVE runs ~50x slower: long tests scale down.
inline bool ArmTargets() {
  const char* best = covattn_available_target(0);
  return best != nullptr &&
         (std::string(best).rfind("SVE", 0) == 0 || std::string(best).rfind("NEON", 0) == 0);
}

}  // namespace covattn_test

#endif  // COVATTN_TESTS_COV_TEST_UTIL_H_
