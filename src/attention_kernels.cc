// Exact attention's kernel entry for the C API: one per-dtype kernel
// (attention_kernels_{f32,f16,bf16}.cc), each dispatched to the chosen target.
#include "attention.h"
#include "covattn/covattn.h"

namespace covattn {
namespace detail {

void RunAttention(const AttentionProblem& problem, const AttentionResultSink& sink, void* scratch,
                  AttentionOutcome* outcome) {
  switch (problem.dtype) {
    case COVATTN_F32:
      RunAttentionF32(problem, sink, scratch, outcome);
      break;
    case COVATTN_F16:
      RunAttentionF16(problem, sink, scratch, outcome);
      break;
    default:  // COVATTN_BF16 (validated by the caller)
      RunAttentionBF16(problem, sink, scratch, outcome);
      break;
  }
}

}  // namespace detail
}  // namespace covattn
