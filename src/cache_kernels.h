// What the bounded cache (cache.cc) asks of its per-target kernels
// (cache_kernels.cc).
#ifndef COVATTN_SRC_CACHE_KERNELS_H_
#define COVATTN_SRC_CACHE_KERNELS_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace covattn {
namespace detail {

// A stored int8 vector (cache.h, StoredVectorBytes) holds its f32 scale at
// this byte offset, after its dim elements padded to 4 bytes.
inline size_t Int8ScaleOffset(size_t dim) { return (dim + 3) / 4 * 4; }

// The scale of the stored int8 vector at `vector` (dim elements).
inline float StoredInt8Scale(const int8_t* vector, size_t dim) {
  float scale;
  std::memcpy(&scale, reinterpret_cast<const unsigned char*>(vector) + Int8ScaleOffset(dim),
              sizeof(scale));
  return scale;
}

// dst[r][0..dim) = row r of src (dtype elements, rows `stride` elements
// apart) as f32; dst rows are ld floats apart. An int8 row is a stored int8
// vector: its elements times its scale.
void CacheRowsToF32(uint32_t dtype, const void* src, size_t stride, size_t n, size_t dim,
                    float* dst, size_t ld);

// out[r] = ||W (row_r - mean)||^2 for n f32 rows (ld apart), saturated at
// FLT_MAX, where W = L^-1 for the Cholesky factor L of the key covariance,
// given as W^T: dim x dim bf16 bits, row-major, zero below the diagonal.
// work holds kMahalanobisRows * dim floats.
constexpr size_t kMahalanobisRows = 4;
void CacheMahalanobis(const uint16_t* wt, const float* mean, const float* rows, size_t ld, size_t n,
                      size_t dim, float* work, float* out);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_CACHE_KERNELS_H_
