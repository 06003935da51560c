// covattn: a header-only C++17 wrapper over the C API.
//
// Owning objects (CovState, Cache) release themselves; calls that fail throw
// covattn::Error carrying the status. The library itself never throws: the
// exceptions are raised here, in the caller's code, from the statuses the C
// functions return. Attention keeps its scratch memory; CovState and Cache
// take the caller's (a Scratch, one per thread, shared by every object), so
// that they hold only their state and Cache::Decode reads a const cache.
#ifndef COVATTN_COVATTN_HPP_
#define COVATTN_COVATTN_HPP_

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "covattn/cache.h"
#include "covattn/covariance.h"
#include "covattn/covattn.h"

namespace covattn {

class Error : public std::runtime_error {
 public:
  explicit Error(covattn_status status)
      : std::runtime_error(std::string("covattn: ") + covattn_status_string(status)),
        status_(status) {}
  covattn_status status() const { return status_; }

 private:
  covattn_status status_;
};

// Throws on errors; returns successes, including COVATTN_FULLY_MASKED.
inline covattn_status Check(covattn_status status) {
  if (status < 0) throw Error(status);
  return status;
}

// Exact attention with scratch memory kept between calls (sized for the
// options' thread pool when they name one).
class Attention {
 public:
  // q and out are [n_q_heads][head_dim].
  covattn_status Decode(const covattn_kv_cache& kv, const float* q, size_t n_q_heads, float* out,
                        const covattn_attention_options* options = nullptr) {
    Reserve(kv.head_dim, options);
    return Check(covattn_decode(&kv, q, n_q_heads, options, out, scratch_.data(), scratch_.size()));
  }

  covattn_status Prefill(const covattn_kv_cache& kv, const covattn_queries& q, size_t n_past,
                         const covattn_outputs& out,
                         const covattn_attention_options* options = nullptr) {
    Reserve(kv.head_dim, options);
    return Check(covattn_prefill(&kv, &q, n_past, options, &out, scratch_.data(), scratch_.size()));
  }

 private:
  void Reserve(size_t head_dim, const covattn_attention_options* options) {
    size_t bytes = 0;
    if (options != nullptr && options->threads != nullptr) {
      Check(covattn_attention_scratch_size_threads(head_dim, options->threads->n_threads, &bytes));
    } else {
      Check(covattn_attention_scratch_size(head_dim, &bytes));
    }
    if (scratch_.size() < bytes) scratch_.resize(bytes);
  }
  std::vector<unsigned char> scratch_;
};

// Work memory for CovState and Cache calls, grown to what each call needs.
class Scratch {
 public:
  void* Reserve(size_t bytes) {
    if (bytes_.size() < bytes) bytes_.resize(bytes);
    return bytes_.data();
  }
  size_t size() const { return bytes_.size(); }

 private:
  std::vector<unsigned char> bytes_;
};

// The covariance state (covattn/covariance.h).
class CovState {
 public:
  CovState(size_t n_heads, size_t head_dim, float forgetting = 1.0f) {
    covattn_cov_state* s = nullptr;
    Check(covattn_cov_state_create(n_heads, head_dim, forgetting, &s));
    state_.reset(s);
  }

  void Update(const covattn_kv_cache& block, Scratch& scratch) {
    void* work = scratch.Reserve(ScratchBytes());
    Check(covattn_cov_state_update(get(), &block, work, scratch.size()));
  }
  void Merge(const CovState& other, Scratch& scratch) {
    void* work = scratch.Reserve(ScratchBytes());
    Check(covattn_cov_state_merge(get(), other.get(), work, scratch.size()));
  }
  void Reset() { Check(covattn_cov_state_reset(get())); }

  // q and out [n_q_heads][head_dim]; log_z and ess optional.
  void Readout(const float* q, size_t n_q_heads, float* out, float* log_z = nullptr,
               float* ess = nullptr, float scale = 0.0f) const {
    Check(covattn_cov_readout(get(), q, n_q_heads, scale, out, log_z, ess));
  }

  covattn_cov_info Info() const {
    covattn_cov_info info;
    Check(covattn_cov_state_info(get(), &info));
    return info;
  }

  std::vector<unsigned char> Serialize() const {
    size_t bytes = 0, written = 0;
    Check(covattn_cov_state_serialized_size(get(), &bytes));
    std::vector<unsigned char> buffer(bytes);
    Check(covattn_cov_state_serialize(get(), buffer.data(), buffer.size(), &written));
    return buffer;
  }
  void Load(const std::vector<unsigned char>& bytes) {
    Check(covattn_cov_state_load(get(), bytes.data(), bytes.size()));
  }

  covattn_cov_state* get() const { return state_.get(); }

 private:
  size_t ScratchBytes() const {
    size_t bytes = 0;
    Check(covattn_cov_state_scratch_size(Info().head_dim, &bytes));
    return bytes;
  }
  struct Deleter {
    void operator()(covattn_cov_state* s) const { covattn_cov_state_destroy(s); }
  };
  std::unique_ptr<covattn_cov_state, Deleter> state_;
};

// The bounded-memory cache (covattn/cache.h).
class Cache {
 public:
  explicit Cache(const covattn_cache_config& config) {
    covattn_cache* c = nullptr;
    Check(covattn_cache_create(&config, &c));
    cache_.reset(c);
  }

  // The calls in the C API's argument order, scratch last. Append reserves
  // scratch for n_kv_heads queries; a Scratch that decode has grown serves too.
  void Append(const covattn_kv_cache& block, Scratch& scratch) {
    void* work = scratch.Reserve(ScratchBytes(Info().config.n_kv_heads));
    Check(covattn_cache_append(get(), &block, work, scratch.size()));
  }
  void Reset() { Check(covattn_cache_reset(get())); }

  // q and out [n_q_heads][head_dim]; scale 0 for 1/sqrt(head_dim). Over
  // `threads` when given (covattn_cache_decode_threads), the scratch grown
  // for its workers.
  covattn_status Decode(const float* q, size_t n_q_heads, float scale, float* out,
                        const covattn_cache_diagnostics* diagnostics, Scratch& scratch,
                        const covattn_thread_pool* threads = nullptr) const {
    size_t bytes = ScratchBytes(n_q_heads);
    if (threads != nullptr) {
      const covattn_cache_config config = Info().config;
      Check(covattn_cache_scratch_size_threads(&config, n_q_heads, threads->n_threads, &bytes));
    }
    void* work = scratch.Reserve(bytes);
    return Check(covattn_cache_decode_threads(get(), q, n_q_heads, scale, threads, out, diagnostics,
                                              work, scratch.size()));
  }

  // The block's outputs against the cache before it and the block causally,
  // then the block appended (covattn_cache_prefill).
  void Prefill(const covattn_kv_cache& block, const covattn_queries& q, float scale,
               const covattn_outputs& out, Scratch& scratch) {
    void* work = scratch.Reserve(ScratchBytes(q.n_heads));
    Check(covattn_cache_prefill(get(), &block, &q, scale, &out, work, scratch.size()));
  }

  // log_z as decode reported it (diagnostics.log_z).
  void Observe(const float* q, size_t n_q_heads, float scale, const float* log_z,
               Scratch& scratch) {
    void* work = scratch.Reserve(ScratchBytes(n_q_heads));
    Check(covattn_cache_observe(get(), q, n_q_heads, scale, log_z, work, scratch.size()));
  }

  size_t ScratchBytes(size_t n_q_heads) const {
    const covattn_cache_config config = Info().config;
    size_t bytes = 0;
    Check(covattn_cache_scratch_size(&config, n_q_heads, &bytes));
    return bytes;
  }

  covattn_cache_info Info() const {
    covattn_cache_info info;
    Check(covattn_cache_info_get(get(), &info));
    return info;
  }

  std::vector<unsigned char> Serialize() const {
    size_t bytes = 0, written = 0;
    Check(covattn_cache_serialized_size(get(), &bytes));
    std::vector<unsigned char> buffer(bytes);
    Check(covattn_cache_serialize(get(), buffer.data(), buffer.size(), &written));
    return buffer;
  }
  void Load(const std::vector<unsigned char>& bytes) {
    Check(covattn_cache_load(get(), bytes.data(), bytes.size()));
  }

  covattn_cache* get() const { return cache_.get(); }

 private:
  struct Deleter {
    void operator()(covattn_cache* c) const { covattn_cache_destroy(c); }
  };
  std::unique_ptr<covattn_cache, Deleter> cache_;
};

}  // namespace covattn

#endif  // COVATTN_COVATTN_HPP_
