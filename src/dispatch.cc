#include "dispatch.h"

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <string>

#include "covattn/covattn.h"

namespace covattn {
namespace detail {
namespace {

// Targets compiled into this library that the CPU supports, best first (in
// Highway a lower bit is a better target).
int64_t AvailableTargets() { return hwy::SupportedTargets() & HWY_TARGETS; }

int64_t BestOf(int64_t targets) { return targets & -targets; }

struct DispatchState {
  hwy::ChosenTarget chosen;
  std::atomic<int64_t> active{0};  // the one target bit in use
  std::mutex mutex;                // serialises restrictions

  void Use(int64_t target) {
    active.store(target);
    chosen.Update(target);
  }
};

bool EqualsIgnoreCase(const std::string& a, const char* b) {
  size_t i = 0;
  for (; i < a.size() && b[i] != '\0'; ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return i == a.size() && b[i] == '\0';
}

// Every target name covattn knows, on any architecture (hwy::TargetName only
// knows the current one), so "neon" on x86 is unavailable, not unknown.
struct NamedTarget {
  int64_t bit;
  const char* name;
};
constexpr NamedTarget kTargetNames[] = {
    {HWY_AVX3_DL, "AVX3_DL"}, {HWY_AVX3, "AVX3"},         {HWY_AVX2, "AVX2"},
    {HWY_SSE4, "SSE4"},       {HWY_SSSE3, "SSSE3"},       {HWY_SVE2_128, "SVE2_128"},
    {HWY_SVE_256, "SVE_256"}, {HWY_SVE2, "SVE2"},         {HWY_SVE, "SVE"},
    {HWY_NEON, "NEON"},       {HWY_EMU128, "EMU128"},     {HWY_SCALAR, "SCALAR"}};

const char* NameOf(int64_t target) {
  for (const NamedTarget& t : kTargetNames) {
    if (t.bit == target) return t.name;
  }
  return "unknown";
}

// Highway target bit for a name, 0 if covattn does not know it. "fallback"
// names whichever portable target this build has (SCALAR or EMU128).
int64_t TargetFromName(const std::string& name) {
  if (EqualsIgnoreCase(name, "fallback")) {
    return (HWY_TARGETS & HWY_EMU128) ? HWY_EMU128 : HWY_SCALAR;
  }
  for (const NamedTarget& t : kTargetNames) {
    if (EqualsIgnoreCase(name, t.name)) return t.bit;
  }
  return 0;
}

// Parses a comma-separated list into a mask of known targets.
covattn_status ParseTargets(const char* names, int64_t* mask) {
  *mask = 0;
  std::string current;
  for (const char* p = names;; ++p) {
    if (*p == ',' || *p == '\0') {
      size_t b = current.find_first_not_of(" \t");
      size_t e = current.find_last_not_of(" \t");
      if (b != std::string::npos) {
        const int64_t target = TargetFromName(current.substr(b, e - b + 1));
        if (target == 0) return COVATTN_ERR_UNKNOWN_TARGET;
        *mask |= target;
      }
      current.clear();
      if (*p == '\0') break;
    } else {
      current.push_back(*p);
    }
  }
  return COVATTN_OK;
}

DispatchState& State() {
  static DispatchState* state = [] {
    auto* s = new DispatchState();  // never destroyed: usable during exit
    int64_t targets = AvailableTargets();
    const char* env = std::getenv("COVATTN_TARGETS");
    int64_t requested = 0;
    if (env != nullptr && ParseTargets(env, &requested) == COVATTN_OK &&
        (requested & targets) != 0) {
      targets &= requested;
    }
    s->Use(BestOf(targets));
    return s;
  }();
  return *state;
}

}  // namespace

const hwy::ChosenTarget& ChosenTarget() { return State().chosen; }

}  // namespace detail
}  // namespace covattn

using covattn::detail::AvailableTargets;
using covattn::detail::NameOf;
using covattn::detail::State;

extern "C" {

const char* covattn_target_name(void) { return NameOf(State().active.load()); }

size_t covattn_available_target_count(void) {
  size_t count = 0;
  for (int64_t t = AvailableTargets(); t != 0; t &= t - 1) ++count;
  return count;
}

const char* covattn_available_target(size_t index) {
  for (int64_t t = AvailableTargets(); t != 0; t &= t - 1) {
    if (index-- == 0) return NameOf(t & -t);
  }
  return nullptr;
}

covattn_status covattn_restrict_targets(const char* names) {
  auto& state = State();
  int64_t targets = AvailableTargets();
  if (names != nullptr && names[0] != '\0') {
    int64_t requested = 0;
    const covattn_status status = covattn::detail::ParseTargets(names, &requested);
    if (status != COVATTN_OK) return status;
    if ((requested & targets) == 0) return COVATTN_ERR_TARGET_UNAVAILABLE;
    targets &= requested;
  }
  std::lock_guard<std::mutex> lock(state.mutex);
  state.Use(targets & -targets);
  return COVATTN_OK;
}

}  // extern "C"
