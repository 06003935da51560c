#include "progress.h"

#include <unistd.h>

#include <algorithm>

namespace covattn_compare {
namespace {

constexpr int kBarWidth = 24;
constexpr size_t kLineWidth = 79;

}  // namespace

Progress::Progress(std::FILE* stream, bool enabled)
    : stream_(stream),
      active_(enabled && stream != nullptr && isatty(fileno(stream)) == 1),
      start_(std::chrono::steady_clock::now()),
      last_(start_ - std::chrono::seconds(1)) {}

Progress::~Progress() { Finish(); }

void Progress::Update(double fraction, const std::string& label) {
  if (!active_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  fraction = std::min(std::max(fraction, 0.0), 1.0);
  const int filled = static_cast<int>(fraction * kBarWidth + 0.5);
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  std::string line = "[" + std::string(filled, '#') + std::string(kBarWidth - filled, '.') + "] ";
  char numbers[48];
  std::snprintf(numbers, sizeof(numbers), "%3d%% %3.0fs  ", static_cast<int>(fraction * 100),
                elapsed);
  line += numbers + label;
  if (line.size() > kLineWidth) line.resize(kLineWidth);
  line.resize(kLineWidth, ' ');
  std::fprintf(stream_, "\r%s", line.c_str());
  std::fflush(stream_);
  drawn_ = true;
}

void Progress::Finish() {
  if (!active_ || !drawn_) return;
  std::fprintf(stream_, "\r%s\r", std::string(kLineWidth, ' ').c_str());
  std::fflush(stream_);
  drawn_ = false;
}

}  // namespace covattn_compare
