// The summary unit's dispatch on the summary kind (summary.h), and what the
// kinds share.

#include "summary.h"

#include <algorithm>
#include <cmath>

#include "cache.h"
#include "summary_kinds.h"

namespace covattn {
namespace detail {

covattn_status SummaryBytes(const covattn_cache_config& c, size_t* bytes) {
  switch (c.summary) {
    case COVATTN_SUMMARY_COVARIANCE:
      return CovarianceSummaryBytes(c.n_kv_heads, c.head_dim, bytes);
    case COVATTN_SUMMARY_COMPACT: {
      // Cannot overflow where the covariance state's size does not.
      size_t unused;
      COVATTN_RETURN_IF_ERROR(CovarianceSummaryBytes(c.n_kv_heads, c.head_dim, &unused));
      *bytes = CompactSummaryBytes(c.n_kv_heads, c.head_dim);
      return COVATTN_OK;
    }
    default:
      *bytes = 0;
      return COVATTN_OK;
  }
}

size_t SummaryFoldWorkBytes(const covattn_cache_config& c) {
  return c.summary == COVATTN_SUMMARY_COVARIANCE ? CovarianceFoldWorkBytes(c.head_dim) : 0;
}

size_t SummaryReadoutWorkFloats(const covattn_cache_config& c, size_t n_q_heads) {
  return c.summary == COVATTN_SUMMARY_COVARIANCE ? CovarianceReadoutWorkFloats(c, n_q_heads) : 0;
}

void SummaryInit(covattn_cache* cache) {
  if (cache->config.summary == COVATTN_SUMMARY_COVARIANCE) CovarianceInit(cache);
  SummaryReset(cache);
}

void SummaryReset(covattn_cache* cache) {
  switch (cache->config.summary) {
    case COVATTN_SUMMARY_COVARIANCE:
      CovarianceReset(cache);
      break;
    case COVATTN_SUMMARY_COMPACT:
      CompactReset(cache);
      break;
    default:
      break;
  }
}

void SummaryFold(covattn_cache* cache, size_t h, const float* k, const float* v, size_t n,
                 void* work) {
  if (cache->config.summary == COVATTN_SUMMARY_COVARIANCE) {
    CovarianceFold(cache, h, k, v, n, work);
  } else {
    CompactFold(cache, h, k, v, n);
  }
}

bool SummaryReadout(const covattn_cache* cache, const SummaryQueries& queries, float* work) {
  return cache->config.summary == COVATTN_SUMMARY_COVARIANCE
             ? CovarianceReadout(cache, queries, work)
             : CompactReadout(cache, queries);
}

void SummaryKeyMoments(const covattn_cache* cache, size_t h, float* mean, float* cov) {
  if (cache->config.summary == COVATTN_SUMMARY_COVARIANCE) {
    CovarianceKeyMoments(cache, h, mean, cov);
  } else {
    CompactKeyMoments(cache, h, mean, cov);
  }
}

size_t SummarySerializedBytes(const covattn_cache* cache) {
  switch (cache->config.summary) {
    case COVATTN_SUMMARY_COVARIANCE:
      return CovarianceSerializedBytes(cache);
    case COVATTN_SUMMARY_COMPACT:
      return CompactSerializedBytes(cache);
    default:
      return 0;
  }
}

void SummarySerialize(const covattn_cache* cache, unsigned char* p) {
  if (cache->config.summary == COVATTN_SUMMARY_COVARIANCE) {
    CovarianceSerialize(cache, p);
  } else if (cache->config.summary == COVATTN_SUMMARY_COMPACT) {
    CompactSerialize(cache, p);
  }
}

covattn_status SummaryLoad(covattn_cache* cache, const unsigned char* p, size_t size,
                           const unsigned char* fold_counts, size_t fold_stride) {
  switch (cache->config.summary) {
    case COVATTN_SUMMARY_COVARIANCE:
      return CovarianceLoad(cache, p, size);
    case COVATTN_SUMMARY_COMPACT:
      return CompactLoad(cache, p, size, fold_counts, fold_stride);
    default:
      return size == 0 ? COVATTN_OK : COVATTN_ERR_CORRUPT;
  }
}

float SummaryEss(double weight, double psi_a, double psi_2a) {
  return static_cast<float>(weight * std::exp(std::min(0.0, 2.0 * psi_a - psi_2a)));
}

}  // namespace detail
}  // namespace covattn
