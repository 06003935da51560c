// The covariance state's memory layout, shared by the C API (covariance.cc) and
// the per-target kernels (covariance_kernels.cc). MATH.md sections 2 and 3.
//
// One block of memory, its start rounded up to 64 bytes:
//
//   header      this struct, padded to kHeaderBytes (128 bytes)
//   head 0..H-1 each kHeadBytes(d): the weight W and the means mu = [mu_k; mu_v]
//               as 1 + 2d doubles (padded to 64 bytes), then the co-moments
//               M as d rows of 2d floats, row j = [M_kk[j][0..d) | M_kv[j][0..d)]
//               with M_kv[j][i] = sum w (k_j - mu_kj)(v_i - mu_vi), followed
//               by kVectorSlackBytes of zeros so that a vector load at the end
//               of the last row stays inside the head (padded to 64 bytes)
// The block update's workspace (WorkspaceBytes(d)) is the caller's scratch.
//
// Why these choices (see also docs/covariance.md):
// - M_kk is stored full (d x d, kept exactly symmetric) rather than packed:
//   the readout then computes y = a^T [M_kk | M_kv] as one vector-matrix
//   product over contiguous rows (C_kk a and C_vk a together, no horizontal
//   sums), and the update's GEMM writes whole register tiles. Packed storage
//   would save d(d-1)/2 floats per head (25%) at the price of irregular rows.
// - The weight and the means are f64: a long stream whose mean is far from
//   zero (|mu| >> sigma) rounds an f32 mean by u |mu| at every merge, and that
//   error feeds back into M through the Chan correction term; in f64 the mean
//   is exact to f32 precision after 10^9 merges. They are 2d + 1 numbers per
//   head, against 2d^2 co-moments, so their cost is negligible.
// - M is f32 (the readout streams it; f32 halves its memory and traffic).
//   Blocks are centred on their own mean and merged (Chan et al.), so M never
//   holds raw sums of products.
#ifndef COVATTN_SRC_COVARIANCE_STATE_H_
#define COVATTN_SRC_COVARIANCE_STATE_H_

#include <cstddef>
#include <cstdint>

namespace covattn {
namespace detail {

constexpr size_t kAlign = 64;
// Largest vector of any target (SVE allows 2048 bits): loads may run this far
// past the last element of a head's co-moments or of a workspace array.
constexpr size_t kVectorSlackBytes = 256;
constexpr size_t kMaxLanesF32 = kVectorSlackBytes / sizeof(float);
// Tokens per sub-block of a block update: the GEMM's packed operand of one
// column panel (at most 64 f32 columns x 128 tokens = 32 KiB on AVX-512)
// stays in L1 while every row tile streams past it.
constexpr size_t kSubBlockTokens = 128;
// Inputs whose magnitude exceeds this are refused like NaN: their squares,
// summed over 2^40 tokens, would overflow the f32 co-moments.
constexpr float kMaxInputMagnitude = 1099511627776.0f;  // 2^40

constexpr size_t RoundUp(size_t x, size_t to) { return (x + to - 1) / to * to; }

// Bytes of the doubles (W, mu) and of the co-moments of one head.
constexpr size_t HeadDoublesBytes(size_t dim) { return RoundUp(8 * (1 + 2 * dim), kAlign); }
constexpr size_t HeadMomentsBytes(size_t dim) {
  return RoundUp(4 * 2 * dim * dim + kVectorSlackBytes, kAlign);
}
constexpr size_t HeadBytes(size_t dim) { return HeadDoublesBytes(dim) + HeadMomentsBytes(dim); }

// Workspace of the block update, in floats (each array padded for vector
// over-reads): the packed, centred sub-block [kSubBlockTokens][2d rounded up
// to a vector], then five arrays of 2d + padding (one token's row, the shift,
// the sqrt weights, the merge vector u, the block mean) and the per-token
// weights.
constexpr size_t WorkspaceRowFloats(size_t dim) { return 2 * dim + 2 * kMaxLanesF32; }
constexpr size_t WorkspaceBytes(size_t dim) {
  return RoundUp(4 * (kSubBlockTokens * WorkspaceRowFloats(dim) + 5 * WorkspaceRowFloats(dim) +
                      kSubBlockTokens + kMaxLanesF32),
                 kAlign);
}

// A pointer-free view of one state for the kernels.
struct CovShape {
  size_t n_heads;
  size_t dim;
  float forgetting;
};

struct CovHead {
  double* weight;  // W
  double* mean;    // [2d]: mu_k then mu_v
  float* m;        // [d][2d]
};

}  // namespace detail
}  // namespace covattn

// The state object itself (opaque in the public header). It lives at the
// start of its (aligned) memory; everything else is found from `this`.
struct covattn_cov_state {
  uint64_t magic;
  void* allocation;                    // what covattn_cov_state_create allocated, else nullptr
  uintptr_t memory_begin, memory_end;  // the caller's whole block, for aliasing checks
  size_t n_heads, head_dim;
  float forgetting;
  uint64_t n_tokens;
  // kIndependentHeads: heads may hold different weights (the bounded cache
  // folds different tokens into different heads); otherwise every head has
  // seen every token. Serialized, and must match on load.
  uint32_t flags;

  static constexpr uint32_t kIndependentHeads = 1;
  static constexpr size_t kHeaderBytes = 128;

  unsigned char* HeadBase(size_t h) {
    return reinterpret_cast<unsigned char*>(this) + kHeaderBytes +
           h * covattn::detail::HeadBytes(head_dim);
  }
  const unsigned char* HeadBase(size_t h) const {
    return const_cast<covattn_cov_state*>(this)->HeadBase(h);
  }
  covattn::detail::CovHead Head(size_t h) {
    unsigned char* base = HeadBase(h);
    double* doubles = reinterpret_cast<double*>(base);
    return {doubles, doubles + 1,
            reinterpret_cast<float*>(base + covattn::detail::HeadDoublesBytes(head_dim))};
  }
  const float* Moments(size_t h) const {
    return reinterpret_cast<const float*>(HeadBase(h) +
                                          covattn::detail::HeadDoublesBytes(head_dim));
  }
  const double* Doubles(size_t h) const { return reinterpret_cast<const double*>(HeadBase(h)); }
  covattn::detail::CovShape Shape() const { return {n_heads, head_dim, forgetting}; }
};

#endif  // COVATTN_SRC_COVARIANCE_STATE_H_
