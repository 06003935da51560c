// The retention unit of the bounded cache (include/covattn/cache.h): per KV
// head, sets of exact slots that the tokens leaving the window are offered
// to. A set keeps the highest-scored of its residents and newcomers; what it
// does not keep goes on to the next set, then to the summary.
//
// A policy is one RetentionPolicy: how newcomers are scored when offered,
// how residents' scores follow the queries (observe), and which way a tie
// goes. Admission and eviction are the slots' own (AdmitToSlots), the same
// for every policy. The query-aware policies (EMA, H2O, TOVA) are in
// retention.cc, the outlier policy in cache_outliers.cc.
#ifndef COVATTN_SRC_RETENTION_H_
#define COVATTN_SRC_RETENTION_H_

#include <cstddef>
#include <cstdint>

#include "cache.h"

namespace covattn {
namespace detail {

// One head's slots of one set.
struct SlotSet {
  unsigned char* k;  // rows of head_dim elements of the cache's dtype
  unsigned char* v;
  float* scores;
  uint64_t* stamps;  // the residents' token numbers; null: not kept
  uint32_t* count;
  size_t capacity;
};

struct RetentionPolicy {
  const char* name;
  // scores[i] <- its value after a query gave the token weights[i] (null for
  // a policy that does not see queries).
  void (*observe)(float* scores, const float* weights, size_t n, float decay);
  // true: a newcomer scored as low as the lowest resident displaces it, and
  // the oldest of equal residents leaves first (stamps needed); false: it is
  // passed on, and residents are compared by slot.
  bool newcomer_wins_ties;
};

// The query-aware policy of a covattn_retention.
const RetentionPolicy& QueryPolicy(uint32_t retention);
// The outlier policy (cache_outliers.cc): the squared Mahalanobis distance,
// scored on admission and rescored when the whitening is rebuilt.
extern const RetentionPolicy kOutlierPolicy;

// Offers the rows of `in`, in order, with their scores (scores[i] for row i;
// in.stamp for the stamps), to the slots: a newcomer takes a free slot, or
// displaces the lowest-scored resident when it scores higher (or as high:
// policy.newcomer_wins_ties); the row that does not stay, newcomer or
// displaced resident, goes to `out` with its score and stamp.
void AdmitToSlots(covattn_cache* cache, const SlotSet& slots, const RetentionPolicy& policy,
                  const StageRows& in, const float* scores, StageRows* out);

// Head h's retained slots and outlier slots.
SlotSet RetainedSlots(covattn_cache* cache, size_t h);
SlotSet OutlierSlots(covattn_cache* cache, size_t h);

// The retained slots' stage of an eviction: head h's rows `in` (scores
// carried from the window) offered to its retained slots.
void OfferToRetained(covattn_cache* cache, size_t h, const StageRows& in, StageRows* out);

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_RETENTION_H_
