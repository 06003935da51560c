#include "report.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <system_error>

namespace covattn_compare {
namespace {

std::vector<Field> Fields(const Measurement& m, const RunInfo& info, const Options& options) {
  return {
      Text("series", m.series),
      Text("workload", m.workload),
      Number("sigma", m.sigma),
      Number("layer", m.layer < 0 ? std::nan("") : double(m.layer)),
      Number("head_dim", double(m.dim)),
      Number("kv_heads", double(m.n_kv_heads)),
      Number("q_heads", double(m.n_q_heads)),
      Number("context", double(m.context)),
      Text("method", MethodKey(m.method)),
      Text("method_name", MethodName(m.method)),
      Number("budget", double(m.budget)),
      Text("cache_dtype", CacheDtypeName(options.cache_dtype)),
      Number("memory_bytes", double(m.memory_bytes)),
      Number("allocated_bytes", double(m.allocated_bytes)),
      Number("decode_seconds_median", m.time_median),
      Number("decode_seconds_min", m.time_min),
      Number("decode_seconds_max", m.time_max),
      Number("samples", double(m.samples)),
      Number("decodes_per_sample", double(m.reps_per_sample)),
      Number("speedup", m.speedup),
      Number("error_queries", double(m.n_queries)),
      Number("rel_l2_median", m.rel_l2_median),
      Number("rel_l2_max", m.rel_l2_max),
      Number("cosine_median", m.cosine_median),
      Number("cosine_min", m.cosine_min),
      Number("log_z_error_median", m.log_z_err_median),
      Number("log_z_error_max", m.log_z_err_max),
      Number("summary_share_median", m.summary_share_median),
      Number("summary_ess_median", m.summary_ess_median),
      Number("append_ns_per_token", m.append_ns_per_token),
      Text("target", info.target),
      Number("threads", double(options.threads)),
      Number("cold", options.cold ? 1.0 : 0.0),
  };
}

std::string FormatNumber(double x) {
  char buffer[40];
  std::snprintf(buffer, sizeof(buffer), "%.9g", x);
  return buffer;
}

std::string CsvQuote(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string quoted = "\"";
  for (char c : s) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + "\"";
}

std::string Speedup(double x) {
  if (!std::isfinite(x)) return "n/a";
  return Fixed(x, x >= 100 ? 0 : x >= 10 ? 1 : 2, "x");
}

std::string SeriesHeading(const Measurement& m) {
  std::string s = m.series + "  (" + std::to_string(m.n_kv_heads) + " KV heads x " +
                  std::to_string(m.n_q_heads / m.n_kv_heads) +
                  " query heads, d=" + std::to_string(m.dim) + ")";
  return s;
}

}  // namespace

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buffer[8];
          std::snprintf(buffer, sizeof(buffer), "\\u%04x", c);
          out += buffer;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string JsonNumber(double x) { return std::isfinite(x) ? FormatNumber(x) : "null"; }

std::string Sci(double x) {
  if (!std::isfinite(x)) return "n/a";
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.2e", x);
  return buffer;
}

std::string Fixed(double x, int digits, const char* suffix) {
  if (!std::isfinite(x)) return "n/a";
  char buffer[40];
  std::snprintf(buffer, sizeof(buffer), "%.*f%s", digits, x, suffix);
  return buffer;
}

std::string CsvText(const Record& header, const std::vector<Record>& records) {
  std::string csv;
  for (size_t i = 0; i < header.size(); ++i) csv += (i ? "," : "") + header[i].name;
  csv += '\n';
  for (const Record& fields : records) {
    for (size_t i = 0; i < fields.size(); ++i) {
      if (i) csv += ',';
      const Field& f = fields[i];
      if (f.is_text)
        csv += CsvQuote(f.text);
      else if (std::isfinite(f.number))
        csv += FormatNumber(f.number);
    }
    csv += '\n';
  }
  return csv;
}

std::string JsonRecords(const std::vector<Record>& records) {
  std::string j = "[";
  for (size_t r = 0; r < records.size(); ++r) {
    j += r ? ",\n    {" : "\n    {";
    const Record& fields = records[r];
    for (size_t i = 0; i < fields.size(); ++i) {
      const Field& f = fields[i];
      j += (i ? ", " : "") + JsonString(f.name) + ": " +
           (f.is_text ? JsonString(f.text) : JsonNumber(f.number));
    }
    j += "}";
  }
  return j + (records.empty() ? "]" : "\n  ]");
}

std::string CpuName() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  std::string fallback;
  while (std::getline(cpuinfo, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    key.erase(key.find_last_not_of(" \t") + 1);
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    if (key == "model name" && !value.empty()) return value;
    if ((key == "CPU part" || key == "Hardware") && fallback.empty()) fallback = key + " " + value;
  }
  return fallback.empty() ? "unknown CPU" : fallback;
}

std::string FormatBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024.0 && unit < 4) bytes /= 1024.0, ++unit;
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), unit == 0 ? "%.0f %s" : "%.1f %s", bytes, units[unit]);
  return buffer;
}

std::string FormatSeconds(double seconds) {
  if (!std::isfinite(seconds)) return "n/a";
  char buffer[32];
  if (seconds >= 1.0) {
    std::snprintf(buffer, sizeof(buffer), "%.2f s", seconds);
  } else if (seconds >= 1e-3) {
    std::snprintf(buffer, sizeof(buffer), "%.2f ms", seconds * 1e3);
  } else if (seconds >= 1e-6) {
    std::snprintf(buffer, sizeof(buffer), "%.1f us", seconds * 1e6);
  } else {
    std::snprintf(buffer, sizeof(buffer), "%.0f ns", seconds * 1e9);
  }
  return buffer;
}

void WriteTable(std::FILE* out, const RunInfo& info, const Options& options,
                const std::vector<Measurement>& results) {
  std::fprintf(out, "covattn-compare %s | %s | target %s | %zu thread%s%s\n",
               info.tool_version.c_str(), info.cpu.c_str(), info.target.c_str(), options.threads,
               options.threads == 1 ? "" : "s", options.cold ? " | cold caches" : "");
  std::string budgets;
  for (size_t b : options.budgets) budgets += (budgets.empty() ? "" : ",") + std::to_string(b);
  std::fprintf(out,
               "bounded methods: %s exact tokens per KV head (%zu sinks), equal memory; "
               "errors against float64 attention, medians over %s\n",
               budgets.c_str(), options.sinks, info.mode == "npy" ? "query heads" : "queries");
  // Series in order of first appearance.
  std::vector<std::string> order;
  std::map<std::string, size_t> longest;
  for (const Measurement& m : results) {
    if (!longest.count(m.series)) order.push_back(m.series);
    longest[m.series] = std::max(longest[m.series], m.context);
  }
  const bool all = options.table == TableMode::kAll;
  for (const std::string& series : order) {
    const Measurement* first = nullptr;
    for (const Measurement& m : results) {
      if (m.series == series) {
        first = &m;
        break;
      }
    }
    const std::string stored =
        options.cache_dtype == COVATTN_F32
            ? std::string()
            : std::string(", bounded caches store ") + CacheDtypeName(options.cache_dtype);
    std::fprintf(out, "\n%s%s%s\n", SeriesHeading(*first).c_str(),
                 all ? "" : (", context " + std::to_string(longest[series])).c_str(),
                 stored.c_str());
    if (all) std::fprintf(out, "%8s  ", "context");
    std::fprintf(out, "%-20s %12s %10s %8s %9s %9s %9s\n", "method", "memory/layer", "decode",
                 "speedup", "rel L2", "cosine", "|dlog Z|");
    for (const Measurement& m : results) {
      if (m.series != series || (!all && m.context != longest[series])) continue;
      if (all) std::fprintf(out, "%8zu  ", m.context);
      std::fprintf(out, "%-20s %12s %10s %8s %9s %9s %9s\n", MethodName(m.method),
                   FormatBytes(double(m.memory_bytes)).c_str(),
                   FormatSeconds(m.time_median).c_str(), Speedup(m.speedup).c_str(),
                   Sci(m.rel_l2_median).c_str(), Fixed(m.cosine_median, 6).c_str(),
                   Sci(m.log_z_err_median).c_str());
    }
  }
}

bool WriteTextFile(const std::string& path, const std::string& text, std::string* error) {
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) {
    *error = path + ": cannot write: " + std::strerror(errno);
    return false;
  }
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed) {
    *error = path + ": write failed";
    return false;
  }
  return true;
}

bool WriteCsv(const std::string& path, const RunInfo& info, const Options& options,
              const std::vector<Measurement>& results, std::string* error) {
  std::vector<Record> records;
  for (const Measurement& m : results) records.push_back(Fields(m, info, options));
  return WriteTextFile(path, CsvText(Fields(Measurement(), info, options), records), error);
}

bool WriteJson(const std::string& path, const RunInfo& info, const Options& options,
               const std::vector<Measurement>& results, std::string* error) {
  std::string j = "{\n";
  j += "  \"tool\": \"covattn-compare\",\n";
  j += "  \"version\": " + JsonString(info.tool_version) + ",\n";
  j += "  \"cpu\": " + JsonString(info.cpu) + ",\n";
  j += "  \"target\": " + JsonString(info.target) + ",\n";
  j += "  \"mode\": " + JsonString(info.mode) + ",\n";
  j += "  \"command\": " + JsonString(options.command_line) + ",\n";
  j += "  \"threads\": " + std::to_string(options.threads) + ",\n";
  j += "  \"budget_tokens\": [";
  for (size_t i = 0; i < options.budgets.size(); ++i) {
    j += (i ? ", " : "") + std::to_string(options.budgets[i]);
  }
  j += "],\n";
  j += "  \"sinks\": " + std::to_string(options.sinks) + ",\n";
  j += "  \"outlier_slots\": " + std::to_string(OutlierSlots(options)) + ",\n";
  j += "  \"forgetting\": " + JsonNumber(options.forgetting) + ",\n";
  j += "  \"samples\": " + std::to_string(options.samples) + ",\n";
  j += "  \"min_sample_ms\": " + JsonNumber(options.min_sample_ms) + ",\n";
  j += "  \"cold\": " + std::string(options.cold ? "true" : "false") + ",\n";
  std::vector<Record> records;
  for (const Measurement& m : results) records.push_back(Fields(m, info, options));
  j += "  \"measurements\": " + JsonRecords(records) + "\n}\n";
  return WriteTextFile(path, j, error);
}

}  // namespace covattn_compare
