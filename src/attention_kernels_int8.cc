// Exact attention over int8 K/V (per-vector scales) for every target: the body
// is attention_kernels-inl.h; each element type has its own file so that
// they compile in parallel.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "attention_kernels_int8.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include "attention_kernels-inl.h"

HWY_BEFORE_NAMESPACE();
namespace covattn {
namespace HWY_NAMESPACE {

void AttentionInt8(const detail::AttentionProblem& pb, const detail::AttentionRows& rows,
                   const detail::AttentionResultSink& sink, void* scratch,
                   detail::AttentionOutcome* outcome) {
  AttentionTyped<int8_t>(pb, rows, sink, scratch, outcome);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "dispatch.h"

namespace covattn {
HWY_EXPORT(AttentionInt8);

void detail::RunAttentionInt8(const AttentionProblem& pb, const AttentionRows& rows,
                              const AttentionResultSink& sink, void* scratch,
                              AttentionOutcome* outcome) {
  COVATTN_DISPATCH(AttentionInt8)(pb, rows, sink, scratch, outcome);
}

}  // namespace covattn
#endif  // HWY_ONCE
