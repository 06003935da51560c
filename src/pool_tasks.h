// Which tasks of a call over the caller's thread pool (covattn.h's
// covattn_thread_pool) have run. A pool that skips a task and runs another
// twice keeps the count of runs right, so each task is checked off by its
// own bit: a second run of a task, a task or thread index out of range, or a
// task never run make the call COVATTN_ERR_INVALID_THREAD_POOL.
#ifndef COVATTN_SRC_POOL_TASKS_H_
#define COVATTN_SRC_POOL_TASKS_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace covattn {
namespace detail {

// Pools of more threads are planned as if they had this many (every worker
// index is still accepted), which keeps a call's tasks within kMaxPoolTasks
// (attention_threads.cc and cache_decode.cc check their plans against it)
// and the ledger on the stack (8 KiB).
constexpr size_t kMaxPlannedThreads = 1024;
constexpr size_t kMaxPoolTasks = size_t{1} << 16;

inline size_t PlannedThreads(size_t n_threads) { return std::min(n_threads, kMaxPlannedThreads); }

// floor(k * n / parts) for k <= parts, without overflow while parts * parts
// fits: where part k of n things cut into near-equal parts begins.
inline size_t Cut(size_t k, size_t n, size_t parts) {
  return k * (n / parts) + k * (n % parts) / parts;
}

// Splits of a cache's tokens over a pool (split-KV: exact attention's and the
// bounded cache's): at most one range per this many tokens, so that a
// range's task and merge stay small next to its attention; range k of parts
// begins at a multiple of `align` tokens (the kernels' chunk), the last ends
// at n.
constexpr size_t kMinSplitTokens = 256;
inline size_t RangeBegin(size_t k, size_t n, size_t parts, size_t align) {
  return k == parts ? n : Cut(k, n, parts) / align * align;
}

class PoolTasks {
 public:
  // n_tasks <= kMaxPoolTasks, for a pool of n_threads workers; only the
  // words in use are cleared, so a small call pays for a few.
  PoolTasks(size_t n_tasks, size_t n_threads) : n_tasks_(n_tasks), n_threads_(n_threads) {
    for (size_t w = 0; w < (n_tasks + 63) / 64; ++w) ran_[w].store(0, std::memory_order_relaxed);
  }
  PoolTasks(const PoolTasks&) = delete;
  PoolTasks& operator=(const PoolTasks&) = delete;

  // Checks the task off; false if it must not run (the call is broken then).
  bool Start(size_t thread, size_t task) {
    if (thread >= n_threads_ || task >= n_tasks_) {
      broken_.store(true);
      return false;
    }
    const uint64_t bit = uint64_t{1} << (task % 64);
    if ((ran_[task / 64].fetch_or(bit) & bit) != 0) {
      broken_.store(true);  // run before: its first run may still be writing
      return false;
    }
    return true;
  }

  // After parallel_for has returned: whether every task ran exactly once
  // and nothing else was asked for.
  bool AllRanOnce() const {
    if (broken_.load()) return false;
    for (size_t w = 0; w < n_tasks_ / 64; ++w) {
      if (ran_[w].load() != ~uint64_t{0}) return false;
    }
    const size_t rest = n_tasks_ % 64;
    return rest == 0 || ran_[n_tasks_ / 64].load() == (uint64_t{1} << rest) - 1;
  }

 private:
  size_t n_tasks_, n_threads_;
  std::atomic<uint64_t> ran_[kMaxPoolTasks / 64];
  std::atomic<bool> broken_{false};
};

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_POOL_TASKS_H_
