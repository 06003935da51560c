// The results of covattn-compare as a table (stdout), CSV and JSON (every
// measurement, every field), and the helpers shared with the SVG picture.
#ifndef COVATTN_TOOLS_COMPARE_REPORT_H_
#define COVATTN_TOOLS_COMPARE_REPORT_H_

#include <cstdio>
#include <string>
#include <utility>
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

// One field of a record as CSV and JSON write it: text, or a number (NaN
// means "not applicable": an empty CSV field, JSON null).
struct Field {
  std::string name;
  bool is_text;
  std::string text;
  double number;
};
using Record = std::vector<Field>;

inline Field Text(std::string name, const std::string& text) {
  return {std::move(name), true, text, 0.0};
}
inline Field Number(std::string name, double x) { return {std::move(name), false, "", x}; }

// A header line of the names of `header`, then one line per record.
std::string CsvText(const Record& header, const std::vector<Record>& records);
// Records as JSON objects, one per line, indented for a "measurements" array.
std::string JsonRecords(const std::vector<Record>& records);
std::string JsonString(const std::string& s);
std::string JsonNumber(double x);
std::string Sci(double x);
std::string Fixed(double x, int digits, const char* suffix = "");

// Writes `text` to `path`, replacing it; false with a message on failure.
bool WriteTextFile(const std::string& path, const std::string& text, std::string* error);

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_REPORT_H_
