// Little-endian encoding and the FNV-1a checksum of the serialized objects
// (covariance state, bounded cache).
#ifndef COVATTN_SRC_BYTES_H_
#define COVATTN_SRC_BYTES_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace covattn {
namespace detail {

inline uint64_t Fnv1a(const unsigned char* p, size_t n, uint64_t hash = 0xcbf29ce484222325ull) {
  for (size_t i = 0; i < n; ++i) {
    hash ^= p[i];
    hash *= 0x100000001b3ull;
  }
  return hash;
}

inline void PutLE(unsigned char* p, uint64_t x, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) p[i] = static_cast<unsigned char>(x >> (8 * i));
}

inline uint64_t GetLE(const unsigned char* p, size_t bytes) {
  uint64_t x = 0;
  for (size_t i = 0; i < bytes; ++i) x |= uint64_t{p[i]} << (8 * i);
  return x;
}

// Copies n elements of `elem` bytes between host order and little-endian.
inline void CopyLE(unsigned char* dst, const unsigned char* src, size_t n, size_t elem) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  (void)elem;
  std::memcpy(dst, src, n * elem);
#else
  for (size_t i = 0; i < n; ++i) {
    for (size_t b = 0; b < elem; ++b) dst[i * elem + b] = src[i * elem + elem - 1 - b];
  }
#endif
}

inline float F32FromLE(const unsigned char* p) {
  const uint32_t bits = static_cast<uint32_t>(GetLE(p, 4));
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline double F64FromLE(const unsigned char* p) {
  const uint64_t bits = GetLE(p, 8);
  double x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

inline void PutF32LE(unsigned char* p, float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  PutLE(p, bits, 4);
}

inline void PutF64LE(unsigned char* p, double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  PutLE(p, bits, 8);
}

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_BYTES_H_
