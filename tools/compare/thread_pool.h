// A fixed team of threads for spreading independent heads: item i of every
// ForEach runs on thread i % size(), so a head always runs on the same thread
// (its state stays in that core's caches). Workers spin briefly between
// calls (decode calls of small contexts last microseconds, a condition
// variable wake-up tens of them) and sleep when idle.
#ifndef COVATTN_TOOLS_COMPARE_THREAD_POOL_H_
#define COVATTN_TOOLS_COMPARE_THREAD_POOL_H_

#include <cstddef>
#include <functional>
#include <memory>

namespace covattn_compare {

class ThreadPool {
 public:
  // threads >= 1; the calling thread is one of them.
  explicit ThreadPool(size_t threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t size() const { return size_; }

  // Runs fn(i) for every i in [0, n) and returns when all have finished.
  // Not reentrant; fn must not throw.
  void ForEach(size_t n, const std::function<void(size_t)>& fn);

 private:
  struct Shared;
  size_t size_;
  std::unique_ptr<Shared> shared_;
};

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_THREAD_POOL_H_
