// Exact attention into partial softmax states (covattn.h's covattn_partial,
// MATH.md section 1) for the library's own callers (the bounded cache's
// decode): the entry points in attention.cc validate, then run these; a
// caller inside the library runs them on arguments it has already validated.
#ifndef COVATTN_SRC_PARTIAL_STATE_H_
#define COVATTN_SRC_PARTIAL_STATE_H_

#include <cstddef>

#include "attention.h"
#include "covattn/covattn.h"

namespace covattn {
namespace detail {

// The attention kernel on a validated problem (attention_kernels.cc);
// scratch holds AttentionScratchBytes(head_dim) bytes.
void RunAttention(const AttentionProblem& problem, const AttentionResultSink& sink, void* scratch,
                  AttentionOutcome* outcome);

// into <- merge(into, other) for rows [0, n_rows), all or nothing: false, and
// `into` unchanged, when a row of either state holds NaN or infinity or a
// merged row would overflow.
bool MergePartialRows(size_t n_rows, size_t head_dim, const covattn_partial& into,
                      const covattn_partial& other);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_PARTIAL_STATE_H_
