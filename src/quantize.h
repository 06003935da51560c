// The int8 quantisation of covattn_quantize_int8 (MATH.md section 7), for
// the library's own stores of int8 vectors (the bounded cache).
#ifndef COVATTN_SRC_QUANTIZE_H_
#define COVATTN_SRC_QUANTIZE_H_

#include <cstddef>
#include <cstdint>

namespace covattn {
namespace detail {

// q[0..dim) and *scale for dim finite values, as covattn_quantize_int8.
void QuantizeInt8Vector(const float* x, size_t dim, int8_t* q, float* scale);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_QUANTIZE_H_
