// covattn-targets: prints the instruction-set targets covattn can run on this
// CPU (compiled in and supported), best first, and the one it has chosen.
// Honours COVATTN_TARGETS, so `COVATTN_TARGETS=sse4 covattn-targets` shows
// what a restricted run would use, and names what covattn did not recognise
// in it (exit status 1), which would otherwise go unnoticed.
#include <cstdio>
#include <cstring>

#include "covattn/covattn.h"

int main(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::printf(
        "usage: covattn-targets\n"
        "Prints the targets covattn can use on this CPU and the one chosen.\n"
        "COVATTN_TARGETS=name[,name...] restricts the choice; names it does not\n"
        "know are listed, and the exit status is then 1.\n");
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--version") == 0) {
    std::printf("covattn-targets %s\n", covattn_version());
    return 0;
  }
  if (argc > 1) {
    std::fprintf(stderr, "covattn-targets: unknown argument '%s' (try --help)\n", argv[1]);
    return 2;
  }
  std::printf("covattn %s\navailable:", covattn_version());
  for (size_t i = 0; i < covattn_available_target_count(); ++i) {
    std::printf(" %s", covattn_available_target(i));
  }
  std::printf("\nchosen: %s\n", covattn_target_name());
  const char* unknown = covattn_unknown_env_targets();
  if (unknown[0] != '\0') {
    std::printf("unknown in COVATTN_TARGETS (ignored): %s\n", unknown);
    return 1;
  }
  return 0;
}
