// covattn-compare end to end, in-process (CompareMain is the program's main):
// exit statuses, the table, CSV and JSON that parse and hold every
// measurement, a well-formed SVG, the .npy input path with every malformed
// layer refused by name. Tiny workloads, so the suite stays fast under qemu.
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iterator>
#include <map>
#include <random>
#include <set>

#include "cli.h"
#include "compare_test_util.h"
#include "options.h"
#include "test_util.h"
#include "workloads.h"

using namespace covattn_compare;
using namespace covattn_compare_test;
using covattn_test::BF16FromFloat;
using covattn_test::F16FromDouble;

namespace {

// A run of a few milliseconds: tiny heads, two short contexts, a budget the
// contexts exceed so that the bounded methods evict.
const std::vector<std::string> kTiny = {
    "--contexts", "40,96",     "--head-dims", "16",       "--kv-heads", "2",       "--group",
    "2",          "--queries", "3",           "--budget", "32",         "--sinks", "2",
    "--outliers", "6",         "--samples",   "2",        "--min-time", "0.01",    "--quiet"};

size_t MethodCount() { return HaveOneDnn() ? 7 : 6; }  // without the --model-only ones

}  // namespace

TEST_CASE("--help and --version exit 0 on stdout") {
  RunResult r = Run({"--help"});
  CHECK(r.status == 0);
  CHECK(r.out.find("usage: covattn-compare") != std::string::npos);
  CHECK(r.out.find("--qkv") != std::string::npos);
  CHECK(r.err.empty());
  r = Run({"-h"});
  CHECK(r.status == 0);
  r = Run({"--version"});
  CHECK(r.status == 0);
  CHECK(r.out.rfind("covattn-compare ", 0) == 0);
}

// One table drives the parser and --help; the manual shows the same lines.
TEST_CASE("docs/compare.md lists every option as --help does") {
  const std::filesystem::path docs =
      std::filesystem::path(__FILE__).parent_path().parent_path() / "docs" / "compare.md";
  std::ifstream in(docs);
  REQUIRE(in.good());
  const std::string manual((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::istringstream usage(UsageText());
  size_t options = 0;
  for (std::string line; std::getline(usage, line);) {
    if (line.rfind("  --", 0) != 0) continue;
    ++options;
    CHECK_MESSAGE(manual.find("\n" + line + "\n") != std::string::npos,
                  "not in the manual: " << line);
  }
  CHECK(options >= 30);
}

TEST_CASE("usage errors exit 2 with a message and write nothing") {
  ScratchDir dir;
  const std::vector<std::vector<std::string>> cases = {
      {"--bogus"},
      {"positional"},
      {"-x"},
      {"--contexts"},
      {"--contexts", "abc"},
      {"--contexts", "1"},
      {"--contexts", "64,,128"},
      {"--contexts", "12q"},
      {"--head-dims", "0"},
      {"--head-dims", "1000"},
      {"--workloads", "nope"},
      {"--methods", "exact,nope"},
      {"--sigma", "-1"},
      {"--sigma", "nan"},
      {"--threads", "0"},
      {"--samples", "0"},
      {"--min-time", "0"},
      {"--forgetting", "1.5"},
      {"--forgetting", "0"},
      {"--budget", "4", "--sinks", "4"},
      {"--budget", "10", "--sinks", "2", "--outliers", "8"},
      {"--table", "wide"},
      {"--quiet=yes"},
      {"--output-dir="},
      {"--csv="},
      // Valid alone, but the outlier slots' whitening leaves no window at d = 128.
      {"--budget", "80", "--outliers", "50", "--head-dims", "64,128"},
  };
  for (const std::vector<std::string>& args : cases) {
    std::string joined;
    for (const std::string& a : args) joined += a + " ";
    INFO("args: " << joined);
    const RunResult r = Run(Concat(args, {"--output-dir", dir.path().string()}));
    CHECK(r.status == 2);
    CHECK(r.err.rfind("covattn-compare: ", 0) == 0);
    CHECK(r.out.empty());
  }
  if (!HaveOneDnn()) CHECK(Run({"--methods", "onednn"}).status == 2);
  CHECK(Run({"--bogus"}).err == "covattn-compare: unknown option '--bogus' (try --help)\n");
  CHECK(Run({"--contexts"}).err == "covattn-compare: --contexts needs a value (try --help)\n");
  CHECK(std::filesystem::is_empty(dir.path()));
}

TEST_CASE("a tiny synthetic run: table, CSV, JSON and SVG") {
  ScratchDir dir;
  const RunResult r = Run(Concat(kTiny, {"--output-dir", dir.File("out")}));
  INFO("stderr: " << r.err);
  REQUIRE(r.status == 0);

  // The table: a heading per series, the columns, every method.
  for (const char* column :
       {"method", "memory/layer", "decode", "speedup", "rel L2", "cosine", "|dlog Z|"}) {
    CHECK(r.out.find(column) != std::string::npos);
  }
  for (const char* workload : {"gaussian, d=16, sigma=1", "student-t, d=16", "ar, d=16",
                               "drift, d=16", "rope-sinks, d=16, sigma=3"}) {
    CHECK(r.out.find(workload) != std::string::npos);
  }
  for (Method m : kAllMethods) {
    if ((m == Method::kOneDnn && !HaveOneDnn()) || NeedsQueryStream(m)) continue;
    CHECK(r.out.find(MethodName(m)) != std::string::npos);
  }
  CHECK(r.out.find("context 96") != std::string::npos);
  CHECK(r.err.find("wrote") != std::string::npos);
  CHECK(r.err.find('\r') == std::string::npos);  // no progress bar off a terminal

  // CSV: a header and one row per (series, context, method), all of one width.
  const auto rows = ParseCsv(ReadBytes(dir.File("out/covattn-compare.csv")));
  REQUIRE(rows.size() == 1 + 5 * 2 * MethodCount());
  const std::vector<std::string>& header = rows[0];
  std::map<std::string, size_t> col;
  for (size_t i = 0; i < header.size(); ++i) col[header[i]] = i;
  for (const char* name : {"series", "workload", "context", "method", "memory_bytes",
                           "decode_seconds_median", "speedup", "rel_l2_median", "cosine_median",
                           "log_z_error_median", "summary_share_median", "append_ns_per_token"}) {
    REQUIRE(col.count(name) == 1);
  }
  for (size_t i = 1; i < rows.size(); ++i) {
    const std::vector<std::string>& row = rows[i];
    REQUIRE(row.size() == header.size());
    const std::string method = row[col["method"]];
    const double rel = std::stod(row[col["rel_l2_median"]]);
    const double time = std::stod(row[col["decode_seconds_median"]]);
    CHECK(time > 0.0);
    CHECK(std::isfinite(rel));
    if (method == "exact" || method == "onednn") CHECK(rel < 1e-4);
    if (method == "exact") CHECK(std::stod(row[col["speedup"]]) == 1.0);
    if (method == "onednn")
      CHECK(row[col["log_z_error_median"]].empty());  // no log Z: n/a
    else
      CHECK(std::stod(row[col["log_z_error_median"]]) >= 0.0);
    // Memory: exact grows with the context, bounded methods stay put.
    const size_t context = std::stoul(row[col["context"]]);
    const size_t memory = std::stoul(row[col["memory_bytes"]]);
    if (method == "exact") CHECK(memory == context * 2 * 16 * 4 * 2);
    if (method == "window" || method == "hybrid" || method == "outliers") {
      // Equal memory within one token of every head.
      const size_t hybrid_bytes = 2 * (32 * 2 * 16 * 4 + 8 * 33 + 4 * 2 * 16 * 16);
      CHECK(memory <= hybrid_bytes + 2 * 128);
      CHECK(memory + 2 * 128 >= hybrid_bytes);
    }
  }

  // JSON: parses, and holds the same measurements.
  Json json;
  const std::string json_text = ReadBytes(dir.File("out/covattn-compare.json"));
  REQUIRE(JsonParser(json_text).Parse(&json));
  REQUIRE(json.kind == Json::kObject);
  CHECK(json["tool"].text == "covattn-compare");
  CHECK(json["mode"].text == "synthetic");
  CHECK(json["threads"].number == 1);
  const Json& measurements = json["measurements"];
  REQUIRE(measurements.kind == Json::kArray);
  REQUIRE(measurements.items.size() == rows.size() - 1);
  for (size_t i = 0; i < measurements.items.size(); ++i) {
    const Json& m = measurements.items[i];
    CHECK(m["method"].text == rows[i + 1][col["method"]]);
    CHECK(m["context"].number == std::stod(rows[i + 1][col["context"]]));
    CHECK(m["rel_l2_median"].kind == Json::kNumber);
    CHECK(m.members.size() == header.size());
  }

  CheckSvg(ReadBytes(dir.File("out/covattn-compare.svg")));
}

TEST_CASE("rope workloads: sharp, recent, rotated, and the sinks' share of the mass") {
  using namespace covattn_tools;
  // The recency peak stands out by about sqrt(d / 2) (the RoPE pairs' cosines
  // add up at the query's position only): real head dims, an odd one too.
  for (Workload w : {Workload::kRope, Workload::kRopeSinks}) {
    for (size_t d : {size_t{64}, size_t{63}}) {
      INFO(WorkloadName(w) << " d=" << d);
      WorkloadSpec spec;
      spec.workload = w;
      spec.n_tokens = 2048;
      spec.n_kv_heads = 2;
      spec.head_dim = d;
      const Layer layer = MakeLayer(spec);
      CHECK(NaturalSigma(w) == 3.0);
      for (size_t n : {size_t{300}, size_t{2048}}) {
        const std::vector<float> q = SharpQueries(layer, 1, 3, n, 3.0, 5);
        for (size_t i = 0; i < 3; ++i) {
          std::vector<double> a(n);  // scores a.k, a = q / sqrt(d)
          for (size_t t = 0; t < n; ++t) {
            for (size_t j = 0; j < d; ++j) {
              a[t] += q[i * d + j] * layer.k[(t * 2 + 1) * d + j] / std::sqrt(double(d));
            }
          }
          const size_t first = w == Workload::kRopeSinks ? kSinkTokens : 0;
          double sum = 0, squares = 0, top = -INFINITY;
          for (size_t t = first; t < n; ++t) sum += a[t], squares += a[t] * a[t];
          for (double x : a) top = std::max(top, x);
          const double m = sum / double(n - first);
          CHECK(std::sqrt(squares / double(n - first) - m * m) == doctest::Approx(3.0));
          double z = 0, sinks = 0, recent = 0;
          for (size_t t = 0; t < n; ++t) {
            const double e = std::exp(a[t] - top);
            z += e, sinks += t < first ? e : 0.0, recent += t + 64 >= n ? e : 0.0;
          }
          if (first) CHECK(sinks / z == doctest::Approx(kSinkShare));
          // Recency: the last 64 tokens take several times their share of
          // the mass outside the sinks.
          CHECK(recent / (z - sinks) > 3.0 * 64.0 / double(n - first));
        }
      }
    }
  }
  // Other workloads are unchanged by the RoPE ones: no sink state.
  WorkloadSpec gaussian;
  gaussian.n_tokens = 64;
  CHECK(MakeLayer(gaussian).key_mean.empty());
  CHECK(NaturalSigma(Workload::kGaussian) == 1.0);
}

TEST_CASE("--table all, --no-files, explicit paths") {
  ScratchDir dir;
  RunResult r = Run(Concat(
      kTiny, {"--table", "all", "--no-files", "--workloads", "ar", "--methods", "exact,readout"}));
  REQUIRE(r.status == 0);
  CHECK(r.out.find("context") != std::string::npos);
  CHECK(r.out.find("\n      40  exact (covattn)") != std::string::npos);
  CHECK(r.out.find("\n      96  covariance readout") != std::string::npos);
  CHECK(r.err.empty());

  r = Run(
      Concat(kTiny, {"--workloads", "gaussian", "--methods", "hybrid", "--csv", dir.File("a/b.csv"),
                     "--json", dir.File("c.json"), "--svg", dir.File("d.svg")}));
  REQUIRE(r.status == 0);
  // Without the exact method there is nothing to compare times with.
  const auto rows = ParseCsv(ReadBytes(dir.File("a/b.csv")));
  REQUIRE(rows.size() == 3);
  CHECK(std::find(rows[0].begin(), rows[0].end(), "speedup") != rows[0].end());
  Json json;
  CHECK(JsonParser(ReadBytes(dir.File("c.json"))).Parse(&json));
  CheckSvg(ReadBytes(dir.File("d.svg")));
}

TEST_CASE("a budget sweep: a series per budget, the budget in every row") {
  ScratchDir dir;
  const RunResult r =
      Run(Concat(kTiny, {"--workloads", "gaussian", "--budget", "24,32", "--csv", dir.File("s.csv"),
                         "--json", dir.File("s.json"), "--svg", dir.File("s.svg")}));
  INFO("stderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("gaussian, d=16, sigma=1, budget 24") != std::string::npos);
  CHECK(r.out.find("gaussian, d=16, sigma=1, budget 32") != std::string::npos);
  const auto rows = ParseCsv(ReadBytes(dir.File("s.csv")));
  REQUIRE(rows.size() == 1 + 2 * 2 * MethodCount());
  std::map<std::string, size_t> col;
  for (size_t i = 0; i < rows[0].size(); ++i) col[rows[0][i]] = i;
  REQUIRE(col.count("budget") == 1);
  std::map<std::string, std::set<std::string>> memory;  // per budget, the hybrid's bytes
  for (size_t i = 1; i < rows.size(); ++i) {
    const std::string budget = rows[i][col["budget"]];
    CHECK((budget == "24" || budget == "32"));
    CHECK(rows[i][col["series"]].find("budget " + budget) != std::string::npos);
    if (rows[i][col["method"]] == "hybrid") memory[budget].insert(rows[i][col["memory_bytes"]]);
  }
  REQUIRE(memory.size() == 2);
  CHECK(memory["24"] != memory["32"]);
}

TEST_CASE("--cache-dtype: the bounded methods store int8, in fewer bytes at the same budget") {
  ScratchDir dir;
  std::map<std::string, std::map<std::string, double>> memory;  // dtype -> method -> bytes
  for (const std::string dtype : {"f32", "int8"}) {
    const std::string csv = dir.File(dtype + ".csv");
    const RunResult r =
        Run(Concat(kTiny, {"--workloads", "gaussian", "--cache-dtype", dtype, "--contexts", "96",
                           "--csv", csv, "--output-dir", dir.path().string()}));
    INFO("stderr: " << r.err);
    REQUIRE(r.status == 0);
    CHECK((r.out.find("bounded caches store int8") != std::string::npos) == (dtype == "int8"));
    const auto rows = ParseCsv(ReadBytes(csv));
    std::map<std::string, size_t> col;
    for (size_t i = 0; i < rows[0].size(); ++i) col[rows[0][i]] = i;
    REQUIRE(col.count("cache_dtype") == 1);
    for (size_t i = 1; i < rows.size(); ++i) {
      CHECK(rows[i][col["cache_dtype"]] == dtype);
      memory[dtype][rows[i][col["method"]]] = std::stod(rows[i][col["memory_bytes"]]);
      const double rel_l2 = std::stod(rows[i][col["rel_l2_median"]]);
      CHECK(std::isfinite(rel_l2));
    }
  }
  // The exact methods do not change; each bounded one keeps its tokens in
  // about a quarter of the bytes (the summary, whitening and scores stay f32).
  CHECK(memory["int8"]["exact"] == memory["f32"]["exact"]);
  for (const char* method : {"window", "hybrid", "outliers"}) {
    INFO(method);
    CHECK(memory["int8"][method] < memory["f32"][method]);
  }
  CHECK(Run(Concat(kTiny, {"--cache-dtype", "int4", "--no-files"})).status != 0);
}

TEST_CASE("heads spread over threads give the same errors") {
  ScratchDir dir;
  auto errors = [&](const std::string& threads) {
    const std::string csv = dir.File("t" + threads + ".csv");
    const RunResult r =
        Run(Concat(kTiny, {"--kv-heads", "3", "--workloads", "drift", "--threads", threads, "--csv",
                           csv, "--output-dir", dir.path().string()}));
    REQUIRE(r.status == 0);
    const auto rows = ParseCsv(ReadBytes(csv));
    std::vector<std::string> values;
    const auto& header = rows[0];
    for (size_t i = 1; i < rows.size(); ++i) {
      for (size_t c = 0; c < header.size(); ++c) {
        if (header[c].find("rel_l2") == 0 || header[c].find("cosine") == 0 ||
            header[c].find("log_z") == 0) {
          values.push_back(rows[i][c]);
        }
      }
    }
    return values;
  };
  const std::vector<std::string> one = errors("1");
  CHECK(one.size() > 10);
  CHECK(errors("3") == one);
}

TEST_CASE("the methods that need every position's queries are --model only") {
  for (const char* method : {"h2o", "ema-ring"}) {
    const RunResult r = Run(Concat(kTiny, {"--methods", method}));
    CHECK(r.status == 2);
    CHECK(r.err.find("only with --model") != std::string::npos);
  }
  // "all" keeps the rest.
  const RunResult r = Run(Concat(kTiny, {"--methods", "all", "--no-files"}));
  CHECK(r.status == 0);
  CHECK(r.out.find(MethodName(Method::kEmaRing)) == std::string::npos);
}

TEST_CASE("output that cannot be written is a runtime failure") {
  ScratchDir dir;
  WriteBytes(dir.File("file"), "x");
  const RunResult r =
      Run(Concat(kTiny, {"--workloads", "gaussian", "--output-dir", dir.path().string(), "--csv",
                         dir.File("file") + "/sub/out.csv"}));
  CHECK(r.status == 1);
  CHECK(r.err.find("out.csv") != std::string::npos);
}

// ---------------------------------------------------------------------------
// Real activations.

namespace {

struct Activations {
  size_t tokens, q_heads, kv_heads, dim;
  std::vector<float> q, k, v;
};

// Correlated keys and values with a non-zero mean, like a model's.
Activations MakeActivations(size_t tokens, size_t q_heads, size_t kv_heads, size_t dim,
                            uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Activations a{tokens, q_heads, kv_heads, dim, {}, {}, {}};
  for (size_t i = 0; i < tokens * q_heads * dim; ++i) a.q.push_back(normal(rng));
  for (size_t i = 0; i < tokens * kv_heads * dim; ++i) {
    const float x = normal(rng);
    a.k.push_back(0.5f + x);
    a.v.push_back(0.3f * x + normal(rng));
  }
  return a;
}

void WriteLayer(const ScratchDir& dir, const std::string& prefix, const Activations& a) {
  WriteNpyF32(dir.File(prefix + "q.npy"), {a.tokens, a.q_heads, a.dim}, a.q);
  WriteNpyF32(dir.File(prefix + "k.npy"), {a.tokens, a.kv_heads, a.dim}, a.k);
  WriteNpyF32(dir.File(prefix + "v.npy"), {a.tokens, a.kv_heads, a.dim}, a.v);
}

const std::vector<std::string> kQkvTiny = {
    "--positions", "4", "--min-context", "16", "--budget",   "16",   "--sinks", "2",
    "--outliers",  "4", "--samples",     "2",  "--min-time", "0.01", "--quiet"};

std::vector<std::vector<std::string>> RunQkvCsv(const std::vector<std::string>& args,
                                                const ScratchDir& out) {
  const RunResult r = Run(Concat(Concat(kQkvTiny, args), {"--output-dir", out.path().string()}));
  INFO("stderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("layer") != std::string::npos);
  return ParseCsv(ReadBytes(out.File("covattn-compare.csv")));
}

}  // namespace

TEST_CASE("--qkv: one layer of f32 q.npy, k.npy, v.npy, causal at sampled positions") {
  ScratchDir data, out;
  WriteLayer(data, "", MakeActivations(64, 4, 2, 8, 1));
  const auto rows = RunQkvCsv({"--qkv", data.path().string()}, out);
  REQUIRE(rows.size() == 1 + 4 * MethodCount());  // positions 16, 25, 40, 64
  std::map<std::string, size_t> col;
  for (size_t i = 0; i < rows[0].size(); ++i) col[rows[0][i]] = i;
  std::vector<std::string> contexts;
  for (size_t i = 1; i < rows.size(); ++i) {
    CHECK(rows[i][col["workload"]] == "npy");
    CHECK(rows[i][col["layer"]] == "0");
    CHECK(rows[i][col["q_heads"]] == "4");
    CHECK(rows[i][col["error_queries"]] == "4");  // every query head of the position
    if (rows[i][col["method"]] == "exact") {
      contexts.push_back(rows[i][col["context"]]);
      CHECK(std::stod(rows[i][col["rel_l2_median"]]) < 1e-4);
    }
  }
  CHECK(contexts == std::vector<std::string>{"16", "25", "40", "64"});

  // The three-files form reads the same data.
  ScratchDir out2;
  const auto same = RunQkvCsv(
      {"--qkv", data.File("q.npy") + "," + data.File("k.npy") + "," + data.File("v.npy")}, out2);
  REQUIRE(same.size() == rows.size());
  CHECK(same[5][col["rel_l2_median"]] == rows[5][col["rel_l2_median"]]);
}

TEST_CASE("--qkv: per-layer files in f16 and bf16, --layers") {
  ScratchDir data, out;
  const Activations a = MakeActivations(48, 2, 1, 8, 2);
  // Layer 0 in float16, layer 3 in bfloat16.
  std::vector<uint16_t> q16, k16, v16, qb, kb, vb;
  for (float x : a.q) q16.push_back(F16FromDouble(x)), qb.push_back(BF16FromFloat(x));
  for (float x : a.k) k16.push_back(F16FromDouble(x)), kb.push_back(BF16FromFloat(x));
  for (float x : a.v) v16.push_back(F16FromDouble(x)), vb.push_back(BF16FromFloat(x));
  const std::vector<size_t> qs = {48, 2, 8}, kvs = {48, 1, 8};
  WriteBytes(data.File("layer0_q.npy"), NpyBytes(Dict("<f2", qs), U16Data(q16)));
  WriteBytes(data.File("layer0_k.npy"), NpyBytes(Dict("<f2", kvs), U16Data(k16)));
  WriteBytes(data.File("layer0_v.npy"), NpyBytes(Dict("<f2", kvs), U16Data(v16)));
  WriteBytes(data.File("layer3_q.npy"), NpyBytes(Dict("<u2", qs), U16Data(qb)));
  WriteBytes(data.File("layer3_k.npy"), NpyBytes(Dict("<u2", kvs), U16Data(kb)));
  WriteBytes(data.File("layer3_v.npy"), NpyBytes(Dict("<u2", kvs), U16Data(vb)));
  WriteBytes(data.File("notes.txt"), "other files are ignored");

  auto rows = RunQkvCsv({"--qkv", data.path().string(), "--bf16"}, out);
  std::map<std::string, size_t> col;
  for (size_t i = 0; i < rows[0].size(); ++i) col[rows[0][i]] = i;
  std::map<std::string, size_t> per_layer;
  for (size_t i = 1; i < rows.size(); ++i) ++per_layer[rows[i][col["layer"]]];
  CHECK(per_layer.size() == 2);
  CHECK(per_layer["0"] == per_layer["3"]);

  rows = RunQkvCsv({"--qkv", data.path().string(), "--bf16", "--layers", "3"}, out);
  for (size_t i = 1; i < rows.size(); ++i) CHECK(rows[i][col["layer"]] == "3");
}

TEST_CASE("--qkv: malformed layers are refused with exit 1, naming the file") {
  const Activations a = MakeActivations(32, 4, 2, 8, 3);
  struct Case {
    const char* name;
    std::function<void(const ScratchDir&)> make;
    std::vector<std::string> extra;
    std::string file;   // the file the message must name ("" for the directory)
    std::string words;  // and what it must say
  };
  const std::vector<Case> cases = {
      {"missing v.npy",
       [&](const ScratchDir& d) {
         WriteNpyF32(d.File("q.npy"), {32, 4, 8}, a.q);
         WriteNpyF32(d.File("k.npy"), {32, 2, 8}, a.k);
       },
       {},
       "v.npy",
       "missing"},
      {"missing layer file",
       [&](const ScratchDir& d) {
         WriteNpyF32(d.File("layer1_q.npy"), {32, 4, 8}, a.q);
         WriteNpyF32(d.File("layer1_v.npy"), {32, 2, 8}, a.v);
       },
       {},
       "layer1_k.npy",
       "missing"},
      {"both namings",
       [&](const ScratchDir& d) {
         WriteLayer(d, "", a);
         WriteLayer(d, "layer0_", a);
       },
       {},
       "",
       "keep one naming"},
      {"no layer files",
       [&](const ScratchDir& d) { WriteBytes(d.File("x.npy"), "x"); },
       {},
       "",
       "no q.npy"},
      {"layer not there",
       [&](const ScratchDir& d) { WriteLayer(d, "layer2_", a); },
       {"--layers", "5"},
       "",
       "no layer 5"},
      {"tokens differ",
       [&](const ScratchDir& d) {
         WriteLayer(d, "", a);
         WriteNpyF32(d.File("k.npy"), {16, 2, 8},
                     std::vector<float>(a.k.begin(), a.k.begin() + 256));
         WriteNpyF32(d.File("v.npy"), {16, 2, 8},
                     std::vector<float>(a.v.begin(), a.v.begin() + 256));
       },
       {},
       "k.npy",
       "16 tokens"},
      {"k and v differ",
       [&](const ScratchDir& d) {
         WriteLayer(d, "", a);
         WriteNpyF32(d.File("v.npy"), {32, 1, 16}, a.v);
       },
       {},
       "v.npy",
       "differs"},
      {"head_dim differs",
       [&](const ScratchDir& d) {
         WriteLayer(d, "", a);
         WriteNpyF32(d.File("q.npy"), {32, 2, 16}, a.q);
       },
       {},
       "k.npy",
       "head_dim"},
      {"query heads not a multiple",
       [&](const ScratchDir& d) {
         WriteLayer(d, "", a);
         WriteNpyF32(d.File("q.npy"), {32, 3, 8},
                     std::vector<float>(a.q.begin(), a.q.begin() + 768));
       },
       {},
       "q.npy",
       "not a multiple"},
      {"four dimensions",
       [&](const ScratchDir& d) {
         WriteLayer(d, "", a);
         WriteNpyF32(d.File("k.npy"), {32, 2, 2, 4}, a.k);
       },
       {},
       "k.npy",
       "4 dimensions"},
      {"empty",
       [&](const ScratchDir& d) {
         WriteLayer(d, "", a);
         WriteNpyF32(d.File("q.npy"), {0, 4, 8}, {});
       },
       {},
       "q.npy",
       "empty"},
      {"NaN",
       [&](const ScratchDir& d) {
         Activations bad = a;
         bad.v[5 * 16 + 8 + 3] = std::nanf("");
         WriteLayer(d, "", bad);
       },
       {},
       "v.npy",
       "non-finite value nan at token 5, head 1, dim 3"},
      {"uint16 without --bf16",
       [&](const ScratchDir& d) {
         WriteLayer(d, "", a);
         WriteBytes(d.File("k.npy"), NpyBytes(Dict("<u2", {32, 2, 8}), std::string(1024, '\0')));
       },
       {},
       "k.npy",
       "--bf16"},
      {"truncated",
       [&](const ScratchDir& d) {
         WriteLayer(d, "", a);
         std::string bytes = ReadBytes(d.File("q.npy"));
         WriteBytes(d.File("q.npy"), bytes.substr(0, bytes.size() - 10));
       },
       {},
       "q.npy",
       "truncated"},
      {"integers",
       [&](const ScratchDir& d) {
         WriteLayer(d, "", a);
         WriteBytes(d.File("v.npy"), NpyBytes(Dict("<i4", {32, 2, 8}), std::string(2048, '\0')));
       },
       {},
       "v.npy",
       "'<i4' is not supported"},
      {"head_dim too large",
       [&](const ScratchDir& d) {
         WriteNpyF32(d.File("q.npy"), {1, 1, 600}, std::vector<float>(600, 1.0f));
         WriteNpyF32(d.File("k.npy"), {1, 1, 600}, std::vector<float>(600, 1.0f));
         WriteNpyF32(d.File("v.npy"), {1, 1, 600}, std::vector<float>(600, 1.0f));
       },
       {},
       "q.npy",
       "exceeds"},
  };
  for (const Case& c : cases) {
    INFO("case: " << c.name);
    ScratchDir d;
    c.make(d);
    const RunResult r =
        Run(Concat(Concat(kQkvTiny, {"--qkv", d.path().string(), "--no-files"}), c.extra));
    CHECK(r.status == 1);
    INFO("stderr: " << r.err);
    CHECK(r.err.rfind("covattn-compare: error: ", 0) == 0);
    CHECK(r.err.find(c.file.empty() ? d.path().string() : d.File(c.file)) != std::string::npos);
    CHECK(r.err.find(c.words) != std::string::npos);
    CHECK(r.out.empty());
  }
  // Paths that are not there at all.
  RunResult r = Run({"--qkv", "/nonexistent/covattn", "--quiet"});
  CHECK(r.status == 1);
  CHECK(r.err.find("/nonexistent/covattn: not a directory") != std::string::npos);
  r = Run({"--qkv", "a.npy,b.npy", "--quiet"});
  CHECK(r.status == 1);
  CHECK(r.err.find("three files") != std::string::npos);
  r = Run({"--qkv", "/nonexistent/q.npy,/nonexistent/k.npy,/nonexistent/v.npy", "--quiet"});
  CHECK(r.status == 1);
  CHECK(r.err.find("/nonexistent/q.npy: cannot open") != std::string::npos);
}
