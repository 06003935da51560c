// The covariance state's block update for f32 K/V, for every target: the
// body is covariance_kernels-inl.h; each element type has its own file so
// that they compile in parallel.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "covariance_kernels_f32.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include "covariance_kernels-inl.h"

HWY_BEFORE_NAMESPACE();
namespace covattn {
namespace HWY_NAMESPACE {

void UpdateHeadsF32(covattn_cov_state* state, const detail::CovBlock& block, size_t first_head,
                    size_t n_heads, float* work) {
  UpdateTyped<float>(state, block, first_head, n_heads, work);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "dispatch.h"

namespace covattn {
HWY_EXPORT(UpdateHeadsF32);

void detail::CovUpdateHeadsF32(covattn_cov_state* state, const CovBlock& block, size_t first_head,
                               size_t n_heads, float* work) {
  COVATTN_DISPATCH(UpdateHeadsF32)(state, block, first_head, n_heads, work);
}

}  // namespace covattn
#endif  // HWY_ONCE
