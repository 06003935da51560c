#include "dispatch.h"

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "covattn/covattn.h"

namespace covattn {
namespace detail {
namespace {

// Targets compiled into this library that the CPU supports, best first (in
// Highway a lower bit is a better target).
// The static target (the build's baseline) runs wherever the binary runs.
// Highway 1.0.3 never reports NEON on 32-bit ARM, where it is the baseline
// (toolchains/armv7-linux-gnueabihf.cmake), so it is added here.
int64_t AvailableTargets() { return (hwy::SupportedTargets() | HWY_STATIC_TARGET) & HWY_TARGETS; }

int64_t BestOf(int64_t targets) { return targets & -targets; }

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

// Highway's name for a target bit of this architecture, nullptr for a bit
// that is no target here. Highway knows every target of its own version, so
// targets newer than covattn are named too.
const char* HighwayName(int64_t bit) {
  const char* name = hwy::TargetName(bit);
  return std::strcmp(name, "Unknown") == 0 ? nullptr : name;
}

// Highway's target names on x86 and Arm (up to its current version), known
// on every architecture: hwy::TargetName only knows the current one, and
// "neon" on x86 is unavailable, not unknown.
constexpr const char* kX86AndArmNames[] = {
    "AVX10_2", "AVX3_SPR", "AVX3_ZEN4", "AVX3_DL", "AVX3", "AVX2",      "SSE4", "SSSE3",
    "SSE2",    "SVE2_128", "SVE_256",   "SVE2",    "SVE",  "NEON_BF16", "NEON", "NEON_WITHOUT_AES"};

// How a name reads: known or not, and the target bit it names on this
// architecture (compiled in or not), 0 for a target of another one.
// "fallback" names whichever portable target this build has (SCALAR or
// EMU128).
struct ParsedName {
  bool known;
  int64_t bit;
};

ParsedName ParseName(const std::string& name) {
  if (EqualsIgnoreCase(name, "fallback")) {
    return {true, (HWY_TARGETS & HWY_EMU128) ? HWY_EMU128 : HWY_SCALAR};
  }
  for (int b = 0; b < 63; ++b) {
    const char* known = HighwayName(int64_t{1} << b);
    if (known != nullptr && EqualsIgnoreCase(name, known)) return {true, int64_t{1} << b};
  }
  for (const char* other : kX86AndArmNames) {
    if (EqualsIgnoreCase(name, other)) return {true, 0};
  }
  return {false, 0};
}

// Parses a comma-separated list: the mask of the targets it names, and the
// names covattn does not know, comma-separated as written (spaces trimmed).
struct ParsedList {
  int64_t mask = 0;
  std::string unknown;
};

ParsedList ParseTargets(const char* names) {
  ParsedList list;
  std::string current;
  for (const char* p = names;; ++p) {
    if (*p == ',' || *p == '\0') {
      const size_t b = current.find_first_not_of(" \t");
      const size_t e = current.find_last_not_of(" \t");
      if (b != std::string::npos) {
        const std::string name = current.substr(b, e - b + 1);
        const ParsedName parsed = ParseName(name);
        list.mask |= parsed.bit;
        if (!parsed.known) list.unknown += (list.unknown.empty() ? "" : ",") + name;
      }
      current.clear();
      if (*p == '\0') break;
    } else {
      current.push_back(*p);
    }
  }
  return list;
}

struct DispatchState {
  hwy::ChosenTarget chosen;
  std::atomic<int64_t> active{0};  // the one target bit in use
  std::mutex mutex;                // serialises restrictions
  std::string unknown_env;         // names in COVATTN_TARGETS covattn does not know

  void Use(int64_t target) {
    active.store(target);
    chosen.Update(target);
  }
};

DispatchState& State() {
  static DispatchState* state = [] {
    auto* s = new DispatchState();  // never destroyed: usable during exit
    int64_t targets = AvailableTargets();
    if (const char* env = std::getenv("COVATTN_TARGETS")) {
      // Unknown and unavailable names are skipped; the others restrict.
      const ParsedList requested = ParseTargets(env);
      s->unknown_env = requested.unknown;
      if ((requested.mask & targets) != 0) targets &= requested.mask;
    }
    s->Use(BestOf(targets));
    return s;
  }();
  return *state;
}

}  // namespace

const hwy::ChosenTarget& ChosenTarget() { return State().chosen; }

int64_t CompiledTargets() { return HWY_TARGETS; }

const char* TargetName(int64_t target) {
  const char* name = HighwayName(target);
  return name != nullptr ? name : "unknown";
}

}  // namespace detail
}  // namespace covattn

using covattn::detail::AvailableTargets;
using covattn::detail::State;
using covattn::detail::TargetName;

extern "C" {

const char* covattn_target_name(void) { return TargetName(State().active.load()); }

size_t covattn_available_target_count(void) {
  size_t count = 0;
  for (int64_t t = AvailableTargets(); t != 0; t &= t - 1) ++count;
  return count;
}

const char* covattn_available_target(size_t index) {
  for (int64_t t = AvailableTargets(); t != 0; t &= t - 1) {
    if (index-- == 0) return TargetName(t & -t);
  }
  return nullptr;
}

covattn_status covattn_restrict_targets(const char* names) {
  auto& state = State();
  int64_t targets = AvailableTargets();
  if (names != nullptr && names[0] != '\0') {
    const covattn::detail::ParsedList requested = covattn::detail::ParseTargets(names);
    if (!requested.unknown.empty()) return COVATTN_ERR_UNKNOWN_TARGET;
    if ((requested.mask & targets) == 0) return COVATTN_ERR_TARGET_UNAVAILABLE;
    targets &= requested.mask;
  }
  std::lock_guard<std::mutex> lock(state.mutex);
  state.Use(targets & -targets);
  return COVATTN_OK;
}

const char* covattn_unknown_env_targets(void) { return State().unknown_env.c_str(); }

}  // extern "C"
