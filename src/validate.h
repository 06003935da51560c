// Argument checks shared by the C entry points: strided tensor layouts, size
// arithmetic that must not overflow, alignment and aliasing between buffers.
#ifndef COVATTN_SRC_VALIDATE_H_
#define COVATTN_SRC_VALIDATE_H_

#include <cstddef>
#include <cstdint>

#include "covattn/covattn.h"

// Returns the status of `expr` from the enclosing function unless it is
// COVATTN_OK: the validation steps of an entry point, in the order that
// decides which status a call with several faults gets.
#define COVATTN_RETURN_IF_ERROR(expr)                          \
  do {                                                         \
    const covattn_status covattn_status_ = (expr);             \
    if (covattn_status_ != COVATTN_OK) return covattn_status_; \
  } while (0)

namespace covattn {
namespace detail {

// Bytes of one element of a float dtype (f32, f16, bf16); 0 for any other
// value, COVATTN_INT8 included: the objects that store or absorb tokens (the
// covariance state, the bounded cache) and covattn_convert take these only.
size_t DtypeSize(uint32_t dtype);

// Bytes of one element of a dtype exact attention reads (the float ones and
// COVATTN_INT8); 0 for a value that is not a covattn_dtype.
size_t KvElementSize(uint32_t dtype);

// Byte range [begin, end) a buffer may touch; empty when begin == end.
struct Extent {
  uintptr_t begin = 0;
  uintptr_t end = 0;
  bool Overlaps(const Extent& other) const {
    return begin < end && other.begin < other.end && begin < other.end && other.begin < end;
  }
};

// A tensor of n_outer x n_inner vectors of `dim` contiguous elements, vector
// (a, b) starting at element a * outer_stride + b * inner_stride of `base`.
// Checks that no two vectors overlap (the strides nest), that the extent
// neither overflows size_t nor wraps the address space, and alignment.
// Empty tensors (a count of 0) are valid with any pointer.
covattn_status CheckTensor(const void* base, size_t elem_size, size_t n_outer, size_t outer_stride,
                           size_t n_inner, size_t inner_stride, size_t dim, Extent* extent);

// The bytes [p, p + bytes): COVATTN_ERR_SIZE_OVERFLOW if they would wrap the
// address space.
covattn_status MemoryExtent(const void* p, size_t bytes, Extent* extent);

// The byte ranges of a KV cache's tensors: K, V and an INT8 cache's scales
// (empty for the other dtypes).
struct KvExtents {
  Extent k, v, k_scale, v_scale;
  bool Overlaps(const Extent& e) const {
    return e.Overlaps(k) || e.Overlaps(v) || e.Overlaps(k_scale) || e.Overlaps(v_scale);
  }
};

// The tensors of a KV cache whose dtype is supported: K and V, and for
// INT8 the scales (kv.int8_scales, present when there is a (token, head)
// vector: one float per vector of each of K and V, no two sharing a float).
covattn_status CheckKvTensors(const covattn_kv_cache& kv, KvExtents* extents);

// A block of tokens for an object of n_heads KV heads of head_dim that
// occupies `object` (a covariance state, a bounded cache) to absorb: present,
// of a float dtype (or, with int8_ok, COVATTN_INT8 with valid scales), of the
// object's shape, with valid K and V tensors that do not overlap the object.
covattn_status CheckKvBlock(const covattn_kv_cache* block, size_t n_heads, size_t head_dim,
                            const Extent& object, KvExtents* extents, bool int8_ok = false);

// a * b and a + b into *out; true when the result overflowed (and *out is not it).
inline bool MulOverflows(size_t a, size_t b, size_t* out) {
  return __builtin_mul_overflow(a, b, out);
}
inline bool AddOverflows(size_t a, size_t b, size_t* out) {
  return __builtin_add_overflow(a, b, out);
}

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_VALIDATE_H_
