// The results of covattn-compare --model: a table (stdout), CSV and JSON
// (one record per method and budget, every field; docs/compare.md), and the
// picture of KL against the budget.
#ifndef COVATTN_TOOLS_COMPARE_MODEL_REPORT_H_
#define COVATTN_TOOLS_COMPARE_MODEL_REPORT_H_

#include <cstdio>
#include <string>

#include "model_mode.h"
#include "options.h"
#include "report.h"

namespace covattn_compare {

void WriteModelTable(std::FILE* out, const RunInfo& info, const Options& options,
                     const ModelResult& result);

// The CSV, JSON and SVG files; false with a message when one cannot be
// written.
bool WriteModelFiles(const RunInfo& info, const Options& options, const ModelResult& result,
                     std::string* error);

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_MODEL_REPORT_H_
