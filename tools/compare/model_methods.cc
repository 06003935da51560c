#include "model_methods.h"

#include "methods.h"
#include "model/bounded_cache.h"

namespace covattn_compare {
namespace {

using covattn_model::MethodSpec;

// "sinks/window/outliers", then "/retained" when there are retained slots
std::string Tokens(const covattn_cache_config& c) {
  return std::to_string(c.n_sinks) + "/" + std::to_string(c.window) + "/" +
         std::to_string(c.n_outliers) +
         (c.n_retained ? "/" + std::to_string(c.n_retained) : std::string());
}

// The window w in [lo, hi] where the cache's bytes cross `target`: the
// smallest with bytes >= target (at_least), or the largest with bytes <=
// target; the bytes grow with the window. False when no window qualifies.
bool FindWindow(covattn_cache_config c, size_t d, size_t lo, size_t hi, size_t target,
                bool at_least, size_t* window, std::string* error) {
  auto bytes_at = [&](size_t w, size_t* bytes) {
    c.window = w;
    return CacheBytesPerKvHead(c, d, bytes, error);
  };
  size_t bytes = 0;
  if (!bytes_at(at_least ? hi : lo, &bytes)) return false;
  if (at_least ? bytes < target : bytes > target) return false;
  while (lo < hi) {  // invariant: the answer is in [lo, hi]
    const size_t mid = at_least ? lo + (hi - lo) / 2 : lo + (hi - lo + 1) / 2;
    if (!bytes_at(mid, &bytes)) return false;
    if (at_least) {
      bytes >= target ? hi = mid : lo = mid + 1;
    } else {
      bytes <= target ? lo = mid : hi = mid - 1;
    }
  }
  *window = lo;
  return true;
}

}  // namespace

bool CacheBytesPerKvHead(const covattn_cache_config& config, size_t d, size_t* bytes,
                         std::string* error) {
  covattn_cache_config c = config;
  c.n_kv_heads = 1;
  c.head_dim = d;
  if (!covattn_model::CacheBytes(c, bytes, error)) {
    *error += " for " + Tokens(c) + " tokens at head_dim " + std::to_string(d);
    return false;
  }
  return true;
}

bool PlanModelMethod(Method method, size_t budget, const Options& options, size_t d,
                     MethodSpec* spec, std::string* error) {
  MethodSpec p;
  p.key = MethodKey(method);
  p.budget = budget;
  if (method == Method::kExact || method == Method::kExactInt8) {
    p.exact = true;
    p.exact_dtype = method == Method::kExactInt8 ? COVATTN_INT8 : COVATTN_F32;
    p.budget = 0;
    p.name = MethodName(method);
    *spec = p;
    return true;
  }
  if (options.state_bytes) {  // the synthetic modes' accounting (methods.h)
    Options at = options;
    at.budget = budget;
    MethodPlan plan;
    if (!PlanMethod(method, at, d, &plan, error)) return false;
    p.cache = plan.config;
    p.persistent_bytes_per_kv_head = plan.bounded_bytes;
    p.name = std::string(MethodName(method)) + " B=" + std::to_string(budget) + " (" +
             Tokens(p.cache) + ")";
    *spec = p;
    return true;
  }
  const size_t sinks = options.sinks;
  const uint32_t dtype = options.cache_dtype;
  const covattn_cache_config hybrid =
      CacheConfig(d, sinks, budget - sinks, 0, options.forgetting, 0, dtype);
  size_t hybrid_bytes = 0;
  if (!CacheBytesPerKvHead(hybrid, d, &hybrid_bytes, error)) return false;
  const size_t max_window = budget + hybrid_bytes / CacheTokenBytes(d, dtype) + 1;
  switch (method) {
    case Method::kExact:  // planned above
    case Method::kExactInt8:
    case Method::kHybrid:
      p.cache = hybrid;
      break;
    case Method::kSinkWindow: {
      p.cache = CacheConfig(d, sinks, 0, 0, 1.0f, COVATTN_CACHE_DROP_EVICTED, dtype);
      error->clear();
      if (!FindWindow(p.cache, d, budget - sinks, max_window, hybrid_bytes, true, &p.cache.window,
                      error)) {
        if (error->empty()) *error = "no window reaches the hybrid's bytes";
        return false;
      }
      break;
    }
    case Method::kHybridOutliers: {
      const size_t slots = OutlierSlots(options, budget);
      p.cache = CacheConfig(d, sinks, 0, slots, options.forgetting, 0, dtype);
      error->clear();
      if (!FindWindow(p.cache, d, 1, budget, hybrid_bytes, false, &p.cache.window, error)) {
        if (error->empty()) {
          *error = "--budget " + std::to_string(budget) + " leaves no window for " +
                   std::to_string(sinks) + " sinks and " + std::to_string(slots) +
                   " outlier slots at head_dim " + std::to_string(d) + " in the hybrid's " +
                   std::to_string(hybrid_bytes) + " bytes";
        }
        return false;
      }
      break;
    }
    case Method::kReadout:
      p.cache = CacheConfig(d, 0, 0, 0, options.forgetting, 0, dtype);
      break;
    case Method::kHeavyHitters:
    case Method::kEmaRing: {
      covattn_cache_config c;
      if (!PlanRetention(method, options, d, hybrid_bytes, &c, error)) return false;
      c.n_kv_heads = hybrid.n_kv_heads;
      p.cache = c;
      break;
    }
    case Method::kOneDnn:
      *error = "onednn is not run inside a model";
      return false;
  }
  if (!CacheBytesPerKvHead(p.cache, d, &p.persistent_bytes_per_kv_head, error)) return false;
  p.name = std::string(MethodName(method)) + " B=" + std::to_string(budget) + " (" +
           Tokens(p.cache) + ")";
  if (dtype != COVATTN_F32) p.name += std::string(" ") + CacheDtypeName(dtype);
  *spec = p;
  return true;
}

std::vector<Method> ModelMethods(const Options& options) {
  if (!options.methods_given) {
    return {Method::kExact,          Method::kSinkWindow,   Method::kHybrid,
            Method::kHybridOutliers, Method::kHeavyHitters, Method::kEmaRing};
  }
  std::vector<Method> methods;
  for (Method m : options.methods) {
    if (m != Method::kOneDnn) methods.push_back(m);
  }
  return methods;
}

}  // namespace covattn_compare
