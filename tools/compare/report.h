// The results of covattn-compare as a table (stdout), CSV and JSON (every
// measurement, every field), and the helpers shared with the SVG picture.
#ifndef COVATTN_TOOLS_COMPARE_REPORT_H_
#define COVATTN_TOOLS_COMPARE_REPORT_H_

#include <cstdio>
#include <string>
#include <vector>

#include "evaluate.h"
#include "options.h"

namespace covattn_compare {

// What the run was, for the JSON header and the table's first line.
struct RunInfo {
  std::string tool_version, target, cpu, mode;  // mode: "synthetic" or "npy"
};

std::string CpuName();

std::string FormatBytes(double bytes);
std::string FormatSeconds(double seconds);

void WriteTable(std::FILE* out, const RunInfo& info, const Options& options,
                const std::vector<Measurement>& results);

// Both return false (and say why) when the file cannot be written.
bool WriteCsv(const std::string& path, const RunInfo& info, const Options& options,
              const std::vector<Measurement>& results, std::string* error);
bool WriteJson(const std::string& path, const RunInfo& info, const Options& options,
               const std::vector<Measurement>& results, std::string* error);

// Writes `text` to `path`, replacing it; false with a message on failure.
bool WriteTextFile(const std::string& path, const std::string& text, std::string* error);

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_REPORT_H_
