#include "bounded_cache.h"

#include "covattn/covattn.h"

namespace covattn_model {

std::string CacheStatusText(const char* call, covattn_status status) {
  return std::string(call) + " failed: " + covattn_status_string(status);
}

bool CacheBytes(const covattn_cache_config& config, size_t* bytes, std::string* error) {
  const covattn_status s = covattn_cache_size(&config, bytes);
  if (s != COVATTN_OK) {
    *error = CacheStatusText("covattn_cache_size", s);
    return false;
  }
  return true;
}

BoundedCache::~BoundedCache() { covattn_cache_destroy(cache_); }

bool BoundedCache::Create(const covattn_cache_config& config, size_t max_queries,
                          std::string* error) {
  covattn_cache_destroy(cache_);
  cache_ = nullptr;
  covattn_status s = covattn_cache_create(&config, &cache_);
  if (s != COVATTN_OK) {
    *error = CacheStatusText("covattn_cache_create", s);
    return false;
  }
  size_t bytes = 0;
  s = covattn_cache_scratch_size(&config, max_queries, &bytes);
  if (s != COVATTN_OK) {
    *error = CacheStatusText("covattn_cache_scratch_size", s);
    return false;
  }
  scratch_.resize(bytes);
  return true;
}

covattn_status BoundedCache::Append(const covattn_kv_cache& block) {
  return covattn_cache_append(cache_, &block, scratch_.data(), scratch_.size());
}

covattn_status BoundedCache::Decode(const float* q, size_t n_q, float scale, float* out,
                                    const covattn_cache_diagnostics* diagnostics) const {
  return covattn_cache_decode(cache_, q, n_q, scale, out, diagnostics, scratch_.data(),
                              scratch_.size());
}

covattn_status BoundedCache::Observe(const float* q, size_t n_q, float scale, const float* log_z) {
  return covattn_cache_observe(cache_, q, n_q, scale, log_z, scratch_.data(), scratch_.size());
}

}  // namespace covattn_model
