#include "options.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>

#include "covattn/covattn.h"

namespace covattn_compare {

const char* CacheDtypeName(uint32_t dtype) {
  switch (dtype) {
    case COVATTN_F16:
      return "f16";
    case COVATTN_BF16:
      return "bf16";
    case COVATTN_INT8:
      return "int8";
    default:
      return "f32";
  }
}

const char* MethodName(Method method) {
  switch (method) {
    case Method::kExact:
      return "exact (covattn)";
    case Method::kExactInt8:
      return "exact int8 (covattn)";
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
    case Method::kHeavyHitters:
      return "sink + window + heavy hitters (H2O)";
    case Method::kEmaRing:
      return "EMA retention + ring summary";
  }
  return "?";
}

const char* MethodKey(Method method) {
  switch (method) {
    case Method::kExact:
      return "exact";
    case Method::kExactInt8:
      return "exact-int8";
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
    case Method::kHeavyHitters:
      return "h2o";
    case Method::kEmaRing:
      return "ema-ring";
  }
  return "?";
}

bool IsExact(Method method) {
  return method == Method::kExact || method == Method::kExactInt8 || method == Method::kOneDnn;
}

bool NeedsQueryStream(Method method) {
  return method == Method::kHeavyHitters || method == Method::kEmaRing;
}

bool HaveOneDnn() {
#ifdef COVATTN_COMPARE_WITH_ONEDNN
  return true;
#else
  return false;
#endif
}

size_t OutlierSlots(const Options& options, size_t budget) {
  return options.outliers != 0 ? options.outliers : budget / 2;
}

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> items;
  size_t begin = 0;
  for (;;) {
    const size_t comma = s.find(',', begin);
    items.push_back(
        s.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin));
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
  if (*end == 'k' || *end == 'K') {
    multiplier = 1024, ++end;
  } else if (*end == 'm' || *end == 'M') {
    multiplier = 1024 * 1024, ++end;
  }
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

// One parse in progress: the options being filled, where the error goes, and
// what the parse ends in (--help and --version end it early).
struct Parser {
  Options* o;
  std::string* error;
  std::string output_dir = ".";
  ParseOutcome outcome = ParseOutcome::kRun;

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
      return Fail("--" + name + " wants a number in " + (open_lo ? "(" : "[") + std::to_string(lo) +
                  ", " + std::to_string(hi) + "], got '" + v + "'");
    }
    *out = x;
    return true;
  }
};

// What an option does with its value (flags get an empty one); false with
// the parser's error set when the value is bad.
using Apply = std::function<bool(Parser&, const std::string& name, const std::string& value)>;

// One option: its name without "--", the placeholder of its value in --help
// (nullptr for a flag, which takes none), its help text ('\n' continues on
// the next line, the default in brackets) and what it does.
struct OptionSpec {
  const char* name;
  const char* value;
  const char* help;
  Apply apply;
};

struct OptionGroup {
  const char* title;
  std::vector<OptionSpec> options;
};

// An integer in [lo, hi].
template <typename T>
Apply SizeIn(T Options::*field, size_t lo, size_t hi) {
  return [=](Parser& p, const std::string& name, const std::string& v) {
    size_t x;
    if (!p.Size(name, v, lo, hi, &x)) return false;
    p.o->*field = static_cast<T>(x);
    return true;
  };
}

// A list of integers in [lo, hi], sorted, without repeats.
Apply SizeListIn(std::vector<size_t> Options::*field, size_t lo, size_t hi) {
  return [=](Parser& p, const std::string& name, const std::string& v) {
    std::vector<size_t>& out = p.o->*field;
    out.clear();
    for (const std::string& item : SplitList(v)) {
      size_t x;
      if (!p.Size(name, item, lo, hi, &x)) return false;
      out.push_back(x);
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return true;
  };
}

// A number in [lo, hi], or (lo, hi] when open_lo.
template <typename T>
Apply RealIn(T Options::*field, double lo, double hi, bool open_lo) {
  return [=](Parser& p, const std::string& name, const std::string& v) {
    double x;
    if (!p.Real(name, v, lo, hi, open_lo, &x)) return false;
    p.o->*field = static_cast<T>(x);
    return true;
  };
}

Apply Set(bool Options::*field, bool value) {
  return [=](Parser& p, const std::string&, const std::string&) {
    p.o->*field = value;
    return true;
  };
}

Apply Stop(ParseOutcome outcome) {
  return [=](Parser& p, const std::string&, const std::string&) {
    p.outcome = outcome;
    return true;
  };
}

Apply OutputPath(std::string Options::*field) {
  return [=](Parser& p, const std::string&, const std::string& v) {
    if (v.empty()) return p.Fail("an output path is empty");
    p.o->*field = v;
    return true;
  };
}

bool ApplyWorkloads(Parser& p, const std::string&, const std::string& v) {
  std::vector<covattn_tools::Workload>& out = p.o->workloads;
  out.clear();
  for (const std::string& item : SplitList(v)) {
    if (item == "all") {
      out.assign(std::begin(covattn_tools::kAllWorkloads), std::end(covattn_tools::kAllWorkloads));
      continue;
    }
    covattn_tools::Workload w;
    if (!covattn_tools::ParseWorkload(item, &w)) {
      return p.Fail("unknown workload '" + item +
                    "' (gaussian, student-t, ar, drift, rope, rope-sinks, all)");
    }
    if (std::find(out.begin(), out.end(), w) == out.end()) out.push_back(w);
  }
  return true;
}

bool ApplySigmas(Parser& p, const std::string& name, const std::string& v) {
  p.o->sigmas.clear();
  p.o->sigmas_given = true;
  for (const std::string& item : SplitList(v)) {
    double x;
    if (!p.Real(name, item, 0.0, 8.0, false, &x)) return false;
    p.o->sigmas.push_back(x);
  }
  return true;
}

bool ApplyQkv(Parser& p, const std::string&, const std::string& v) {
  if (v.empty()) return p.Fail("--qkv wants a directory or Q.npy,K.npy,V.npy");
  p.o->qkv = v;
  return true;
}

bool ApplyMethods(Parser& p, const std::string&, const std::string& v) {
  std::vector<Method>& out = p.o->methods;
  out.clear();
  p.o->methods_given = true;
  for (const std::string& item : SplitList(v)) {
    bool found = false;
    for (Method m : kAllMethods) {
      if (item != MethodKey(m) && item != "all") continue;
      if (item == "all") p.o->methods_all = true;
      found = true;
      if (m == Method::kOneDnn && !HaveOneDnn()) {
        if (item == "all") continue;
        return p.Fail("this build of covattn-compare has no oneDNN (method 'onednn')");
      }
      if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
    }
    if (!found) {
      return p.Fail("unknown method '" + item +
                    "' (exact, exact-int8, onednn, readout, window, hybrid, outliers, h2o, "
                    "ema-ring, all)");
    }
  }
  std::sort(out.begin(), out.end());
  return true;
}

bool ApplyCacheDtype(Parser& p, const std::string&, const std::string& v) {
  for (uint32_t dtype : {COVATTN_F32, COVATTN_F16, COVATTN_BF16, COVATTN_INT8}) {
    if (v == CacheDtypeName(dtype)) {
      p.o->cache_dtype = dtype;
      return true;
    }
  }
  return p.Fail("unknown --cache-dtype '" + v + "' (f32, f16, bf16, int8)");
}

bool ApplyPath(std::string Options::*field, Parser& p, const std::string& name,
               const std::string& v) {
  if (v.empty()) return p.Fail("--" + name + " wants a path");
  p.o->*field = v;
  return true;
}

Apply Path(std::string Options::*field) {
  return [=](Parser& p, const std::string& name, const std::string& v) {
    return ApplyPath(field, p, name, v);
  };
}

bool ApplyTable(Parser& p, const std::string&, const std::string& v) {
  if (v == "longest") {
    p.o->table = TableMode::kLongest;
  } else if (v == "all") {
    p.o->table = TableMode::kAll;
  } else {
    return p.Fail("--table wants 'longest' or 'all', got '" + v + "'");
  }
  return true;
}

bool ApplyOutputDir(Parser& p, const std::string&, const std::string& v) {
  if (v.empty()) return p.Fail("--output-dir is empty");
  p.output_dir = v;
  return true;
}

// Every option, in --help order: the one list both the parser and the usage
// text read.
const std::vector<OptionGroup>& OptionTable() {
  static const std::vector<OptionGroup> table = {
      {"Workloads (synthetic, fixed seeds)",
       {
           {"workloads", "LIST",
            "gaussian, student-t, ar, drift, rope, rope-sinks, all\n"
            "[gaussian,student-t,ar,drift,rope-sinks]",
            ApplyWorkloads},
           {"sigma", "LIST",
            "attention sharpness: std of the scores a.k\n[1; 3 for rope, rope-sinks]", ApplySigmas},
           {"contexts", "LIST", "context lengths, e.g. 256,4k,64k [256,512,...,65536]",
            SizeListIn(&Options::contexts, 2, kMaxContext)},
           {"head-dims", "LIST", "head dimensions [64,128]",
            SizeListIn(&Options::head_dims, 1, COVATTN_MAX_HEAD_DIM)},
           {"kv-heads", "N", "KV heads per layer [2]", SizeIn(&Options::kv_heads, 1, 256)},
           {"group", "N", "query heads per KV head (GQA) [4]", SizeIn(&Options::group, 1, 64)},
           {"queries", "N", "queries per KV head for the error statistics [16]",
            SizeIn(&Options::queries, 1, 4096)},
           {"seed", "N", "workload seed [1]",
            SizeIn(&Options::seed, 0, size_t(std::min<uint64_t>(uint64_t{1} << 40, SIZE_MAX)))},
       }},
      {"Real activations (.npy, see docs/compare.md)",
       {
           {"qkv", "DIR|Q,K,V",
            "DIR/q.npy, k.npy, v.npy or DIR/layer<N>_{q,k,v}.npy,\n"
            "or three files. Shapes [tokens, heads, head_dim].",
            ApplyQkv},
           {"bf16", nullptr, "read '<u2' arrays as bfloat16 bits", Set(&Options::bf16, true)},
           {"positions", "N", "query positions sampled per layer [16]",
            SizeIn(&Options::positions, 1, 4096)},
           {"min-context", "N", "first sampled context (clamped to the tokens) [256]",
            SizeIn(&Options::min_context, 1, kMaxContext)},
           {"layers", "LIST", "layer numbers to evaluate [all]",
            SizeListIn(&Options::layers, 0, 1 << 20)},
           {"scale", "X", "softmax scale [1/sqrt(head_dim)]",
            RealIn(&Options::scale, 0.0, 1e6, false)},
       }},
      {"Model (a llama2.c checkpoint, see docs/compare.md)",
       {
           {"model", "PATH", "run every method inside this model, teacher-forced",
            Path(&Options::model)},
           {"tokens", "FILE", "its input: .npy of int32/int64 tokens [sampled, --seed]",
            Path(&Options::tokens)},
           {"bytes", nullptr, "read --tokens as raw bytes, one token each",
            Set(&Options::bytes, true)},
           {"max-tokens", "N", "tokens per window [the model's seq_len]",
            SizeIn(&Options::max_tokens, 1, kMaxContext)},
           {"windows", "N", "windows cut evenly from --tokens; medians over them [1]",
            SizeIn(&Options::windows, 1, 4096)},
           {"from", "N", "aggregate positions from N on [0]",
            SizeIn(&Options::from, 0, kMaxContext)},
           {"state-bytes", nullptr,
            "equal memory by the state's bytes (as the synthetic\n"
            "modes count them), not by covattn_cache_size",
            Set(&Options::state_bytes, true)},
           {"dump-qkv", "DIR", "write the exact model's q, k, v for --qkv (first window)",
            Path(&Options::dump_qkv)},
       }},
      {"Methods",
       {
           {"methods", "LIST",
            "exact, exact-int8, onednn, readout, window, hybrid, outliers,\nh2o, ema-ring, all "
            "[all]",
            ApplyMethods},
           {"budget", "LIST",
            "exact tokens per KV head of the bounded methods;\n"
            "a list is a sweep, e.g. 32,64,128,256 [256]",
            SizeListIn(&Options::budgets, 1, size_t{1} << 20)},
           {"sinks", "N", "first tokens kept exact [4]",
            SizeIn(&Options::sinks, 0, size_t{1} << 20)},
           {"outliers", "N", "outlier key slots of 'outliers' [budget / 2]",
            SizeIn(&Options::outliers, 1, size_t{1} << 20)},
           {"forgetting", "X", "summary forgetting factor in (0, 1] [1]",
            RealIn(&Options::forgetting, 0.0, 1.0, true)},
           {"cache-dtype", "T",
            "what the bounded methods store their exact tokens in:\n"
            "f32, f16, bf16, int8; --budget counts tokens of T [f32]",
            ApplyCacheDtype},
       }},
      {"Timing",
       {
           {"threads", "N", "spread the heads of a layer over N threads [1]",
            SizeIn(&Options::threads, 1, 256)},
           {"samples", "N", "timing samples per measurement; the median is reported [9]",
            SizeIn(&Options::samples, 1, 1000)},
           {"min-time", "MS", "minimum duration of one sample [5]",
            RealIn(&Options::min_sample_ms, 0.0, 10000.0, true)},
           {"cold", nullptr, "evict the caches before every timed decode",
            Set(&Options::cold, true)},
       }},
      {"Output",
       {
           {"table", "MODE", "longest (each series' longest context) or all [longest]", ApplyTable},
           {"output-dir", "DIR", "where covattn-compare.{csv,json,svg} go [.]", ApplyOutputDir},
           {"csv", "PATH", "the CSV file [DIR/covattn-compare.csv]",
            OutputPath(&Options::csv_path)},
           {"json", "PATH", "the JSON file [DIR/covattn-compare.json]",
            OutputPath(&Options::json_path)},
           {"svg", "PATH", "the picture [DIR/covattn-compare.svg]", OutputPath(&Options::svg_path)},
           {"no-files", nullptr, "print the table only", Set(&Options::write_files, false)},
           {"quiet", nullptr, "no progress bar (it is also off when stderr is not a terminal)",
            Set(&Options::progress, false)},
           {"help", nullptr, "this text (also -h)", Stop(ParseOutcome::kHelp)},
           {"version", nullptr, "the version, and whether the oneDNN peer is built in",
            Stop(ParseOutcome::kVersion)},
       }},
  };
  return table;
}

const OptionSpec* FindOption(const std::string& name) {
  for (const OptionGroup& group : OptionTable()) {
    for (const OptionSpec& option : group.options) {
      if (name == option.name) return &option;
    }
  }
  return nullptr;
}

// Splits "--name=value" or "--name" [value] at argv[*i], advancing *i past
// a separate value.
bool NextOption(int argc, const char* const* argv, int* i, Parser& p, const OptionSpec** option,
                std::string* value) {
  std::string arg = argv[*i];
  if (arg == "-h") arg = "--help";
  if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
    return p.Fail("unexpected argument '" + arg + "' (options start with --; try --help)");
  }
  std::string name = arg.substr(2);
  const size_t eq = name.find('=');
  const bool inline_value = eq != std::string::npos;
  if (inline_value) {
    *value = name.substr(eq + 1);
    name.resize(eq);
  }
  *option = FindOption(name);
  if (*option == nullptr) return p.Fail("unknown option '--" + name + "' (try --help)");
  if ((*option)->value == nullptr) {
    if (inline_value) return p.Fail("--" + name + " takes no value");
    value->clear();
  } else if (!inline_value) {
    if (*i + 1 >= argc) return p.Fail("--" + name + " needs a value (try --help)");
    *value = argv[++*i];
  }
  return true;
}

}  // namespace

ParseOutcome ParseOptions(int argc, const char* const* argv, Options* options, std::string* error) {
  Options& o = *options;
  o = Options();
  o.workloads = {covattn_tools::Workload::kGaussian, covattn_tools::Workload::kStudentT,
                 covattn_tools::Workload::kAutoregressive, covattn_tools::Workload::kDrift,
                 covattn_tools::Workload::kRopeSinks};
  o.sigmas = {1.0};
  for (size_t n = 256; n <= 65536; n *= 2) o.contexts.push_back(n);
  o.head_dims = {64, 128};
  for (Method m : kAllMethods) {
    if ((m != Method::kOneDnn || HaveOneDnn()) && !NeedsQueryStream(m)) o.methods.push_back(m);
  }
  for (int i = 0; i < argc; ++i) {
    if (i) o.command_line += ' ';
    o.command_line += argv[i];
  }

  Parser parser{&o, error};
  for (int i = 1; i < argc; ++i) {
    const OptionSpec* option = nullptr;
    std::string value;
    if (!NextOption(argc, argv, &i, parser, &option, &value) ||
        !option->apply(parser, option->name, value)) {
      return ParseOutcome::kUsageError;
    }
    if (parser.outcome != ParseOutcome::kRun) return parser.outcome;
  }

  if (o.workloads.empty() || o.sigmas.empty() || o.contexts.empty() || o.head_dims.empty() ||
      o.methods.empty()) {
    *error = "an empty list was given";
    return ParseOutcome::kUsageError;
  }
  if (o.budgets.empty()) {
    *error = "an empty list was given";
    return ParseOutcome::kUsageError;
  }
  if (!o.model.empty() && !o.qkv.empty()) {
    *error = "--model and --qkv are two different inputs; give one";
    return ParseOutcome::kUsageError;
  }
  if (o.model.empty() && (!o.tokens.empty() || !o.dump_qkv.empty())) {
    *error = "--tokens and --dump-qkv need --model";
    return ParseOutcome::kUsageError;
  }
  // llama2.c checkpoints rotate keys in interleaved pairs (run.c).
  if (!o.model.empty()) o.rope = COVATTN_ROPE_INTERLEAVED;
  if (o.model.empty()) {
    for (Method m : o.methods) {
      if (NeedsQueryStream(m) && !o.methods_all) {
        *error = std::string("--methods ") + MethodKey(m) +
                 " scores tokens by the queries of every position: only with --model";
        return ParseOutcome::kUsageError;
      }
    }
    o.methods.erase(std::remove_if(o.methods.begin(), o.methods.end(), NeedsQueryStream),
                    o.methods.end());
  }
  o.budget = o.budgets.front();
  for (size_t budget : o.budgets) {
    if (o.sinks >= budget) {
      *error = "--sinks (" + std::to_string(o.sinks) + ") must be below --budget (" +
               std::to_string(budget) + ")";
      return ParseOutcome::kUsageError;
    }
    if (o.sinks + OutlierSlots(o, budget) >= budget) {
      *error = "--sinks plus --outliers must leave room for a window within --budget " +
               std::to_string(budget);
      return ParseOutcome::kUsageError;
    }
  }
  if (o.csv_path.empty()) o.csv_path = parser.output_dir + "/covattn-compare.csv";
  if (o.json_path.empty()) o.json_path = parser.output_dir + "/covattn-compare.json";
  if (o.svg_path.empty()) o.svg_path = parser.output_dir + "/covattn-compare.svg";
  return ParseOutcome::kRun;
}

std::string UsageText() {
  constexpr size_t kHelpColumn = 22;
  std::string s = R"(usage: covattn-compare [options]

Exact attention against the covariance readout and the bounded cache, speed
and error side by side. With no options: five synthetic workloads (one
sharp, with RoPE keys and sinks), head_dim 64 and 128, 2 KV heads x 4 query
heads, contexts 256 ... 65536. Prints a table, writes
covattn-compare.{csv,json,svg}.
)";
  for (const OptionGroup& group : OptionTable()) {
    s += "\n" + std::string(group.title) + ":\n";
    for (const OptionSpec& option : group.options) {
      std::string line = "  --" + std::string(option.name);
      if (option.value != nullptr) line += " " + std::string(option.value);
      line.resize(std::max(line.size() + 2, kHelpColumn), ' ');
      for (const char* help = option.help;;) {
        const char* end = std::strchr(help, '\n');
        if (end == nullptr) {
          s += line + help + "\n";
          break;
        }
        s += line + std::string(help, end) + "\n";
        line.assign(kHelpColumn, ' ');
        help = end + 1;
      }
    }
  }
  s += R"(
Lists are comma-separated; sizes take k and m suffixes (64k = 65536); values
follow as --name value or --name=value.
Exit status: 0 success, 1 runtime failure (unreadable input, I/O), 2 usage error.
)";
  return s;
}

}  // namespace covattn_compare
