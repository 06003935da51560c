// The retention unit (retention.h): slot admission and eviction, shared by
// every policy, and the query-aware policies, which differ only in how a
// token's score follows the weights decode gives it (cache.h):
//
//   EMA   s <- lambda s + w   recent weight, fading at lambda per query
//   H2O   s <- s + w          all weight ever drawn (heavy hitters)
//   TOVA  s <- w              the last query's weight

#include "retention.h"

namespace covattn {
namespace detail {
namespace {

void ObserveEma(float* scores, const float* weights, size_t n, float decay) {
  for (size_t i = 0; i < n; ++i) scores[i] = decay * scores[i] + weights[i];
}
void ObserveH2o(float* scores, const float* weights, size_t n, float) {
  for (size_t i = 0; i < n; ++i) scores[i] += weights[i];
}
void ObserveTova(float* scores, const float* weights, size_t n, float) {
  for (size_t i = 0; i < n; ++i) scores[i] = weights[i];
}

constexpr RetentionPolicy kEma{"ema", ObserveEma, true};
constexpr RetentionPolicy kH2o{"h2o", ObserveH2o, true};
constexpr RetentionPolicy kTova{"tova", ObserveTova, true};

// The resident to displace: the lowest score; on ties the oldest (with
// stamps) or the first slot.
size_t Victim(const SlotSet& s, size_t count, bool oldest_on_ties) {
  size_t victim = 0;
  for (size_t i = 1; i < count; ++i) {
    if (s.scores[i] < s.scores[victim] ||
        (oldest_on_ties && s.scores[i] == s.scores[victim] && s.stamps[i] < s.stamps[victim])) {
      victim = i;
    }
  }
  return victim;
}

}  // namespace

const RetentionPolicy& QueryPolicy(uint32_t retention) {
  switch (retention) {
    case COVATTN_RETENTION_H2O:
      return kH2o;
    case COVATTN_RETENTION_TOVA:
      return kTova;
    default:
      return kEma;
  }
}

void AdmitToSlots(covattn_cache* cache, const SlotSet& slots, const RetentionPolicy& policy,
                  const StageRows& in, const float* scores, StageRows* out) {
  const size_t d = cache->Dim(), row = cache->vec_bytes;
  uint32_t& count = *slots.count;
  for (size_t e = 0; e < in.n; ++e) {
    const float* k = in.k + e * d;
    const float* v = in.v + e * d;
    const uint64_t stamp = in.stamp != nullptr ? in.stamp[e] : 0;
    size_t slot;
    if (count < slots.capacity) {
      slot = count++;
    } else {
      slot = Victim(slots, count, policy.newcomer_wins_ties);
      const bool stays = policy.newcomer_wins_ties ? scores[e] >= slots.scores[slot]
                                                   : scores[e] > slots.scores[slot];
      if (!stays) {
        out->Add(k, v, scores[e], stamp);
        continue;
      }
      out->AddStored(cache, slots.k + slot * row, slots.v + slot * row, slots.scores[slot],
                     slots.stamps != nullptr ? slots.stamps[slot] : 0);
    }
    StoreRow(cache, k, slots.k + slot * row);
    StoreRow(cache, v, slots.v + slot * row);
    slots.scores[slot] = scores[e];
    if (slots.stamps != nullptr) slots.stamps[slot] = stamp;
  }
}

SlotSet RetainedSlots(covattn_cache* cache, size_t h) {
  const HeadRegions<covattn_cache> head = Head(cache, h);
  const KvRows<covattn_cache> rows = Retained(cache, h, 0);
  return {rows.k,
          rows.v,
          head.retained_scores,
          head.retained_stamps,
          head.retained_count,
          cache->config.n_retained};
}

SlotSet OutlierSlots(covattn_cache* cache, size_t h) {
  const HeadRegions<covattn_cache> head = Head(cache, h);
  const KvRows<covattn_cache> rows = Outliers(cache, h, 0);
  return {rows.k, rows.v, head.scores, nullptr, head.count, cache->config.n_outliers};
}

void OfferToRetained(covattn_cache* cache, size_t h, const StageRows& in, StageRows* out) {
  AdmitToSlots(cache, RetainedSlots(cache, h), QueryPolicy(cache->config.retention), in, in.score,
               out);
}

}  // namespace detail
}  // namespace covattn
