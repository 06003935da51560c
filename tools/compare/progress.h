// A one-line progress bar on a terminal: "[#####.....]  45%  label", redrawn
// at most ten times a second and erased at the end. Silent when the stream is
// not a terminal (logs and pipes get no control characters).
#ifndef COVATTN_TOOLS_COMPARE_PROGRESS_H_
#define COVATTN_TOOLS_COMPARE_PROGRESS_H_

#include <chrono>
#include <cstdio>
#include <string>

namespace covattn_compare {

class Progress {
 public:
  // enabled: the caller's wish (--quiet turns it off); the bar also needs
  // `stream` to be a terminal.
  Progress(std::FILE* stream, bool enabled);
  ~Progress();

  // fraction in [0, 1] of the whole run.
  void Update(double fraction, const std::string& label);
  // Erases the bar.
  void Finish();

  bool active() const { return active_; }

 private:
  std::FILE* stream_;
  bool active_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_PROGRESS_H_
