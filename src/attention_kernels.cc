// Exact attention's kernel entry for the C API: one per-dtype kernel
// (attention_kernels_{f32,f16,bf16,int8}.cc), each dispatched to the chosen target.
#include "attention.h"
#include "half.h"

namespace covattn {
namespace detail {

void RunAttentionRows(const AttentionProblem& problem, const AttentionRows& rows,
                      const AttentionResultSink& sink, void* scratch, AttentionOutcome* outcome) {
  if (problem.dtype == COVATTN_INT8) {
    RunAttentionInt8(problem, rows, sink, scratch, outcome);
    return;
  }
  ForDtype(problem.dtype, RunAttentionF32, RunAttentionF16, RunAttentionBF16)(problem, rows, sink,
                                                                              scratch, outcome);
}

void RunAttention(const AttentionProblem& problem, const AttentionResultSink& sink, void* scratch,
                  AttentionOutcome* outcome) {
  const AttentionRows all{0, problem.n_kv_heads * RowsPerKvHead(problem), false};
  RunAttentionRows(problem, all, sink, scratch, outcome);
}

}  // namespace detail
}  // namespace covattn
