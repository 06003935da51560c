// Run-time dispatch: the target list, forcing a target, bad names, versions.
#include <doctest/doctest.h>

#include <cstdlib>
#include <set>

#include "test_util.h"

TEST_CASE("available targets are listed best first and each can be forced") {
  const size_t count = covattn_available_target_count();
  REQUIRE(count >= 1);
  CHECK(covattn_available_target(count) == nullptr);
  std::set<std::string> seen;
  for (size_t i = 0; i < count; ++i) {
    const std::string name = covattn_available_target(i);
    CHECK(seen.insert(name).second);
    REQUIRE(covattn_restrict_targets(name.c_str()) == COVATTN_OK);
    CHECK(name == covattn_target_name());
  }
  // The last one is the portable fallback, present everywhere.
  const std::string last = covattn_available_target(count - 1);
  CHECK((last == "SCALAR" || last == "EMU128"));
  REQUIRE(covattn_restrict_targets("fallback") == COVATTN_OK);
  CHECK(last == covattn_target_name());
  REQUIRE(covattn_restrict_targets(nullptr) == COVATTN_OK);
  CHECK(std::string(covattn_available_target(0)) == covattn_target_name());
}

TEST_CASE("a list picks its best available member; case and spaces do not matter") {
  const size_t count = covattn_available_target_count();
  if (count >= 2) {
    const std::string second = covattn_available_target(1);
    const std::string list = " fallback , " + second;
    REQUIRE(covattn_restrict_targets(list.c_str()) == COVATTN_OK);
    CHECK(second == covattn_target_name());
  }
  REQUIRE(covattn_restrict_targets("") == COVATTN_OK);
  CHECK(std::string(covattn_available_target(0)) == covattn_target_name());
}

TEST_CASE("bad target names leave the choice unchanged") {
  const std::string before = covattn_target_name();
  CHECK(covattn_restrict_targets("avx9000") == COVATTN_ERR_UNKNOWN_TARGET);
  CHECK(covattn_restrict_targets("fallback,bogus") == COVATTN_ERR_UNKNOWN_TARGET);
#if defined(__x86_64__) || defined(__i386__)
  CHECK(covattn_restrict_targets("neon") == COVATTN_ERR_TARGET_UNAVAILABLE);
#else
  CHECK(covattn_restrict_targets("avx2") == COVATTN_ERR_TARGET_UNAVAILABLE);
#endif
  CHECK(before == covattn_target_name());
}

TEST_CASE("version") {
  CHECK(covattn_version_number() == COVATTN_VERSION_NUMBER);
  const std::string expected = std::to_string(COVATTN_VERSION_MAJOR) + "." +
                               std::to_string(COVATTN_VERSION_MINOR) + "." +
                               std::to_string(COVATTN_VERSION_PATCH);
  CHECK(expected == covattn_version());
}
