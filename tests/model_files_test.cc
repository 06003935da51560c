// The model's files and covattn-compare --model end to end: the llama2.c
// checkpoint reader on good and malformed files (through the file reader
// and the in-memory parser alike), token files, and the tool on a
// random-weight checkpoint written here (every method and field, exact
// against exact KL 0, sampling, every error's exit status and message).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "compare_test_util.h"
#include "model/checkpoint.h"
#include "model/tokens.h"

using namespace covattn_compare_test;
using namespace covattn_model;

// ---------------------------------------------------------------------------
// Malformed checkpoints: each gives a message naming the file and the
// problem, through the file reader and the in-memory parser alike.

namespace {

// Writes `bytes` to a file and reads it back as a checkpoint; returns the
// error (empty when it loads).
std::string LoadError(const std::string& bytes) {
  ScratchDir dir;
  const std::string path = dir.File("model.bin");
  covattn_compare_test::WriteBytes(path, bytes);
  Checkpoint ck;
  std::string file_error, memory_error;
  const bool file_ok = ReadCheckpoint(path, &ck, &file_error);
  CHECK(ck.weights.empty() == !file_ok);
  const bool memory_ok = ParseCheckpoint("mem.bin", reinterpret_cast<const uint8_t*>(bytes.data()),
                                         bytes.size(), &ck, &memory_error);
  CHECK(file_ok == memory_ok);
  if (file_ok) return "";
  // The same problem, each message naming its source.
  CHECK(file_error.rfind(path + ": ", 0) == 0);
  CHECK(memory_error.rfind("mem.bin: ", 0) == 0);
  CHECK(file_error.substr(path.size()) == memory_error.substr(7));
  return file_error;
}

std::string HeaderError(std::initializer_list<int32_t> fields) {
  int32_t f[7];
  std::copy(fields.begin(), fields.end(), f);
  return LoadError(HeaderBytes(f) + std::string(4096, '\0'));
}

}  // namespace

TEST_CASE("checkpoint reader: a valid file loads, and its tensors are where run.c puts them") {
  Shape s;
  s.shared = false;
  const std::vector<float> weights = RandomWeights(s, 41);
  CHECK(LoadError(CheckpointBytes(s, weights)).empty());
  const Checkpoint ck = MakeCheckpoint(s, weights);
  const size_t d = 32, kv = 16, hidden = 96, L = 2, vocab = 40;
  CHECK(ck.config.head_dim() == 8);
  CHECK(ck.config.kv_dim() == kv);
  CHECK(ck.token_embedding == ck.weights.data());
  size_t at = vocab * d + L * d;  // embedding, rms_att
  CHECK(ck.layers[1].wq == ck.weights.data() + at + d * d);
  at += L * d * d;
  CHECK(ck.layers[1].wk == ck.weights.data() + at + kv * d);
  at += 2 * L * kv * d + L * d * d + L * d + 3 * L * hidden * d;
  CHECK(ck.rms_final == ck.weights.data() + at);
  CHECK(ck.classifier == ck.weights.data() + at + d + 2 * 64 * 4);
  CHECK(ck.weights.size() == at + d + 2 * 64 * 4 + vocab * d);
}

TEST_CASE("checkpoint reader: truncated and oversized files") {
  Shape s;
  const std::string good = CheckpointBytes(s, RandomWeights(s, 42));
  for (size_t size : {size_t{0}, size_t{3}, size_t{27}}) {
    INFO("size " << size);
    const std::string e = LoadError(good.substr(0, size));
    CHECK(Contains(e, "truncated"));
    CHECK(Contains(e, "header"));
  }
  for (size_t size : {size_t{28}, size_t{29}, good.size() / 2, good.size() - 4, good.size() - 1}) {
    INFO("size " << size);
    const std::string e = LoadError(good.substr(0, size));
    CHECK(Contains(e, "truncated: the header (dim 32, hidden_dim 96, 2 layers, 4/2 heads"));
    CHECK(Contains(e, "implies " + std::to_string(good.size()) + " bytes"));
  }
  CHECK(Contains(LoadError(good + std::string(4, '\0')), "size mismatch"));
  // A header that claims a separate classifier the file does not have.
  std::string claims_separate = good;
  const int32_t minus_vocab = -s.vocab;
  std::memcpy(&claims_separate[20], &minus_vocab, 4);
  CHECK(Contains(LoadError(claims_separate), "separate classifier"));
  // One layer more than the file holds.
  std::string more_layers = good;
  const int32_t three = 3;
  std::memcpy(&more_layers[8], &three, 4);
  CHECK(Contains(LoadError(more_layers), "truncated"));
}

TEST_CASE("checkpoint reader: header fields") {
  // Every field zero or negative (vocab_size negative is a separate classifier).
  for (int field = 0; field < 7; ++field) {
    for (int32_t bad : {0, -1, std::numeric_limits<int32_t>::min()}) {
      int32_t f[7] = {32, 96, 2, 4, 2, 40, 64};
      f[field] = bad;
      if (field == 5 && bad == -1) continue;  // a valid separate-classifier header
      INFO("field " << field << " = " << bad);
      const std::string e = LoadError(HeaderBytes(f) + std::string(64, '\0'));
      CHECK(Contains(e, "header field"));
      CHECK(Contains(e, std::to_string(bad)));
    }
  }
  CHECK(Contains(HeaderError({30, 96, 2, 4, 2, 40, 64}), "dim 30 is not a multiple of n_heads 4"));
  CHECK(Contains(HeaderError({32, 96, 2, 4, 3, 40, 64}),
                 "n_heads 4 is not a multiple of n_kv_heads 3"));
  CHECK(Contains(HeaderError({36, 96, 2, 4, 2, 40, 64}), "head_dim 9"));
  CHECK(Contains(HeaderError({36, 96, 2, 4, 2, 40, 64}), "odd"));
  CHECK(Contains(HeaderError({1026, 96, 2, 1, 1, 40, 64}), "exceeds covattn's limit of 512"));
  CHECK(Contains(HeaderError({32, 96, 2, 8, 16, 40, 64}), "n_heads 8 is not a multiple"));
  // Sizes far beyond any file: overflow, or simply not this file.
  const int32_t big = std::numeric_limits<int32_t>::max();
  CHECK(Contains(HeaderError({1 << 30, big, big, 1 << 22, 1 << 22, big, big}), "overflow"));
  CHECK(Contains(HeaderError({1 << 16, 1 << 30, 1 << 20, 256, 256, 1 << 30, 1 << 30}), "overflow"));
  // 2^46 bytes: more than this file, or, with a 32-bit size_t, than memory.
  CHECK(Contains(HeaderError({1 << 16, 1 << 20, 1 << 10, 256, 256, 1 << 20, 1 << 20}),
                 sizeof(size_t) >= 8 ? "truncated" : "overflow"));
}

TEST_CASE("checkpoint reader: non-finite weights, other formats, unreadable paths") {
  Shape s;
  std::vector<float> weights = RandomWeights(s, 43);
  const size_t wq_layer1 = 40 * 32 + 2 * 32 + 32 * 32 + 5;
  weights[wq_layer1] = std::numeric_limits<float>::quiet_NaN();
  std::string e = LoadError(CheckpointBytes(s, weights));
  CHECK(Contains(e, "non-finite weight NaN in wq of layer 1 at element 5"));
  weights = RandomWeights(s, 43);
  weights[7] = -std::numeric_limits<float>::infinity();
  CHECK(Contains(LoadError(CheckpointBytes(s, weights)),
                 "infinity in token_embedding_table at element 7"));
  // The unused RoPE tables may hold anything, as for run.c.
  weights = RandomWeights(s, 43);
  weights[weights.size() - 1] = std::numeric_limits<float>::quiet_NaN();
  CHECK(LoadError(CheckpointBytes(s, weights)).empty());

  const int32_t export_v1[7] = {0x616b3432, 1, 32, 96, 2, 4, 2};
  CHECK(Contains(LoadError(HeaderBytes(export_v1) + std::string(64, '\0')),
                 "format version 1 (magic \"ak42\")"));

  ScratchDir dir;
  Checkpoint ck;
  std::string error;
  CHECK_FALSE(ReadCheckpoint(dir.File("missing.bin"), &ck, &error));
  CHECK(Contains(error, dir.File("missing.bin") + ": cannot open"));
  CHECK_FALSE(ReadCheckpoint(dir.path().string(), &ck, &error));
  CHECK(Contains(error, "not a regular file"));
}

// ---------------------------------------------------------------------------
// Tokens.

TEST_CASE("tokens: .npy int32/int64 and raw bytes, windows, bad ids") {
  using covattn_compare_test::Dict;
  using covattn_compare_test::NpyBytes;
  ScratchDir dir;
  std::string i4, i8;
  for (int32_t t = 0; t < 10; ++t) {
    for (int b = 0; b < 4; ++b) i4 += static_cast<char>((t * 3) >> (8 * b));
    for (int b = 0; b < 8; ++b) i8 += static_cast<char>(b < 4 ? (t * 3) >> (8 * b) : 0);
  }
  covattn_compare_test::WriteBytes(dir.File("t4.npy"), NpyBytes(Dict("<i4", {10}), i4));
  covattn_compare_test::WriteBytes(dir.File("t8.npy"), NpyBytes(Dict("<i8", {1, 10}), i8, 2));
  covattn_compare_test::WriteBytes(dir.File("text.txt"), "Hi!\n");
  std::vector<int32_t> tokens;
  std::string error;
  for (const char* name : {"t4.npy", "t8.npy"}) {
    INFO(name);
    REQUIRE_MESSAGE(ReadTokens(dir.File(name), TokenFormat::kNpy, {}, 40, &tokens, &error), error);
    CHECK(tokens == std::vector<int32_t>{0, 3, 6, 9, 12, 15, 18, 21, 24, 27});
    REQUIRE(ReadTokens(dir.File(name), TokenFormat::kNpy, {2, 3}, 40, &tokens, &error));
    CHECK(tokens == std::vector<int32_t>{6, 9, 12});
    size_t count = 0;
    REQUIRE(CountTokens(dir.File(name), TokenFormat::kNpy, &count, &error));
    CHECK(count == 10);
    // 27 is outside a vocabulary of 20: the file and the position are named.
    CHECK_FALSE(ReadTokens(dir.File(name), TokenFormat::kNpy, {}, 20, &tokens, &error));
    CHECK(error == dir.File(name) + ": token 21 at position 7 is outside the vocabulary [0, 20)");
    CHECK(tokens.empty());
    CHECK_FALSE(ReadTokens(dir.File(name), TokenFormat::kNpy, {10, 0}, 40, &tokens, &error));
    CHECK(Contains(error, "no tokens from offset 10"));
  }
  REQUIRE(ReadTokens(dir.File("text.txt"), TokenFormat::kBytes, {1, 0}, 257, &tokens, &error));
  CHECK(tokens == std::vector<int32_t>{'i', '!', '\n'});
  CHECK_FALSE(ReadTokens(dir.File("text.txt"), TokenFormat::kBytes, {}, 100, &tokens, &error));
  CHECK(error ==
        dir.File("text.txt") + ": token 105 at position 1 is outside the vocabulary [0, 100)");

  // Negative ids, wrong dtypes and shapes, truncated data, not .npy at all.
  std::string negative = i8;
  negative[8 * 4 + 7] = '\xff';
  covattn_compare_test::WriteBytes(dir.File("neg.npy"), NpyBytes(Dict("<i8", {10}), negative));
  CHECK_FALSE(ReadTokens(dir.File("neg.npy"), TokenFormat::kNpy, {}, 40, &tokens, &error));
  CHECK(Contains(error, "at position 4 is outside"));
  const struct {
    const char* name;
    std::string bytes;
    const char* problem;
  } bad[] = {
      {"f4.npy", NpyBytes(Dict("<f4", {10}), i4), "dtype '<f4' is not a token type"},
      {"2d.npy", NpyBytes(Dict("<i4", {2, 5}), i4), "shape (2, 5) is not a token sequence"},
      {"short.npy", NpyBytes(Dict("<i4", {11}), i4), "truncated: shape (11,)"},
      {"long.npy", NpyBytes(Dict("<i4", {9}), i4), "size mismatch: shape (9,)"},
      {"huge.npy", NpyBytes(DictWithShape("<i4", "(4611686018427387904,)"), i4),
       "impossible shape"},
      {"nodict.npy", NpyBytes("{}", i4), "malformed header"},
      {"text.txt", "Hi!\n", "not a .npy file"},
  };
  for (const auto& b : bad) {
    INFO(b.name);
    covattn_compare_test::WriteBytes(dir.File(b.name), b.bytes);
    CHECK_FALSE(ReadTokens(dir.File(b.name), TokenFormat::kNpy, {}, 40, &tokens, &error));
    CHECK(error.rfind(dir.File(b.name) + ": ", 0) == 0);
    CHECK(Contains(error, b.problem));
  }
}

// ---------------------------------------------------------------------------
// --model: a random-weight checkpoint written here (head_dim 8, 4 query and 2
// KV heads, 2 layers, vocab 40, seq_len 64).

namespace {

std::string I32Data(const std::vector<int32_t>& tokens) {
  std::string data;
  for (int32_t t : tokens) {
    for (int b = 0; b < 4; ++b)
      data += static_cast<char>((static_cast<uint32_t>(t) >> (8 * b)) & 0xFF);
  }
  return data;
}

struct ModelFiles {
  ScratchDir dir;
  Shape shape;
  std::string checkpoint = dir.File("model.bin"), tokens = dir.File("tokens.npy");
  ModelFiles() {
    WriteBytes(checkpoint, CheckpointBytes(shape, RandomWeights(shape, 77)));
    std::vector<int32_t> t(60);
    for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int32_t>((i * 7 + i / 5) % 40);
    WriteBytes(tokens, NpyBytes(Dict("<i4", {t.size()}), I32Data(t)));
  }
};

// The CSV's rows as maps from the header's names.
std::vector<std::map<std::string, std::string>> CsvRecords(const std::string& text) {
  const std::vector<std::vector<std::string>> rows = ParseCsv(text);
  REQUIRE(rows.size() >= 2);
  std::vector<std::map<std::string, std::string>> records;
  for (size_t r = 1; r < rows.size(); ++r) {
    REQUIRE(rows[r].size() == rows[0].size());
    std::map<std::string, std::string> record;
    for (size_t i = 0; i < rows[0].size(); ++i) record[rows[0][i]] = rows[r][i];
    records.push_back(record);
  }
  return records;
}

}  // namespace

TEST_CASE("--model: every method at every budget, table, CSV, JSON and SVG") {
  ModelFiles m;
  const RunResult r =
      Run({"--model", m.checkpoint, "--tokens", m.tokens, "--max-tokens", "48", "--budget", "12,24",
           "--sinks", "2", "--outliers", "2", "--windows", "2", "--output-dir", m.dir.File("out"),
           "--dump-qkv", m.dir.File("dump"), "--quiet"});
  INFO("stderr: " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("2 windows of 48 tokens") != std::string::npos);
  CHECK(r.out.find("hybrid B=12 (2/10/0)") != std::string::npos);
  const auto records = CsvRecords(ReadBytes(m.dir.File("out/covattn-compare.csv")));
  std::map<std::string, size_t> per_method;
  for (const auto& rec : records) {
    ++per_method[rec.at("method")];
    for (const char* field :
         {"kl_mean", "kl_p95", "top1_agreement", "ppl_ratio", "decode_seconds_per_token",
          "layer0_rel_l2", "layer1_log_z_error", "persistent_bytes_per_kv_head"}) {
      INFO(rec.at("method_name") << " " << field);
      REQUIRE(rec.count(field) == 1);
      if (std::string(field).rfind("layer", 0) != 0 || rec.at("method") != "exact") {
        CHECK(std::isfinite(std::stod(rec.at(field))));
      }
    }
    if (rec.at("method") == "exact") {  // exact against exact, bit for bit
      CHECK(rec.at("kl_mean") == "0");
      CHECK(rec.at("kl_p95") == "0");
      CHECK(rec.at("top1_agreement") == "1");
      CHECK(rec.at("ppl_ratio") == "1");
    }
    if (rec.at("method") == "hybrid" && rec.at("budget") == "12") {
      CHECK(std::stod(rec.at("kl_mean")) > 1e-6);  // 48 tokens, 10 in the window
      CHECK(std::stod(rec.at("layer0_rel_l2")) > 1e-4);
    }
  }
  CHECK(per_method["exact"] == 1);
  CHECK(per_method["hybrid"] == 2);
  CHECK(per_method["window"] == 2);
  // Equal memory: the window's cache is never smaller than the hybrid's.
  for (const auto& w : records) {
    for (const auto& h : records) {
      if (w.at("method") == "window" && h.at("method") == "hybrid" &&
          w.at("budget") == h.at("budget")) {
        CHECK(std::stod(w.at("persistent_bytes_per_kv_head")) >=
              std::stod(h.at("persistent_bytes_per_kv_head")));
      }
    }
  }
  Json json;
  REQUIRE(JsonParser(ReadBytes(m.dir.File("out/covattn-compare.json"))).Parse(&json));
  CHECK(json["mode"].text == "model");
  CHECK(json["window_offsets"].items.size() == 2);
  CHECK(json["measurements"].items.size() == records.size());
  for (const Json& item : json["measurements"].items) {
    for (const char* field : {"kl_mean", "kl_p95", "top1_agreement", "ppl_ratio"}) {
      CHECK(item[field].kind == Json::kNumber);
    }
  }
  CHECK(json["attention"]["score_std"].items.size() == 2);
  CheckSvg(ReadBytes(m.dir.File("out/covattn-compare.svg")));
  // The first window's activations, as --qkv reads them (model_test checks
  // that --qkv on them gives the model's layer-0 errors).
  const RunResult qkv = Run({"--qkv", m.dir.File("dump"), "--methods", "exact,hybrid", "--budget",
                             "12", "--sinks", "2", "--samples", "1", "--min-time", "0.01",
                             "--min-context", "8", "--no-files", "--quiet"});
  INFO("--qkv stderr: " << qkv.err);
  CHECK(qkv.status == 0);
  CHECK(qkv.out.find("layer 1") != std::string::npos);
  CHECK(qkv.out.find("context 48") != std::string::npos);
}

TEST_CASE("--model --state-bytes: equal memory by the state's bytes") {
  // head_dim 8: a token is 64 bytes, the summary 8 (1 + 16) + 8 * 64 = 648
  // (11 tokens, rounded up).
  ModelFiles m;
  const RunResult r = Run({"--model",
                           m.checkpoint,
                           "--tokens",
                           m.tokens,
                           "--max-tokens",
                           "32",
                           "--budget",
                           "12",
                           "--sinks",
                           "2",
                           "--outliers",
                           "2",
                           "--state-bytes",
                           "--csv",
                           m.dir.File("s.csv"),
                           "--json",
                           m.dir.File("s.json"),
                           "--svg",
                           m.dir.File("s.svg"),
                           "--quiet"});
  INFO("stderr: " << r.err);
  REQUIRE(r.status == 0);
  std::map<std::string, std::map<std::string, std::string>> by_method;
  for (const auto& rec : CsvRecords(ReadBytes(m.dir.File("s.csv"))))
    by_method[rec.at("method")] = rec;
  CHECK(by_method["hybrid"]["persistent_bytes_per_kv_head"] == "1416");
  CHECK(by_method["hybrid"]["window"] == "10");
  CHECK(by_method["window"]["window"] == "21");
  CHECK(by_method["window"]["persistent_bytes_per_kv_head"] == "1472");
  CHECK(by_method["outliers"]["outlier_slots"] == "2");
}

TEST_CASE("--model: a sequence sampled from the exact model, reproducibly") {
  ModelFiles m;
  const std::vector<std::string> args = {
      "--model", m.checkpoint, "--seed", "5",         "--max-tokens", "30",         "--budget",
      "8",       "--sinks",    "1",      "--methods", "exact,hybrid", "--no-files", "--quiet"};
  const RunResult a = Run(args), b = Run(args);
  INFO("stderr: " << a.err);
  REQUIRE(a.status == 0);
  CHECK(a.out.find("tokens sampled") != std::string::npos);
  // The same tokens and figures (timings aside) in both runs.
  auto figures = [](const std::string& out) {
    const size_t at = out.find("hybrid B=8");
    REQUIRE(at != std::string::npos);
    return out.substr(at, 75);
  };
  CHECK(figures(a.out) == figures(b.out));
}

TEST_CASE("--model: malformed checkpoints and tokens exit 1, naming the file and the problem") {
  ModelFiles m;
  const std::string good = ReadBytes(m.checkpoint);
  int32_t header[7] = {32, 96, 2, 4, 3, 40, 64};
  struct Case {
    std::string name, file, contents;
    std::vector<std::string> args;
    std::string words;
  };
  const std::vector<Case> cases = {
      {"missing", m.dir.File("none.bin"), "", {}, "cannot open"},
      {"truncated", m.dir.File("short.bin"), good.substr(0, good.size() - 8), {}, "truncated"},
      {"header", m.dir.File("head.bin"), good.substr(0, 20), {}, "truncated"},
      {"oversized", m.dir.File("long.bin"), good + std::string(8, '\0'), {}, "size mismatch"},
      {"heads",
       m.dir.File("heads.bin"),
       HeaderBytes(header) + good.substr(28),
       {},
       "n_heads 4 is not a multiple of n_kv_heads 3"},
  };
  for (const Case& c : cases) {
    INFO("case " << c.name);
    if (c.name != "missing") WriteBytes(c.file, c.contents);
    const RunResult r = Run({"--model", c.file, "--tokens", m.tokens, "--budget", "8", "--sinks",
                             "1", "--no-files", "--quiet"});
    CHECK(r.status == 1);
    CHECK(r.err.rfind("covattn-compare: error: " + c.file + ": ", 0) == 0);
    CHECK(r.err.find(c.words) != std::string::npos);
    CHECK(r.out.empty());
  }
  const std::vector<Case> token_cases = {
      {"outside the vocabulary",
       m.dir.File("big.npy"),
       NpyBytes(Dict("<i4", {3}), I32Data({1, 40, 2})),
       {},
       "token 40 at position 1 is outside"},
      {"negative",
       m.dir.File("neg.npy"),
       NpyBytes(Dict("<i4", {2}), I32Data({1, -3})),
       {},
       "token -3 at position 1"},
      {"not npy", m.dir.File("text.npy"), "hello", {}, "not a .npy file"},
      {"float tokens",
       m.dir.File("f.npy"),
       NpyBytes(Dict("<f4", {2}), F32Data({1, 2})),
       {},
       "not a token type"},
      {"truncated",
       m.dir.File("cut.npy"),
       NpyBytes(Dict("<i4", {8}), I32Data({1, 2})),
       {},
       "truncated"},
      {"bytes", m.dir.File("raw.txt"), "abc", {"--bytes"}, "token 97 at position 0"},
      {"missing", m.dir.File("none.npy"), "", {}, "cannot open"},
  };
  for (const Case& c : token_cases) {
    INFO("case " << c.name);
    if (c.name != "missing") WriteBytes(c.file, c.contents);
    const RunResult r = Run(Concat({"--model", m.checkpoint, "--tokens", c.file, "--budget", "8",
                                    "--sinks", "1", "--no-files", "--quiet"},
                                   c.args));
    CHECK(r.status == 1);
    INFO("stderr: " << r.err);
    CHECK(r.err.rfind("covattn-compare: error: " + c.file + ": ", 0) == 0);
    CHECK(r.err.find(c.words) != std::string::npos);
  }
  RunResult r = Run({"--model", m.checkpoint, "--max-tokens", "65", "--no-files", "--quiet"});
  CHECK(r.status == 1);
  CHECK(r.err.find(m.checkpoint + ": --max-tokens 65 exceeds the model's seq_len of 64") !=
        std::string::npos);
  // Usage errors: exit 2.
  CHECK(Run({"--tokens", m.tokens}).status == 2);
  CHECK(Run({"--dump-qkv", m.dir.File("d")}).status == 2);
  CHECK(Run({"--model", m.checkpoint, "--qkv", m.dir.path().string()}).status == 2);
}
