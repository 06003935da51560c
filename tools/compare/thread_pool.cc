#include "thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace covattn_compare {

struct ThreadPool::Shared {
  std::mutex mutex;
  std::condition_variable wake;
  std::atomic<uint64_t> generation{0};
  std::atomic<size_t> pending{0};
  std::atomic<bool> stop{false};
  const std::function<void(size_t)>* fn = nullptr;
  size_t n = 0;
  std::vector<std::thread> workers;
};

namespace {

// How long an idle worker polls before it sleeps.
constexpr std::chrono::microseconds kSpinTime(200);

}  // namespace

ThreadPool::ThreadPool(size_t threads) : size_(threads < 1 ? 1 : threads), shared_(new Shared) {
  Shared* s = shared_.get();
  const size_t size = size_;
  for (size_t w = 1; w < size; ++w) {
    s->workers.emplace_back([s, w, size] {
      uint64_t seen = 0;
      for (;;) {
        uint64_t now = s->generation.load(std::memory_order_acquire);
        const auto spin_until = std::chrono::steady_clock::now() + kSpinTime;
        while (now == seen && !s->stop.load(std::memory_order_acquire)) {
          if (std::chrono::steady_clock::now() < spin_until) {
            std::this_thread::yield();
          } else {
            std::unique_lock<std::mutex> lock(s->mutex);
            s->wake.wait(lock, [&] {
              return s->generation.load(std::memory_order_acquire) != seen ||
                     s->stop.load(std::memory_order_acquire);
            });
          }
          now = s->generation.load(std::memory_order_acquire);
        }
        if (s->stop.load(std::memory_order_acquire)) return;
        seen = now;
        for (size_t i = w; i < s->n; i += size) (*s->fn)(i);
        s->pending.fetch_sub(1, std::memory_order_acq_rel);
      }
    });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(shared_->mutex);
    shared_->stop.store(true, std::memory_order_release);
  }
  shared_->wake.notify_all();
  for (std::thread& t : shared_->workers) t.join();
}

void ThreadPool::ForEach(size_t n, const std::function<void(size_t)>& fn) {
  if (size_ == 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  Shared& s = *shared_;
  s.fn = &fn;
  s.n = n;
  s.pending.store(size_ - 1, std::memory_order_relaxed);
  {
    // Under the lock, so a worker about to sleep cannot miss the new round.
    std::lock_guard<std::mutex> lock(s.mutex);
    s.generation.fetch_add(1, std::memory_order_release);
  }
  s.wake.notify_all();
  for (size_t i = 0; i < n; i += size_) fn(i);
  while (s.pending.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

}  // namespace covattn_compare
