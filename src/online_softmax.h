// One row of an online-softmax partial state (m, l, o), MATH.md section 1:
// merging two rows and finalising one, written once for the attention
// kernels, the partial-state entry points and the bounded cache's decode.
#ifndef COVATTN_SRC_ONLINE_SOFTMAX_H_
#define COVATTN_SRC_ONLINE_SOFTMAX_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

namespace covattn {
namespace detail {

// Finite initial running max: never -inf, so that differences of two maxima
// are never inf - inf.
constexpr float kInitialMax = std::numeric_limits<float>::lowest();

// Weights that bring two rows with maxima m_a and m_b to the common max m:
// merged l = l_a w_a + l_b w_b, merged o = o_a w_a + o_b w_b.
struct SoftmaxMergeWeights {
  float m, w_a, w_b;
};

inline SoftmaxMergeWeights MergeWeights(float m_a, float m_b) {
  const float m = std::max(m_a, m_b);
  return {m, std::exp(m_a - m), std::exp(m_b - m)};
}

// What finalising a row gave.
enum class RowOutcome { kOk, kMasked, kNonfinite };

// out[i] = o[i] / l, and *log_z = m + log l when log_z is not null. A row
// that saw no token (l == 0) gives zeros and log Z = -inf (kMasked). `valid`
// false (a score of the row was NaN or infinite) makes the row kNonfinite
// whatever it computes.
inline RowOutcome FinalizeRow(float m, float l, const float* o, size_t dim, bool valid, float* out,
                              float* log_z) {
  valid = valid && std::isfinite(m) && std::isfinite(l);
  if (l == 0.0f && valid) {
    std::fill(out, out + dim, 0.0f);
    if (log_z != nullptr) *log_z = -std::numeric_limits<float>::infinity();
    return RowOutcome::kMasked;
  }
  const float inv_l = 1.0f / l;
  for (size_t i = 0; i < dim; ++i) {
    out[i] = o[i] * inv_l;
    valid = valid && std::isfinite(out[i]);
  }
  if (log_z != nullptr) {
    *log_z = m + std::log(l);
    valid = valid && std::isfinite(*log_z);
  }
  return valid ? RowOutcome::kOk : RowOutcome::kNonfinite;
}

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_ONLINE_SOFTMAX_H_
