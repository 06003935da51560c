#include "options.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "covattn/covattn.h"

namespace covattn_compare {

const char* MethodName(Method method) {
  switch (method) {
    case Method::kExact:
      return "exact (covattn)";
    case Method::kOneDnn:
      return "exact (oneDNN)";
    case Method::kReadout:
      return "covariance readout";
    case Method::kSinkWindow:
      return "sink + window";
    case Method::kHybrid:
      return "hybrid";
    case Method::kHybridOutliers:
      return "hybrid + outliers";
  }
  return "?";
}

const char* MethodKey(Method method) {
  switch (method) {
    case Method::kExact:
      return "exact";
    case Method::kOneDnn:
      return "onednn";
    case Method::kReadout:
      return "readout";
    case Method::kSinkWindow:
      return "window";
    case Method::kHybrid:
      return "hybrid";
    case Method::kHybridOutliers:
      return "outliers";
  }
  return "?";
}

bool IsExact(Method method) { return method == Method::kExact || method == Method::kOneDnn; }

bool HaveOneDnn() {
#ifdef COVATTN_COMPARE_WITH_ONEDNN
  return true;
#else
  return false;
#endif
}

size_t OutlierSlots(const Options& options) {
  return options.outliers != 0 ? options.outliers : options.budget / 2;
}

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> items;
  size_t begin = 0;
  for (;;) {
    const size_t comma = s.find(',', begin);
    items.push_back(s.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin));
    if (comma == std::string::npos) return items;
    begin = comma + 1;
  }
}

namespace {

constexpr size_t kMaxContext = size_t{1} << 24;

// A non-negative integer with an optional binary suffix: 64k = 65536.
bool ParseSize(const std::string& s, size_t* value) {
  if (s.empty() || s[0] < '0' || s[0] > '9') return false;
  errno = 0;
  char* end = nullptr;
  unsigned long long x = std::strtoull(s.c_str(), &end, 10);
  if (errno != 0) return false;
  unsigned long long multiplier = 1;
  if (*end == 'k' || *end == 'K') multiplier = 1024, ++end;
  else if (*end == 'm' || *end == 'M') multiplier = 1024 * 1024, ++end;
  if (*end != '\0' || x > (1ull << 40) / multiplier) return false;
  *value = static_cast<size_t>(x * multiplier);
  return true;
}

bool ParseDouble(const std::string& s, double* value) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const double x = std::strtod(s.c_str(), &end);
  if (errno != 0 || *end != '\0' || !std::isfinite(x)) return false;
  *value = x;
  return true;
}

struct Parser {
  Options* o;
  std::string* error;

  bool Fail(const std::string& what) {
    *error = what;
    return false;
  }

  bool Size(const std::string& name, const std::string& v, size_t lo, size_t hi, size_t* out) {
    size_t x;
    if (!ParseSize(v, &x) || x < lo || x > hi) {
      return Fail("--" + name + " wants an integer in [" + std::to_string(lo) + ", " +
                  std::to_string(hi) + "], got '" + v + "'");
    }
    *out = x;
    return true;
  }

  bool Real(const std::string& name, const std::string& v, double lo, double hi, bool open_lo,
            double* out) {
    double x;
    if (!ParseDouble(v, &x) || x < lo || x > hi || (open_lo && x == lo)) {
      return Fail("--" + name + " wants a number in " + (open_lo ? "(" : "[") +
                  std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + v + "'");
    }
    *out = x;
    return true;
  }

  bool SizeList(const std::string& name, const std::string& v, size_t lo, size_t hi,
                std::vector<size_t>* out) {
    out->clear();
    for (const std::string& item : SplitList(v)) {
      size_t x;
      if (!Size(name, item, lo, hi, &x)) return false;
      out->push_back(x);
    }
    std::sort(out->begin(), out->end());
    out->erase(std::unique(out->begin(), out->end()), out->end());
    return true;
  }

  bool Option(const std::string& name, const std::string& v) {
    if (name == "workloads") {
      o->workloads.clear();
      for (const std::string& item : SplitList(v)) {
        if (item == "all") {
          o->workloads = {covattn_tools::Workload::kGaussian, covattn_tools::Workload::kStudentT,
                          covattn_tools::Workload::kAutoregressive,
                          covattn_tools::Workload::kDrift};
          continue;
        }
        covattn_tools::Workload w;
        if (!covattn_tools::ParseWorkload(item, &w)) {
          return Fail("unknown workload '" + item + "' (gaussian, student-t, ar, drift, all)");
        }
        if (std::find(o->workloads.begin(), o->workloads.end(), w) == o->workloads.end()) {
          o->workloads.push_back(w);
        }
      }
      return true;
    }
    if (name == "sigma") {
      o->sigmas.clear();
      for (const std::string& item : SplitList(v)) {
        double x;
        if (!Real(name, item, 0.0, 8.0, false, &x)) return false;
        o->sigmas.push_back(x);
      }
      return true;
    }
    if (name == "contexts") return SizeList(name, v, 2, kMaxContext, &o->contexts);
    if (name == "head-dims") return SizeList(name, v, 1, COVATTN_MAX_HEAD_DIM, &o->head_dims);
    if (name == "kv-heads") return Size(name, v, 1, 256, &o->kv_heads);
    if (name == "group") return Size(name, v, 1, 64, &o->group);
    if (name == "queries") return Size(name, v, 1, 4096, &o->queries);
    if (name == "seed") {
      size_t x;
      if (!Size(name, v, 0, size_t{1} << 40, &x)) return false;
      o->seed = x;
      return true;
    }
    if (name == "qkv") {
      if (v.empty()) return Fail("--qkv wants a directory or Q.npy,K.npy,V.npy");
      o->qkv = v;
      return true;
    }
    if (name == "positions") return Size(name, v, 1, 4096, &o->positions);
    if (name == "min-context") return Size(name, v, 1, kMaxContext, &o->min_context);
    if (name == "layers") return SizeList(name, v, 0, 1 << 20, &o->layers);
    if (name == "scale") {
      double x;
      if (!Real(name, v, 0.0, 1e6, false, &x)) return false;
      o->scale = static_cast<float>(x);
      return true;
    }
    if (name == "methods") {
      o->methods.clear();
      for (const std::string& item : SplitList(v)) {
        bool found = false;
        for (Method m : kAllMethods) {
          if (item == MethodKey(m) || item == "all") {
            found = true;
            if (m == Method::kOneDnn && !HaveOneDnn()) {
              if (item == "all") continue;
              return Fail("this build of covattn-compare has no oneDNN (method 'onednn')");
            }
            if (std::find(o->methods.begin(), o->methods.end(), m) == o->methods.end()) {
              o->methods.push_back(m);
            }
          }
        }
        if (!found) {
          return Fail("unknown method '" + item +
                      "' (exact, onednn, readout, window, hybrid, outliers, all)");
        }
      }
      std::sort(o->methods.begin(), o->methods.end());
      return true;
    }
    if (name == "budget") return Size(name, v, 1, size_t{1} << 20, &o->budget);
    if (name == "sinks") return Size(name, v, 0, size_t{1} << 20, &o->sinks);
    if (name == "outliers") return Size(name, v, 1, size_t{1} << 20, &o->outliers);
    if (name == "forgetting") {
      double x;
      if (!Real(name, v, 0.0, 1.0, true, &x)) return false;
      o->forgetting = static_cast<float>(x);
      return true;
    }
    if (name == "threads") return Size(name, v, 1, 256, &o->threads);
    if (name == "samples") return Size(name, v, 1, 1000, &o->samples);
    if (name == "min-time") return Real(name, v, 0.0, 10000.0, true, &o->min_sample_ms);
    if (name == "table") {
      if (v == "longest") o->table = TableMode::kLongest;
      else if (v == "all") o->table = TableMode::kAll;
      else return Fail("--table wants 'longest' or 'all', got '" + v + "'");
      return true;
    }
    if (name == "csv") return Path(v, &o->csv_path);
    if (name == "json") return Path(v, &o->json_path);
    if (name == "svg") return Path(v, &o->svg_path);
    return Fail("unknown option '--" + name + "' (try --help)");
  }

  bool Path(const std::string& v, std::string* out) {
    if (v.empty()) return Fail("an output path is empty");
    *out = v;
    return true;
  }
};

bool IsFlag(const std::string& name) {
  return name == "help" || name == "version" || name == "bf16" || name == "cold" ||
         name == "no-files" || name == "quiet";
}

}  // namespace

ParseOutcome ParseOptions(int argc, const char* const* argv, Options* options,
                          std::string* error) {
  Options& o = *options;
  o = Options();
  o.workloads = {covattn_tools::Workload::kGaussian, covattn_tools::Workload::kStudentT,
                 covattn_tools::Workload::kAutoregressive, covattn_tools::Workload::kDrift};
  o.sigmas = {1.0};
  for (size_t n = 256; n <= 65536; n *= 2) o.contexts.push_back(n);
  o.head_dims = {64, 128};
  for (Method m : kAllMethods) {
    if (m != Method::kOneDnn || HaveOneDnn()) o.methods.push_back(m);
  }
  for (int i = 0; i < argc; ++i) {
    if (i) o.command_line += ' ';
    o.command_line += argv[i];
  }

  Parser parser{&o, error};
  std::string output_dir;
  bool have_output_dir = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h") arg = "--help";
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
      *error = "unexpected argument '" + arg + "' (options start with --; try --help)";
      return ParseOutcome::kUsageError;
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (IsFlag(name)) {
      if (inline_value) {
        *error = "--" + name + " takes no value";
        return ParseOutcome::kUsageError;
      }
      if (name == "help") return ParseOutcome::kHelp;
      if (name == "version") return ParseOutcome::kVersion;
      if (name == "bf16") o.bf16 = true;
      if (name == "cold") o.cold = true;
      if (name == "no-files") o.write_files = false;
      if (name == "quiet") o.progress = false;
      continue;
    }
    if (!inline_value) {
      if (i + 1 >= argc) {
        *error = "--" + name + " needs a value (try --help)";
        return ParseOutcome::kUsageError;
      }
      value = argv[++i];
    }
    if (name == "output-dir") {
      if (value.empty()) {
        *error = "--output-dir is empty";
        return ParseOutcome::kUsageError;
      }
      output_dir = value, have_output_dir = true;
      continue;
    }
    if (!parser.Option(name, value)) return ParseOutcome::kUsageError;
  }

  if (o.workloads.empty() || o.sigmas.empty() || o.contexts.empty() || o.head_dims.empty() ||
      o.methods.empty()) {
    *error = "an empty list was given";
    return ParseOutcome::kUsageError;
  }
  if (o.sinks >= o.budget) {
    *error = "--sinks (" + std::to_string(o.sinks) + ") must be below --budget (" +
             std::to_string(o.budget) + ")";
    return ParseOutcome::kUsageError;
  }
  if (o.sinks + OutlierSlots(o) >= o.budget) {
    *error = "--sinks plus --outliers must leave room for a window within --budget";
    return ParseOutcome::kUsageError;
  }
  const std::string dir = have_output_dir ? output_dir : ".";
  if (o.csv_path.empty()) o.csv_path = dir + "/covattn-compare.csv";
  if (o.json_path.empty()) o.json_path = dir + "/covattn-compare.json";
  if (o.svg_path.empty()) o.svg_path = dir + "/covattn-compare.svg";
  return ParseOutcome::kRun;
}

std::string UsageText() {
  return R"(usage: covattn-compare [options]

Exact attention against the covariance readout and the bounded cache, speed
and error side by side. With no options: four synthetic workloads, head_dim
64 and 128, 2 KV heads x 4 query heads, contexts 256 ... 65536 (under a
minute on two cores). Prints a table, writes covattn-compare.{csv,json,svg}.

Workloads (synthetic, fixed seeds):
  --workloads LIST    gaussian, student-t, ar, drift, all [all]
  --sigma LIST        attention sharpness: std of the scores a.k [1]
  --contexts LIST     context lengths, e.g. 256,4k,64k [256,512,...,65536]
  --head-dims LIST    head dimensions [64,128]
  --kv-heads N        KV heads per layer [2]
  --group N           query heads per KV head (GQA) [4]
  --queries N         queries per KV head for the error statistics [16]
  --seed N            workload seed [1]

Real activations (.npy, see docs/compare.md):
  --qkv DIR           DIR/q.npy, k.npy, v.npy or DIR/layer<N>_{q,k,v}.npy;
  --qkv Q,K,V         or three files. Shapes [tokens, heads, head_dim].
  --bf16              read '<u2' arrays as bfloat16 bits
  --positions N       query positions sampled per layer [16]
  --min-context N     first sampled context (clamped to the tokens) [256]
  --layers LIST       layer numbers to evaluate [all]
  --scale X           softmax scale [1/sqrt(head_dim)]

Methods:
  --methods LIST      exact, onednn, readout, window, hybrid, outliers, all [all]
  --budget N          exact tokens per KV head of the bounded methods [256]
  --sinks N           first tokens kept exact [4]
  --outliers N        outlier key slots of 'outliers' [budget / 2]
  --forgetting X      summary forgetting factor in (0, 1] [1]

Timing:
  --threads N         spread the heads of a layer over N threads [1]
  --samples N         timing samples per measurement; the median is reported [9]
  --min-time MS       minimum duration of one sample [5]
  --cold              evict the caches before every timed decode

Output:
  --table MODE        longest (each series' longest context) or all [longest]
  --output-dir DIR    where covattn-compare.{csv,json,svg} go [.]
  --csv PATH, --json PATH, --svg PATH   individual output paths
  --no-files          print the table only
  --quiet             no progress bar (it is also off when stderr is not a terminal)
  --help, --version

Exit status: 0 success, 1 runtime failure (unreadable input, I/O), 2 usage error.
)";
}

}  // namespace covattn_compare
