// The bounded cache's outlier policy (include/covattn/cache.h, docs/cache.md,
// retention.h): per KV head, the keys a Gaussian summary would misrepresent
// most, ranked by their squared Mahalanobis distance under the summary's key
// covariance. The whitening W = L^-1 (C_kk = L L^T) is rebuilt as the summary
// grows; a compact summary gives a diagonal C_kk.

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cache.h"
#include "half.h"
#include "retention.h"
#include "summary.h"

namespace covattn {
namespace detail {
namespace {

// Outlier scores need a covariance estimate: the whitening is first built once
// a head's summary holds this many tokens (at least 2 per dimension).
constexpr uint64_t kMinTokensForWhitening = 32;
// After that it is rebuilt when the summary has doubled, and at least every
// kMaxRefreshInterval folded tokens (forgetting keeps the weight bounded).
constexpr uint64_t kMaxRefreshInterval = 8192;

bool WhiteningDue(const covattn_cache* cache, size_t h) {
  const RefreshState* r = Head(cache, h).refresh;
  if (r->folded < std::max<uint64_t>(kMinTokensForWhitening, 2 * cache->Dim())) return false;
  if (r->folded_at_refresh == 0) return true;
  const uint64_t since = r->folded - r->folded_at_refresh;
  return since >= std::min<uint64_t>(kMaxRefreshInterval, r->folded_at_refresh);
}

// chol <- the lower Cholesky factor L of cov + jitter I (d x d, row-major).
// Jitter relative to the average variance keeps the factorisation defined
// for keys confined to a subspace; it grows until the factor exists.
void FactorWithJitter(const float* cov, size_t d, double* chol) {
  double trace = 0.0;
  for (size_t i = 0; i < d; ++i) trace += std::max(0.0, double{cov[i * d + i]});
  double jitter = std::max(1e-6 * trace / d, 1e-12);
  for (int attempt = 0; attempt < 12; ++attempt, jitter *= 10.0) {
    bool ok = true;
    for (size_t i = 0; i < d && ok; ++i) {
      for (size_t j = 0; j <= i; ++j) {
        double sum = double{cov[i * d + j]} + (i == j ? jitter : 0.0);
        for (size_t p = 0; p < j; ++p) sum -= chol[i * d + p] * chol[j * d + p];
        if (i == j) {
          if (!(sum > 0.0)) {
            ok = false;
            break;
          }
          chol[i * d + i] = std::sqrt(sum);
        } else {
          chol[i * d + j] = sum / chol[j * d + j];
        }
      }
    }
    if (ok) break;
  }
}

// W = L^-1, lower triangular, in place, column by column:
// W[j][j] = 1 / L[j][j];  W[i][j] = -(sum_{p=j}^{i-1} L[i][p] W[p][j]) / L[i][i].
// Column j needs only columns >= j of L, which are still intact.
void InvertLower(size_t d, double* chol) {
  for (size_t j = 0; j < d; ++j) {
    chol[j * d + j] = 1.0 / chol[j * d + j];
    for (size_t i = j + 1; i < d; ++i) {
      double sum = 0.0;
      for (size_t p = j; p < i; ++p) sum += chol[i * d + p] * chol[p * d + j];
      chol[i * d + j] = -sum / chol[i * d + i];
    }
  }
}

// Rebuilds head h's whitening from the summary's key covariance, then
// rescores the resident outliers under it.
void RefreshWhitening(covattn_cache* cache, size_t h, const AppendScratch& scratch) {
  const size_t d = cache->Dim();
  const AppendScratchLayout& l = cache->append_scratch;
  float* cov = scratch.At<float>(l.refresh_cov);
  float* mean = scratch.At<float>(l.refresh_mean);
  double* chol = scratch.At<double>(l.refresh_factor);
  SummaryKeyMoments(cache, h, mean, cov);
  FactorWithJitter(cov, d, chol);
  InvertLower(d, chol);
  // W^T[j][i] = W[i][j], zero below the diagonal, as bf16.
  const HeadRegions<covattn_cache> head = Head(cache, h);
  uint16_t* wt = head.whitening;
  for (size_t j = 0; j < d; ++j) {
    for (size_t i = 0; i < d; ++i) {
      wt[j * d + i] = i < j ? 0 : BF16BitsFromF32(static_cast<float>(chol[i * d + j]));
    }
  }
  std::memcpy(head.whitening_mean, mean, d * sizeof(float));
  head.refresh->folded_at_refresh = head.refresh->folded;
  // Rescore residents under the new whitening.
  const size_t count = *head.count;
  float* rows = scratch.At<float>(l.fold_k);  // free between folds
  float* work = scratch.At<float>(l.mahalanobis);
  for (size_t s0 = 0; s0 < count; s0 += kAppendBatch) {
    const size_t n = std::min(kAppendBatch, count - s0);
    StoredRowsToF32(cache, Outliers(cache, h, s0).k, cache->VecStride(), n, rows, d);
    CacheMahalanobis(head.whitening, head.whitening_mean, rows, d, n, d, work, head.scores + s0);
  }
}

}  // namespace

const RetentionPolicy kOutlierPolicy{"mahalanobis", nullptr, false};

void OfferToOutliers(covattn_cache* cache, size_t h, const StageRows& in, StageRows* out,
                     const AppendScratch& scratch) {
  const size_t d = cache->Dim();
  float* dist = scratch.At<float>(cache->append_scratch.distances);
  const HeadRegions<covattn_cache> head = Head(cache, h);
  if (head.refresh->folded_at_refresh != 0) {
    CacheMahalanobis(head.whitening, head.whitening_mean, in.k, d, in.n, d,
                     scratch.At<float>(cache->append_scratch.mahalanobis), dist);
  } else {
    std::fill(dist, dist + in.n, 0.0f);  // no covariance yet: first come, first kept
  }
  AdmitToSlots(cache, OutlierSlots(cache, h), kOutlierPolicy, in, dist, out);
}

void RefreshWhiteningIfDue(covattn_cache* cache, size_t h, const AppendScratch& scratch) {
  if (WhiteningDue(cache, h)) RefreshWhitening(cache, h, scratch);
}

}  // namespace detail
}  // namespace covattn
