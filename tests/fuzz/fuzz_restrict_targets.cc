// Fuzz target for covattn_restrict_targets: any byte string as the list of
// target names, checked against an independent reading of the rules in
// covattn.h (comma-separated, case-insensitive, spaces and tabs around names
// ignored, "fallback" for the portable target, the best available member
// wins, a failed call changes nothing).
#include <cctype>
#include <string>
#include <vector>

#include "fuzz_util.h"

namespace {

// Every name covattn knows, on any architecture: Highway's x86 and Arm
// targets (up to its current version) and the portable ones.
const char* const kKnown[] = {
    "AVX10_2", "AVX3_SPR",  "AVX3_ZEN4", "AVX3_DL",          "AVX3",    "AVX2",
    "SSE4",    "SSSE3",     "SSE2",      "SVE2_128",         "SVE_256", "SVE2",
    "SVE",     "NEON_BF16", "NEON",      "NEON_WITHOUT_AES", "EMU128",  "SCALAR"};

std::string Upper(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string names(reinterpret_cast<const char*>(data),
                          strnlen(reinterpret_cast<const char*>(data), size));
  std::vector<std::string> available;
  for (size_t i = 0; i < covattn_available_target_count(); ++i) {
    available.push_back(covattn_available_target(i));
  }

  // Expected outcome.
  bool unknown = false;
  size_t best = available.size();  // index into `available`
  size_t begin = 0;
  while (begin <= names.size()) {
    size_t end = names.find(',', begin);
    if (end == std::string::npos) end = names.size();
    std::string name = names.substr(begin, end - begin);
    const size_t b = name.find_first_not_of(" \t"), e = name.find_last_not_of(" \t");
    if (b != std::string::npos) {
      name = Upper(name.substr(b, e - b + 1));
      if (name == "FALLBACK") name = available.back();
      bool known = false;
      for (const char* k : kKnown) known |= name == k;
      unknown |= !known;
      for (size_t i = 0; i < available.size(); ++i) {
        if (available[i] == name) best = std::min(best, i);
      }
    }
    begin = end + 1;
  }

  const std::string before = covattn_target_name();
  const covattn_status status = covattn_restrict_targets(names.c_str());
  if (names.empty()) {
    FUZZ_CHECK(status == COVATTN_OK && available[0] == covattn_target_name(),
               "\"\" must lift the restriction: status %d, target %s", status,
               covattn_target_name());
  } else if (unknown) {
    FUZZ_CHECK(status == COVATTN_ERR_UNKNOWN_TARGET && before == covattn_target_name(),
               "unknown name in \"%s\": status %d", names.c_str(), status);
  } else if (best == available.size()) {
    FUZZ_CHECK(status == COVATTN_ERR_TARGET_UNAVAILABLE && before == covattn_target_name(),
               "\"%s\" names no available target: status %d", names.c_str(), status);
  } else {
    FUZZ_CHECK(status == COVATTN_OK && available[best] == covattn_target_name(),
               "\"%s\": status %d, target %s, expected %s", names.c_str(), status,
               covattn_target_name(), available[best].c_str());
  }
  FUZZ_CHECK(covattn_restrict_targets(nullptr) == COVATTN_OK, "lifting the restriction");
  return 0;
}
