#include "attention_methods.h"

#include <algorithm>
#include <new>
#include <vector>

#include "bounded_cache.h"
#include "covattn/covattn.h"

namespace covattn_model {
namespace {

std::string StatusText(const char* call, covattn_status status) {
  return std::string(call) + " failed: " + covattn_status_string(status);
}

class ExactAttention : public LayerAttention {
 public:
  ExactAttention(const ModelConfig& c, size_t max_tokens, uint32_t dtype)
      : n_heads_(c.n_heads), head_dim_(c.head_dim()), kv_dim_(c.kv_dim()), max_tokens_(max_tokens) {
    view_ = covattn_kv_cache{dtype,   nullptr,   nullptr, 0,         c.n_kv_heads, head_dim_,
                             kv_dim_, head_dim_, kv_dim_, head_dim_, nullptr};
  }

  bool Init(std::string* error) {
    size_t bytes = 0;
    const covattn_status s = covattn_attention_scratch_size(head_dim_, &bytes);
    if (s != COVATTN_OK) {
      *error = StatusText("covattn_attention_scratch_size", s);
      return false;
    }
    const bool int8 = view_.dtype == COVATTN_INT8;
    const size_t kv_heads = view_.n_heads;
    try {
      if (int8) {
        k8_.resize(max_tokens_ * kv_dim_), v8_.resize(max_tokens_ * kv_dim_);
        k_scale_.resize(max_tokens_ * kv_heads), v_scale_.resize(max_tokens_ * kv_heads);
      } else {
        k_.resize(max_tokens_ * kv_dim_), v_.resize(max_tokens_ * kv_dim_);
      }
      scratch_.resize(bytes);
    } catch (const std::bad_alloc&) {
      *error = "not enough memory for a KV buffer of " + std::to_string(max_tokens_) + " tokens";
      return false;
    }
    if (int8) {
      scales_ = covattn_int8_scales{k_scale_.data(), v_scale_.data(), kv_heads, 1, kv_heads, 1};
      view_.k = k8_.data(), view_.v = v8_.data(), view_.int8_scales = &scales_;
    } else {
      view_.k = k_.data(), view_.v = v_.data();
    }
    return true;
  }

  bool Append(const float* k, const float* v, std::string* error) override {
    if (view_.n_tokens == max_tokens_) {
      *error = "the exact KV buffer is full (" + std::to_string(max_tokens_) + " tokens)";
      return false;
    }
    const size_t t = view_.n_tokens, kv_heads = view_.n_heads;
    if (view_.dtype == COVATTN_INT8) {  // one scale per KV head's vector
      covattn_status s =
          covattn_quantize_int8(k, kv_heads, head_dim_, head_dim_, k8_.data() + t * kv_dim_,
                                head_dim_, k_scale_.data() + t * kv_heads, 1);
      if (s == COVATTN_OK) {
        s = covattn_quantize_int8(v, kv_heads, head_dim_, head_dim_, v8_.data() + t * kv_dim_,
                                  head_dim_, v_scale_.data() + t * kv_heads, 1);
      }
      if (s != COVATTN_OK) {
        *error = StatusText("covattn_quantize_int8", s);
        return false;
      }
    } else {
      std::copy_n(k, kv_dim_, k_.data() + t * kv_dim_);
      std::copy_n(v, kv_dim_, v_.data() + t * kv_dim_);
    }
    ++view_.n_tokens;
    return true;
  }

  bool Decode(const float* q, float* out, AttentionDiagnostics* diagnostics,
              std::string* error) override {
    const covattn_attention_options options{0.0f, 0, 0, nullptr};
    covattn_status s;
    if (diagnostics == nullptr) {
      s = covattn_decode(&view_, q, n_heads_, &options, out, scratch_.data(), scratch_.size());
    } else {  // decode is prefill of the last position, and prefill gives log Z
      const covattn_queries queries{q, 1, n_heads_, n_heads_ * head_dim_, head_dim_};
      const covattn_outputs outputs{out, n_heads_ * head_dim_, head_dim_,
                                    diagnostics->log_z.data()};
      s = covattn_prefill(&view_, &queries, view_.n_tokens - 1, &options, &outputs, scratch_.data(),
                          scratch_.size());
    }
    if (s < 0) {
      *error = StatusText(diagnostics ? "covattn_prefill" : "covattn_decode", s);
      return false;
    }
    return true;
  }

 private:
  size_t n_heads_, head_dim_, kv_dim_, max_tokens_;
  std::vector<float> k_, v_;              // f32
  std::vector<int8_t> k8_, v8_;           // int8: [token][kv_head][dim]
  std::vector<float> k_scale_, v_scale_;  // int8: [token][kv_head]
  covattn_int8_scales scales_{};
  std::vector<unsigned char> scratch_;
  covattn_kv_cache view_;
};

class CacheAttention : public LayerAttention {
 public:
  CacheAttention(const ModelConfig& c, const covattn_cache_config& config)
      : n_heads_(c.n_heads), head_dim_(c.head_dim()), kv_dim_(c.kv_dim()), config_(config) {
    config_.n_kv_heads = c.n_kv_heads;
    config_.head_dim = head_dim_;
  }

  bool Init(std::string* error) { return cache_.Create(config_, n_heads_, error); }

  bool Append(const float* k, const float* v, std::string* error) override {
    const covattn_kv_cache block{COVATTN_F32, k,       v,         1,       config_.n_kv_heads,
                                 head_dim_,   kv_dim_, head_dim_, kv_dim_, head_dim_,
                                 nullptr};
    const covattn_status s = cache_.Append(block);
    if (s != COVATTN_OK) {
      *error = CacheStatusText("covattn_cache_append", s);
      return false;
    }
    return true;
  }

  bool Decode(const float* q, float* out, AttentionDiagnostics* diagnostics,
              std::string* error) override {
    covattn_cache_diagnostics d{nullptr, nullptr, nullptr};
    if (diagnostics) {
      d.log_z = diagnostics->log_z.data();
      // Without a summary the share is not a figure of the method (it is 0).
      if (!(config_.flags & COVATTN_CACHE_DROP_EVICTED) &&
          config_.summary != COVATTN_SUMMARY_NONE) {
        d.summary_share = diagnostics->summary_share.data();
      }
    }
    // Retained slots: the engine's step observes every decode with its log Z.
    const bool observe = config_.n_retained != 0;
    if (observe && d.log_z == nullptr) d.log_z = log_z_.data();
    covattn_status s = cache_.Decode(q, n_heads_, 0.0f, out, diagnostics || observe ? &d : nullptr);
    if (s < 0) {
      *error = CacheStatusText("covattn_cache_decode", s);
      return false;
    }
    if (observe) s = cache_.Observe(q, n_heads_, 0.0f, d.log_z);
    if (s < 0) {
      *error = CacheStatusText("covattn_cache_observe", s);
      return false;
    }
    return true;
  }

 private:
  size_t n_heads_, head_dim_, kv_dim_;
  covattn_cache_config config_;
  BoundedCache cache_;
  std::vector<float> log_z_ = std::vector<float>(n_heads_);
};

}  // namespace

std::unique_ptr<LayerAttention> CreateLayerAttention(const MethodSpec& spec,
                                                     const ModelConfig& config, size_t max_tokens,
                                                     std::string* error) {
  if (spec.exact) {
    std::unique_ptr<ExactAttention> exact(new ExactAttention(config, max_tokens, spec.exact_dtype));
    if (!exact->Init(error)) return nullptr;
    return exact;
  }
  std::unique_ptr<CacheAttention> cache(new CacheAttention(config, spec.cache));
  if (!cache->Init(error)) {
    *error = spec.name + ": " + *error;
    return nullptr;
  }
  return cache;
}

}  // namespace covattn_model
