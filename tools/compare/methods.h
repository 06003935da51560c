// The compared methods on one KV head, and the memory each keeps.
//
// Equal-memory accounting (docs/compare.md): a token of one KV head costs
// 2 * head_dim * 4 bytes (K and V in f32; with --cache-dtype, the bounded
// caches' tokens cost what that dtype stores: CacheTokenBytes). The covariance summary costs what
// covattn stores for it: W and the means in f64 (8 (1 + 2d) bytes) and the
// co-moments M_kk, M_vk in f32 (4 * 2d^2 bytes). The outlier policy adds its
// whitening (packed Cholesky factor and mean, 4 (d(d+1)/2 + d) bytes) and a
// score per slot. With --budget B exact tokens:
//   hybrid             sinks + window = B, plus the summary;
//   sink + window      the hybrid's bytes spent on tokens (B plus the
//                      summary's bytes in whole tokens, rounded up);
//   hybrid + outliers  the hybrid's bytes: sinks + outliers + window, plus the
//                      summary, whitening and scores (the window gives up the
//                      tokens the whitening costs);
//   covariance readout the summary alone.
// Exact attention keeps every token of the context.
#ifndef COVATTN_TOOLS_COMPARE_METHODS_H_
#define COVATTN_TOOLS_COMPARE_METHODS_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "covattn/cache.h"
#include "options.h"

namespace covattn_compare {

size_t TokenBytes(size_t dim);
// An int8 token: K and V of dim bytes with one f32 scale each.
size_t Int8TokenBytes(size_t dim);
// A token of one KV head as a bounded cache of that dtype stores it (its
// int8 vectors pad dim to a multiple of 4 before the scale: covattn/cache.h).
size_t CacheTokenBytes(size_t dim, uint32_t dtype);
size_t SummaryBytes(size_t dim);
size_t WhiteningBytes(size_t dim, size_t outlier_slots);

// A cache of one KV head storing K and V as dtype.
covattn_cache_config CacheConfig(size_t dim, size_t sinks, size_t window, size_t outliers,
                                 float forgetting, uint32_t flags, uint32_t dtype);

// A method's configuration for one head_dim.
struct MethodPlan {
  Method method = Method::kExact;
  size_t dim = 0;
  covattn_cache_config config{};  // bounded methods, one KV head
  size_t bounded_bytes = 0;       // bounded methods: state bytes per KV head
};

bool PlanMethod(Method method, const Options& options, size_t dim, MethodPlan* plan,
                std::string* error);

// The retention methods (h2o, ema-ring) in at most `bytes` per KV head by
// covattn_cache_size: S sinks, then as many pairs of a window slot and a
// retained slot as fit beside the summary (half the exact tokens retained,
// half recent, a split chosen a priori, docs/cache.md). False with a
// message when not even one pair fits.
bool PlanRetention(Method method, const Options& options, size_t dim, size_t bytes,
                   covattn_cache_config* config, std::string* error);

// State bytes per KV head at a context length: every token for the exact
// methods, the fixed budget for the bounded ones.
size_t StateBytes(const MethodPlan& plan, size_t context);

// What an untimed decode reports per query. Entries a method cannot give
// are NaN (log Z of the oneDNN peer, summary share and ESS of exact methods).
struct DecodeResult {
  std::vector<float> out;  // [n_q][dim]
  std::vector<float> log_z, summary_share, summary_ess;
};

// One method on one KV head whose keys and values (f32, [token][dim]) stay
// owned by the caller. Not thread-safe; one head per thread.
class HeadMethod {
 public:
  // max_queries bounds n_q of every decode.
  static std::unique_ptr<HeadMethod> Create(const MethodPlan& plan, float scale, const float* k,
                                            const float* v, size_t max_queries, std::string* error);
  virtual ~HeadMethod() = default;

  // Makes tokens [0, n) the context; n never decreases. Bounded methods
  // append the new tokens (the time spent is added to append_seconds()).
  virtual bool Advance(size_t n, std::string* error) = 0;

  // Untimed decode with diagnostics, every status checked.
  virtual bool Decode(const float* q, size_t n_q, DecodeResult* result, std::string* error) = 0;

  // The timed path: no allocation and no checks beyond keeping the status
  // (FastStatusOk() reports whether every fast call since the last check
  // succeeded).
  virtual void DecodeFast(const float* q, size_t n_q, float* out) = 0;
  bool FastStatusOk() {
    const bool ok = fast_ok_;
    fast_ok_ = true;
    return ok;
  }

  // Bytes this head's state occupies in memory as allocated (cache objects:
  // covattn_cache_size, workspace and alignment included).
  virtual size_t AllocatedBytes() const = 0;
  double append_seconds() const { return append_seconds_; }

 protected:
  bool fast_ok_ = true;
  double append_seconds_ = 0.0;
};

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_METHODS_H_
