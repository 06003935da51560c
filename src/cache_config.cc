// The bounded cache's configuration (include/covattn/cache.h): defaults for
// zero fields, and the budget rules, each with its status and its words.

#include <cmath>

#include "cache.h"

namespace covattn {
namespace detail {
namespace {

constexpr uint32_t kKnownFlags = COVATTN_CACHE_DROP_EVICTED;
constexpr float kDefaultRetentionDecay = 0.9f;

struct Rule {
  covattn_status status;
  const char* detail;
};

constexpr Rule kOk{COVATTN_OK, nullptr};

bool InUnitInterval(float x) { return x > 0.0f && x <= 1.0f; }

// The first rule `c` (defaults already filled in) breaks, in the order of
// cache.h.
Rule FirstBrokenRule(const covattn_cache_config& c) {
  if (KvElementSize(c.dtype) == 0) {
    return {COVATTN_ERR_UNSUPPORTED_DTYPE,
            "dtype is not COVATTN_F32, COVATTN_F16, COVATTN_BF16 or COVATTN_INT8"};
  }
  if (c.head_dim == 0 || c.head_dim > COVATTN_MAX_HEAD_DIM) {
    return {COVATTN_ERR_INVALID_HEAD_DIM, "head_dim is 0 or above COVATTN_MAX_HEAD_DIM"};
  }
  if (c.n_kv_heads == 0) return {COVATTN_ERR_INVALID_HEAD_COUNT, "n_kv_heads is 0"};
  if (c.rope > COVATTN_ROPE_HALF_SPLIT) {
    return {COVATTN_ERR_INVALID_BUDGET, "rope is not a covattn_rope"};
  }
  if (c.rope != COVATTN_ROPE_NONE && c.head_dim % 2 != 0) {
    return {COVATTN_ERR_INVALID_HEAD_DIM,
            "RoPE rotates pairs of dimensions: head_dim must be even"};
  }
  const bool summarizes = c.summary != COVATTN_SUMMARY_NONE;
  if (summarizes && !InUnitInterval(c.forgetting)) {
    return {COVATTN_ERR_INVALID_FORGETTING, "forgetting is not in (0, 1] (0 means 1)"};
  }
  if (!InUnitInterval(c.retention_decay)) {
    return {COVATTN_ERR_INVALID_FORGETTING, "retention_decay is not in (0, 1] (0 means 0.9)"};
  }
  if ((c.flags & ~kKnownFlags) != 0) {
    return {COVATTN_ERR_INVALID_BUDGET, "flags holds bits covattn does not know"};
  }
  if (c.summary > COVATTN_SUMMARY_NONE) {
    return {COVATTN_ERR_INVALID_BUDGET, "summary is not a covattn_cache_summary"};
  }
  if (c.retention > COVATTN_RETENTION_TOVA) {
    return {COVATTN_ERR_INVALID_BUDGET, "retention is not a covattn_retention"};
  }
  if (!summarizes && c.n_outliers != 0) {
    return {COVATTN_ERR_INVALID_BUDGET,
            "outlier slots need a summary: their score is a distance under its key statistics"};
  }
  if (!summarizes && c.n_sinks == 0 && c.window == 0 && c.n_retained == 0) {
    return {COVATTN_ERR_INVALID_BUDGET,
            "without a summary the cache needs exact slots (n_sinks, window or n_retained)"};
  }
  return kOk;
}

}  // namespace

covattn_status NormalizeConfig(const covattn_cache_config& in, covattn_cache_config* out,
                               const char** detail) {
  covattn_cache_config c = in;
  Rule rule = kOk;
  if ((c.flags & COVATTN_CACHE_DROP_EVICTED) != 0) {
    if (c.summary == COVATTN_SUMMARY_COMPACT) {
      rule = {COVATTN_ERR_INVALID_BUDGET,
              "COVATTN_CACHE_DROP_EVICTED asks for no summary, summary for a compact one"};
    }
    c.summary = COVATTN_SUMMARY_NONE;
  }
  if (c.summary == COVATTN_SUMMARY_NONE) c.flags |= COVATTN_CACHE_DROP_EVICTED;
  if (c.forgetting == 0.0f) c.forgetting = 1.0f;
  if (c.retention_decay == 0.0f) c.retention_decay = kDefaultRetentionDecay;
  if (rule.status == COVATTN_OK) rule = FirstBrokenRule(c);
  // Without a summary the forgetting factor means nothing; 1 keeps files
  // and comparisons independent of it.
  if (c.summary == COVATTN_SUMMARY_NONE) c.forgetting = 1.0f;
  if (detail != nullptr) *detail = rule.detail;
  if (rule.status == COVATTN_OK) *out = c;
  return rule.status;
}

}  // namespace detail
}  // namespace covattn

extern "C" {

const char* covattn_cache_config_error(const covattn_cache_config* config) {
  if (config == nullptr) return "config is NULL";
  covattn_cache_config normalized;
  const char* detail = nullptr;
  if (covattn::detail::NormalizeConfig(*config, &normalized, &detail) != COVATTN_OK) {
    return detail;
  }
  // What the layout adds: sizes that overflow.
  size_t bytes;
  if (covattn_cache_size(config, &bytes) == COVATTN_ERR_SIZE_OVERFLOW) {
    return "the budget's memory does not fit in size_t";
  }
  return nullptr;
}

}  // extern "C"
