// A small persistent thread pool behind covattn_thread_pool, for the tests
// and the benchmarks: n_threads - 1 workers plus the calling thread (worker
// 0), tasks handed out one at a time from an atomic counter. Workers spin a
// little before sleeping, so that back-to-back calls (a decode loop) do not
// pay a wake-up each.
#ifndef COVATTN_TESTS_THREAD_POOL_H_
#define COVATTN_TESTS_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

#include "covattn/covattn.h"

namespace covattn_test {

class ThreadPool {
 public:
  explicit ThreadPool(size_t n_threads) : n_threads_(n_threads) {
    for (size_t w = 1; w < n_threads; ++w) workers_.emplace_back([this, w] { Work(w); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  covattn_thread_pool Pool() {
    return covattn_thread_pool{&ThreadPool::ParallelFor, this, n_threads_};
  }

 private:
  static constexpr int kSpins = 1 << 14;

  static void ParallelFor(void* pool, size_t n_tasks, covattn_task task, void* context) {
    static_cast<ThreadPool*>(pool)->Run(n_tasks, task, context);
  }

  void Run(size_t n_tasks, covattn_task task, void* context) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = task, context_ = context, n_tasks_ = n_tasks;
      next_.store(0);
      pending_.store(workers_.size());
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    Drain(0);
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
      if (spin < kSpins) continue;
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return pending_.load() == 0; });
    }
  }

  void Work(size_t worker) {
    size_t seen = 0;
    for (;;) {
      size_t generation;
      for (int spin = 0; (generation = generation_.load(std::memory_order_acquire)) == seen;
           ++spin) {
        if (spin < kSpins) continue;
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load() != seen; });
      }
      seen = generation;
      if (stop_) return;
      Drain(worker);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_all();
      }
    }
  }

  void Drain(size_t worker) {
    for (size_t i; (i = next_.fetch_add(1)) < n_tasks_;) task_(context_, worker, i);
  }

  const size_t n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::atomic<size_t> generation_{0}, next_{0}, pending_{0};
  bool stop_ = false;
  covattn_task task_ = nullptr;
  void* context_ = nullptr;
  size_t n_tasks_ = 0;
};

}  // namespace covattn_test

#endif  // COVATTN_TESTS_THREAD_POOL_H_
