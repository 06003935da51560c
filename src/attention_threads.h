// Exact attention over the caller's thread pool (covattn.h's
// covattn_thread_pool): the split of a call into tasks, each task's scratch,
// and the fixed-order merge of the cache-range splits.
#ifndef COVATTN_SRC_ATTENTION_THREADS_H_
#define COVATTN_SRC_ATTENTION_THREADS_H_

#include <cstddef>

#include "attention.h"
#include "covattn/covattn.h"

namespace covattn {
namespace detail {

// Bytes of scratch a call over n_threads workers needs (the formula is in
// covattn.h); false if it does not fit in a size_t.
bool ThreadedScratchBytes(size_t head_dim, size_t n_threads, size_t* bytes);

// Runs a validated problem over the pool, with ThreadedScratchBytes of
// scratch. False if the pool broke its contract (a task not run, run twice,
// or given a thread index >= n_threads); outputs may then have been written.
bool RunAttentionThreaded(const AttentionProblem& problem, const AttentionResultSink& sink,
                          const covattn_thread_pool& pool, void* scratch,
                          AttentionOutcome* outcome);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_ATTENTION_THREADS_H_
