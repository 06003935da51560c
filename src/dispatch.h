// covattn's run-time dispatch: Highway's HWY_EXPORT tables, indexed by a
// ChosenTarget that belongs to covattn, so restricting covattn's targets
// (tests, benchmarks, COVATTN_TARGETS) never changes what other Highway users
// in the same process run.
#ifndef COVATTN_SRC_DISPATCH_H_
#define COVATTN_SRC_DISPATCH_H_

#include <hwy/highway.h>

namespace covattn {
namespace detail {

// Initialised on first use from the CPU's targets and COVATTN_TARGETS.
const hwy::ChosenTarget& ChosenTarget();

// The Highway targets compiled into the library (its HWY_TARGETS), whether
// or not this CPU supports them.
int64_t CompiledTargets();

// covattn's name of a target bit: Highway's, "unknown" for a bit that is no
// target of this architecture.
const char* TargetName(int64_t target);

}  // namespace detail
}  // namespace covattn

// Use in a translation unit that included hwy/foreach_target.h and declared
// HWY_EXPORT(FUNC): GetIndex() must see that unit's HWY_TARGETS.
#define COVATTN_DISPATCH(FUNC) \
  (*(HWY_DISPATCH_TABLE(FUNC)[::covattn::detail::ChosenTarget().GetIndex()]))

#endif  // COVATTN_SRC_DISPATCH_H_
