#include "methods.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <stdexcept>

#include "covattn/covattn.h"
#include "model/bounded_cache.h"
#ifdef COVATTN_COMPARE_WITH_ONEDNN
#include <dlfcn.h>

#include "onednn_peer.h"
#endif

namespace covattn_compare {

size_t TokenBytes(size_t dim) { return 2 * dim * sizeof(float); }

size_t Int8TokenBytes(size_t dim) { return 2 * (dim + sizeof(float)); }

size_t CacheTokenBytes(size_t dim, uint32_t dtype) {
  switch (dtype) {
    case COVATTN_INT8:
      return 2 * ((dim + 3) / 4 * 4 + sizeof(float));
    case COVATTN_F16:
    case COVATTN_BF16:
      return 2 * dim * 2;
    default:
      return TokenBytes(dim);
  }
}

size_t SummaryBytes(size_t dim) { return 8 * (1 + 2 * dim) + 4 * 2 * dim * dim; }

size_t WhiteningBytes(size_t dim, size_t outlier_slots) {
  return 4 * (dim * (dim + 1) / 2 + dim) + 4 * outlier_slots;
}

namespace {

size_t CeilDiv(size_t a, size_t b) { return (a + b - 1) / b; }

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::string StatusText(const char* call, covattn_status status) {
  return std::string(call) + " failed: " + covattn_status_string(status);
}

float EffectiveScale(float scale, size_t dim) {
  return scale != 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(dim));
}

// Exact attention through covattn_decode over the first n tokens, of the f32
// values or (int8) of them quantised token by token as an engine would.
class ExactHead : public HeadMethod {
 public:
  ExactHead(size_t dim, float scale, const float* k, const float* v, uint32_t dtype)
      : view_{dtype, k, v, 0, 1, dim, dim, dim, dim, dim, nullptr},
        options_{scale, 0, 0, nullptr},
        k_f32_(k),
        v_f32_(v) {}

  bool Init(std::string* error) {
    size_t bytes = 0;
    const covattn_status s = covattn_attention_scratch_size(view_.head_dim, &bytes);
    if (s != COVATTN_OK) {
      *error = StatusText("covattn_attention_scratch_size", s);
      return false;
    }
    scratch_.resize(bytes);
    return true;
  }

  bool Advance(size_t n, std::string* error) override {
    if (view_.dtype == COVATTN_INT8 && n > quantized_) {
      const size_t dim = view_.head_dim;
      k8_.resize(n * dim), v8_.resize(n * dim), k_scale_.resize(n), v_scale_.resize(n);
      const size_t m = n - quantized_, at = quantized_ * dim;
      covattn_status s = covattn_quantize_int8(k_f32_ + at, m, dim, dim, k8_.data() + at, dim,
                                               k_scale_.data() + quantized_, 1);
      if (s == COVATTN_OK) {
        s = covattn_quantize_int8(v_f32_ + at, m, dim, dim, v8_.data() + at, dim,
                                  v_scale_.data() + quantized_, 1);
      }
      if (s != COVATTN_OK) {
        *error = StatusText("covattn_quantize_int8", s);
        return false;
      }
      quantized_ = n;
      scales_ = covattn_int8_scales{k_scale_.data(), v_scale_.data(), 1, 1, 1, 1};
      view_.k = k8_.data(), view_.v = v8_.data(), view_.int8_scales = &scales_;
    }
    view_.n_tokens = n;
    return true;
  }

  bool Decode(const float* q, size_t n_q, DecodeResult* r, std::string* error) override {
    const size_t dim = view_.head_dim;
    r->out.assign(n_q * dim, 0.0f);
    r->log_z.assign(n_q, 0.0f);
    r->summary_share.assign(n_q, kNaN);
    r->summary_ess.assign(n_q, kNaN);
    // Decode is prefill of the last position; prefill also gives log Z.
    const covattn_queries queries{q, 1, n_q, n_q * dim, dim};
    const covattn_outputs outputs{r->out.data(), n_q * dim, dim, r->log_z.data()};
    const covattn_status s = covattn_prefill(&view_, &queries, view_.n_tokens - 1, &options_,
                                             &outputs, scratch_.data(), scratch_.size());
    if (s < 0) {
      *error = StatusText("covattn_prefill", s);
      return false;
    }
    return true;
  }

  void DecodeFast(const float* q, size_t n_q, float* out) override {
    if (covattn_decode(&view_, q, n_q, &options_, out, scratch_.data(), scratch_.size()) < 0) {
      fast_ok_ = false;
    }
  }

  size_t AllocatedBytes() const override {
    return view_.dtype == COVATTN_INT8 ? view_.n_tokens * Int8TokenBytes(view_.head_dim)
                                       : view_.n_tokens * TokenBytes(view_.head_dim);
  }

 private:
  covattn_kv_cache view_;
  covattn_attention_options options_;
  std::vector<unsigned char> scratch_;
  // int8: the f32 rows, and the first `quantized_` of them quantised.
  const float* k_f32_;
  const float* v_f32_;
  size_t quantized_ = 0;
  std::vector<int8_t> k8_, v8_;
  std::vector<float> k_scale_, v_scale_;
  covattn_int8_scales scales_{};
};

#ifdef COVATTN_COMPARE_WITH_ONEDNN
// oneDNN parallelises with OpenMP, whose runtime reads OMP_NUM_THREADS when
// it is loaded, before main. The thread count is a per-thread setting, so
// every thread that runs the peer asks for one thread itself (through dlsym:
// a oneDNN built for another runtime simply has no such symbol).
void OneOpenMpThreadHere() {
  thread_local bool done = false;
  if (done) return;
  done = true;
  using SetThreads = void (*)(int);
  if (void* f = dlsym(RTLD_DEFAULT, "omp_set_num_threads")) {
    reinterpret_cast<SetThreads>(f)(1);
  }
}

// Exact attention as oneDNN primitives. The peer is built for one context
// length and query count (its primitives are created once), so a new one is
// made when either changes, outside the timed path.
class OneDnnHead : public HeadMethod {
 public:
  OneDnnHead(size_t dim, float scale, const float* k, const float* v)
      : dim_(dim),
        k_(k),
        v_(v),
        // The peer scales by 1/sqrt(dim); other scales are folded into q.
        q_factor_(EffectiveScale(scale, dim) * std::sqrt(static_cast<float>(dim))) {}

  bool Advance(size_t n, std::string*) override {
    if (n != n_tokens_) peers_.clear();
    n_tokens_ = n;
    return true;
  }

  bool Decode(const float* q, size_t n_q, DecodeResult* r, std::string* error) override {
    r->out.assign(n_q * dim_, 0.0f);
    r->log_z.assign(n_q, kNaN);
    r->summary_share.assign(n_q, kNaN);
    r->summary_ess.assign(n_q, kNaN);
    try {
      DecodeFast(q, n_q, r->out.data());
    } catch (const std::exception& e) {
      *error = std::string("oneDNN: ") + e.what();
      return false;
    }
    for (float x : r->out) {
      if (!std::isfinite(x)) {
        *error = "oneDNN produced a non-finite output";
        return false;
      }
    }
    return true;
  }

  void DecodeFast(const float* q, size_t n_q, float* out) override {
    OneOpenMpThreadHere();
    std::unique_ptr<covattn_tools::OneDnnDecode>& peer = peers_[n_q];
    if (!peer) {
      peer.reset(new covattn_tools::OneDnnDecode(1, n_q, dim_, n_tokens_, dim_, 0, k_, v_));
      q_scaled_.resize(std::max(q_scaled_.size(), n_q * dim_));
    }
    const float* input = q;
    if (q_factor_ != 1.0f) {
      for (size_t i = 0; i < n_q * dim_; ++i) q_scaled_[i] = q[i] * q_factor_;
      input = q_scaled_.data();
    }
    peer->Run(input, out);
  }

  size_t AllocatedBytes() const override { return n_tokens_ * TokenBytes(dim_); }

 private:
  size_t dim_;
  const float* k_;
  const float* v_;
  float q_factor_;
  size_t n_tokens_ = 0;
  std::map<size_t, std::unique_ptr<covattn_tools::OneDnnDecode>> peers_;
  std::vector<float> q_scaled_;
};
#endif

// A bounded cache (readout, sink + window, hybrid, hybrid + outliers).
class BoundedHead : public HeadMethod {
 public:
  BoundedHead(const covattn_cache_config& config, float scale, const float* k, const float* v)
      : config_(config), scale_(scale), k_(k), v_(v) {}

  bool Init(size_t max_queries, std::string* error) {
    return cache_.Create(config_, max_queries, error) &&
           covattn_model::CacheBytes(config_, &allocated_, error);
  }

  bool Advance(size_t n, std::string* error) override {
    if (n <= appended_) return true;
    const size_t dim = config_.head_dim;
    const covattn_kv_cache block{COVATTN_F32,
                                 k_ + appended_ * dim,
                                 v_ + appended_ * dim,
                                 n - appended_,
                                 1,
                                 dim,
                                 dim,
                                 dim,
                                 dim,
                                 dim,
                                 nullptr};
    const auto start = std::chrono::steady_clock::now();
    const covattn_status s = cache_.Append(block);
    append_seconds_ +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (s != COVATTN_OK) {
      *error = StatusText("covattn_cache_append", s);
      return false;
    }
    appended_ = n;
    return true;
  }

  bool Decode(const float* q, size_t n_q, DecodeResult* r, std::string* error) override {
    r->out.assign(n_q * config_.head_dim, 0.0f);
    r->log_z.assign(n_q, 0.0f);
    r->summary_share.assign(n_q, 0.0f);
    r->summary_ess.assign(n_q, 0.0f);
    const covattn_cache_diagnostics diagnostics{r->summary_share.data(), r->summary_ess.data(),
                                                r->log_z.data()};
    const covattn_status s = cache_.Decode(q, n_q, scale_, r->out.data(), &diagnostics);
    if (s < 0) {
      *error = StatusText("covattn_cache_decode", s);
      return false;
    }
    if (config_.flags & COVATTN_CACHE_DROP_EVICTED) {
      r->summary_share.assign(n_q, kNaN);
      r->summary_ess.assign(n_q, kNaN);
    }
    return true;
  }

  void DecodeFast(const float* q, size_t n_q, float* out) override {
    if (cache_.Decode(q, n_q, scale_, out, nullptr) < 0) fast_ok_ = false;
  }

  size_t AllocatedBytes() const override { return allocated_; }

 private:
  covattn_cache_config config_;
  float scale_;
  const float* k_;
  const float* v_;
  covattn_model::BoundedCache cache_;
  size_t appended_ = 0, allocated_ = 0;
};

}  // namespace

covattn_cache_config CacheConfig(size_t dim, size_t sinks, size_t window, size_t outliers,
                                 float forgetting, uint32_t flags, uint32_t dtype) {
  covattn_cache_config c{};
  c.n_kv_heads = 1;
  c.head_dim = dim;
  c.dtype = dtype;
  c.n_sinks = sinks;
  c.window = window;
  c.n_outliers = outliers;
  c.forgetting = forgetting;
  c.flags = flags;
  return c;
}

bool PlanRetention(Method method, const Options& options, size_t dim, size_t bytes,
                   covattn_cache_config* config, std::string* error) {
  covattn_cache_config c =
      CacheConfig(dim, options.sinks, 1, 0, options.forgetting, 0, options.cache_dtype);
  c.n_retained = 1;
  if (method == Method::kHeavyHitters) {
    c.retention = COVATTN_RETENTION_H2O;
    c.summary = COVATTN_SUMMARY_NONE;
  } else {
    c.retention = COVATTN_RETENTION_EMA;
    c.summary = COVATTN_SUMMARY_COMPACT;
    c.rope = options.rope;
  }
  auto fits = [&](size_t pairs) {
    c.window = c.n_retained = pairs;
    size_t b = 0;
    return covattn_cache_size(&c, &b) == COVATTN_OK && b <= bytes;
  };
  if (!fits(1)) {
    *error = std::string(MethodKey(method)) + ": " + std::to_string(bytes) +
             " bytes per KV head hold no window and retained slot beside " +
             std::to_string(options.sinks) + " sinks at head_dim " + std::to_string(dim);
    return false;
  }
  size_t lo = 1, hi = 2;
  while (fits(hi)) lo = hi, hi *= 2;
  while (hi - lo > 1) {  // fits(lo), !fits(hi)
    const size_t mid = lo + (hi - lo) / 2;
    fits(mid) ? lo = mid : hi = mid;
  }
  fits(lo);
  *config = c;
  return true;
}

bool PlanMethod(Method method, const Options& options, size_t dim, MethodPlan* plan,
                std::string* error) {
  MethodPlan p;
  p.method = method;
  p.dim = dim;
  const size_t token = CacheTokenBytes(dim, options.cache_dtype), summary = SummaryBytes(dim);
  const size_t budget = options.budget, sinks = options.sinks;
  const uint32_t dtype = options.cache_dtype;
  switch (method) {
    case Method::kExact:
    case Method::kExactInt8:
    case Method::kOneDnn:
      break;
    case Method::kReadout:
      p.config = CacheConfig(dim, 0, 0, 0, options.forgetting, 0, dtype);
      p.bounded_bytes = summary;
      break;
    case Method::kHybrid:
      p.config = CacheConfig(dim, sinks, budget - sinks, 0, options.forgetting, 0, dtype);
      p.bounded_bytes = budget * token + summary;
      break;
    case Method::kSinkWindow: {
      const size_t window = budget - sinks + CeilDiv(summary, token);
      p.config = CacheConfig(dim, sinks, window, 0, 1.0f, COVATTN_CACHE_DROP_EVICTED, dtype);
      p.bounded_bytes = (sinks + window) * token;
      break;
    }
    case Method::kHybridOutliers: {
      const size_t slots = OutlierSlots(options);
      const size_t given_up = CeilDiv(WhiteningBytes(dim, slots), token);
      if (sinks + slots + given_up >= budget) {
        *error = "--budget " + std::to_string(budget) + " leaves no window for " +
                 std::to_string(sinks) + " sinks and " + std::to_string(slots) +
                 " outlier slots at head_dim " + std::to_string(dim) + " (the whitening costs " +
                 std::to_string(given_up) + " tokens)";
        return false;
      }
      const size_t window = budget - sinks - slots - given_up;
      p.config = CacheConfig(dim, sinks, window, slots, options.forgetting, 0, dtype);
      p.bounded_bytes = (sinks + window + slots) * token + summary + WhiteningBytes(dim, slots);
      break;
    }
    case Method::kHeavyHitters:
    case Method::kEmaRing:  // in the hybrid's bytes, counted as the cache counts them
      if (!PlanRetention(method, options, dim, budget * token + summary, &p.config, error)) {
        return false;
      }
      if (covattn_cache_size(&p.config, &p.bounded_bytes) != COVATTN_OK) return false;
      break;
  }
  *plan = p;
  return true;
}

size_t StateBytes(const MethodPlan& plan, size_t context) {
  if (plan.method == Method::kExactInt8) return context * Int8TokenBytes(plan.dim);
  return IsExact(plan.method) ? context * TokenBytes(plan.dim) : plan.bounded_bytes;
}

std::unique_ptr<HeadMethod> HeadMethod::Create(const MethodPlan& plan, float scale, const float* k,
                                               const float* v, size_t max_queries,
                                               std::string* error) {
  switch (plan.method) {
    case Method::kExact:
    case Method::kExactInt8: {
      const uint32_t dtype = plan.method == Method::kExactInt8 ? COVATTN_INT8 : COVATTN_F32;
      std::unique_ptr<ExactHead> head(
          new ExactHead(plan.dim, EffectiveScale(scale, plan.dim), k, v, dtype));
      if (!head->Init(error)) return nullptr;
      return head;
    }
    case Method::kOneDnn:
#ifdef COVATTN_COMPARE_WITH_ONEDNN
      return std::unique_ptr<HeadMethod>(new OneDnnHead(plan.dim, scale, k, v));
#else
      *error = "this build has no oneDNN";
      return nullptr;
#endif
    default: {
      std::unique_ptr<BoundedHead> head(new BoundedHead(plan.config, scale, k, v));
      if (!head->Init(max_queries, error)) return nullptr;
      return head;
    }
  }
}

}  // namespace covattn_compare
