// The bounded cache's summary of the tokens it folds (include/covattn/cache.h,
// MATH.md sections 2, 4 and 6): what the cache's units ask of it, whatever
// its kind. Each head folds its own tokens.
//
//   summary_covariance.cc  the covariance state, Gaussian or ring-corrected
//   summary_compact.cc     weight, means and per-dimension key variances
//   summary.cc             the dispatch on the kind, shared checks
#ifndef COVATTN_SRC_SUMMARY_H_
#define COVATTN_SRC_SUMMARY_H_

#include <cstddef>
#include <cstdint>

#include "covattn/cache.h"

namespace covattn {
namespace detail {

// Bytes of the summary region of a normalized config (0 without a summary).
covattn_status SummaryBytes(const covattn_cache_config& c, size_t* bytes);
// Bytes of append scratch a fold needs.
size_t SummaryFoldWorkBytes(const covattn_cache_config& c);
// Floats of decode scratch a readout of n_q_heads queries needs.
size_t SummaryReadoutWorkFloats(const covattn_cache_config& c, size_t n_q_heads);

// Makes the empty summary in the cache's summary region; forgets everything.
void SummaryInit(covattn_cache* cache);
void SummaryReset(covattn_cache* cache);

// Folds n rows (f32 K and V, head_dim apart) into head h; work holds
// SummaryFoldWorkBytes() bytes.
void SummaryFold(covattn_cache* cache, size_t h, const float* k, const float* v, size_t n,
                 void* work);

// The summary's part of a decode: for each query of KV heads [first_kv_head,
// first_kv_head + n_kv_heads), the readout r_S (out), log Z_S and the
// effective sample size (ess may be null). A head that has folded nothing
// gives log Z_S = -inf, ESS 0 and zeros. False if a result is not finite.
// work holds SummaryReadoutWorkFloats() floats.
struct SummaryQueries {
  const float* q;  // [n_q_heads][head_dim]
  size_t n_q_heads;
  float scale;  // already defaulted
  float* out;   // [n_q_heads][head_dim]
  float* log_z;
  float* ess;
  size_t first_kv_head, n_kv_heads;  // the queries' heads
};
bool SummaryReadout(const covattn_cache* cache, const SummaryQueries& queries, float* work);

// Head h's key mean and covariance (d x d, row-major), for the outlier
// whitening; the head has folded tokens.
void SummaryKeyMoments(const covattn_cache* cache, size_t h, float* mean, float* cov);

// The file section: its bytes, writing it, and loading one: every check on
// `size` bytes at p (given each head's fold count, folded[h] at
// fold_counts + h * fold_stride, little-endian u64), then the copy; a refused
// section leaves the cache as it was and returns COVATTN_ERR_CORRUPT (or the
// covariance state's own load status).
size_t SummarySerializedBytes(const covattn_cache* cache);
void SummarySerialize(const covattn_cache* cache, unsigned char* p);
covattn_status SummaryLoad(covattn_cache* cache, const unsigned char* p, size_t size,
                           const unsigned char* fold_counts, size_t fold_stride);

// The log-MGF psi(a) of the centred keys (log Z_S = log W + a.mu_k + psi)
// and the effective sample size W e^(2 psi(a) - psi(2a)) (MATH.md section 6)
// from psi at a and at 2a: clamped to [0, W] (their true values are).
float SummaryEss(double weight, double psi_a, double psi_2a);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_SUMMARY_H_
