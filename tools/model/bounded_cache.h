// The tools' one door to the bounded cache's C API (include/covattn/cache.h):
// every covattn_cache_* call of covattn-compare and of the model evaluation
// is here, one function per call, so that a change of that API is one edit.
#ifndef COVATTN_TOOLS_MODEL_BOUNDED_CACHE_H_
#define COVATTN_TOOLS_MODEL_BOUNDED_CACHE_H_

#include <cstddef>
#include <string>
#include <vector>

#include "covattn/cache.h"

namespace covattn_model {

// "<call> failed: <status string>"
std::string CacheStatusText(const char* call, covattn_status status);

// covattn_cache_size of a configuration; false with a message on failure.
bool CacheBytes(const covattn_cache_config& config, size_t* bytes, std::string* error);

// One cache and the scratch its calls need.
class BoundedCache {
 public:
  BoundedCache() = default;
  BoundedCache(const BoundedCache&) = delete;
  BoundedCache& operator=(const BoundedCache&) = delete;
  ~BoundedCache();

  // Creates the cache, with scratch for its calls with up to max_queries
  // query heads; false with a message on failure.
  bool Create(const covattn_cache_config& config, size_t max_queries, std::string* error);
  // covattn_cache_append of a block of tokens.
  covattn_status Append(const covattn_kv_cache& block);
  // covattn_cache_decode of n_q query heads; diagnostics may be null (the
  // fast path).
  covattn_status Decode(const float* q, size_t n_q, float scale, float* out,
                        const covattn_cache_diagnostics* diagnostics) const;
  // covattn_cache_observe of the same queries with the decode's log Z: an
  // engine's step for a cache with retained slots (a no-op without them).
  covattn_status Observe(const float* q, size_t n_q, float scale, const float* log_z);

 private:
  covattn_cache* cache_ = nullptr;
  mutable std::vector<unsigned char> scratch_;
};

}  // namespace covattn_model

#endif  // COVATTN_TOOLS_MODEL_BOUNDED_CACHE_H_
