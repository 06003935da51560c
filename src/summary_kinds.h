// The two kinds of summary behind summary.h's dispatch: the covariance state
// (summary_covariance.cc) and the compact summary (summary_compact.cc). Same
// contracts as the summary.h functions of the same names.
#ifndef COVATTN_SRC_SUMMARY_KINDS_H_
#define COVATTN_SRC_SUMMARY_KINDS_H_

#include <cstddef>

#include "summary.h"

namespace covattn {
namespace detail {

covattn_status CovarianceSummaryBytes(size_t n_heads, size_t d, size_t* bytes);
size_t CovarianceFoldWorkBytes(size_t d);
size_t CovarianceReadoutWorkFloats(const covattn_cache_config& c, size_t n_q_heads);
void CovarianceInit(covattn_cache* cache);
void CovarianceReset(covattn_cache* cache);
void CovarianceFold(covattn_cache* cache, size_t h, const float* k, const float* v, size_t n,
                    void* work);
bool CovarianceReadout(const covattn_cache* cache, const SummaryQueries& q, float* work);
void CovarianceKeyMoments(const covattn_cache* cache, size_t h, float* mean, float* cov);
size_t CovarianceSerializedBytes(const covattn_cache* cache);
void CovarianceSerialize(const covattn_cache* cache, unsigned char* p);
covattn_status CovarianceLoad(covattn_cache* cache, const unsigned char* p, size_t size);

size_t CompactSummaryBytes(size_t n_heads, size_t d);
void CompactReset(covattn_cache* cache);
void CompactFold(covattn_cache* cache, size_t h, const float* k, const float* v, size_t n);
bool CompactReadout(const covattn_cache* cache, const SummaryQueries& q);
void CompactKeyMoments(const covattn_cache* cache, size_t h, float* mean, float* cov);
size_t CompactSerializedBytes(const covattn_cache* cache);
void CompactSerialize(const covattn_cache* cache, unsigned char* p);
covattn_status CompactLoad(covattn_cache* cache, const unsigned char* p, size_t size,
                           const unsigned char* fold_counts, size_t fold_stride);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_SUMMARY_KINDS_H_
