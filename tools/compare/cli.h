// covattn-compare as a function, so that tests run it in-process (the same
// code as the installed program, including under qemu) with their own
// streams.
#ifndef COVATTN_TOOLS_COMPARE_CLI_H_
#define COVATTN_TOOLS_COMPARE_CLI_H_

#include <cstdio>

namespace covattn_compare {

// Exit status: 0 success, 1 runtime failure, 2 usage error. The table goes
// to `out`; messages and the progress bar to `err`.
int CompareMain(int argc, const char* const* argv, std::FILE* out, std::FILE* err);

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_CLI_H_
