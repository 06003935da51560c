// What the retention unit (retention.h) asks of its per-target kernel
// (retention_kernels.cc): the softmax weights a decode gave exact tokens.
#ifndef COVATTN_SRC_RETENTION_KERNELS_H_
#define COVATTN_SRC_RETENTION_KERNELS_H_

#include <cstddef>
#include <cstdint>

namespace covattn {
namespace detail {

// weights[j] = sum_r min(1, exp(a_r . k_j - log_z[r])) for n token rows k_j
// (dtype elements, `stride` elements apart, dim each; int8 rows as the
// cache stores them, with their scale: CacheRowsToF32) and n_rows scaled
// queries a_r ([n_rows][dim]); a row whose difference is not a number (an
// overflowed score, or log_z = +inf) adds nothing.
void ExactTokenWeights(uint32_t dtype, const void* k, size_t stride, size_t n, size_t dim,
                       const float* a, size_t n_rows, const float* log_z, float* weights);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_RETENTION_KERNELS_H_
