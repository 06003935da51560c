// Helpers of the covattn-compare tests: scratch directories, hand-made .npy
// files byte by byte, reading files back, random llama2.c checkpoints, the
// tool run in-process, and small CSV, JSON and SVG checkers.
#ifndef COVATTN_TESTS_COMPARE_TEST_UTIL_H_
#define COVATTN_TESTS_COMPARE_TEST_UTIL_H_

#include <doctest/doctest.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "model/checkpoint.h"
#include "test_util.h"

namespace covattn_compare_test {

// A fresh directory under the system's temporary directory, removed with
// everything in it when the object goes.
class ScratchDir {
 public:
  ScratchDir() {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("covattn-compare-test-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

inline std::string ReadBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// The bytes of a .npy file: magic, version, header length (2 bytes for
// version 1, 4 otherwise), the header dictionary text padded with spaces and
// a newline to a multiple of 64 as numpy does, then `data`.
inline std::string NpyBytes(const std::string& dict, const std::string& data, int major = 1) {
  const size_t length_bytes = major == 1 ? 2 : 4;
  std::string header = dict;
  const size_t prefix = 8 + length_bytes;
  while ((prefix + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string bytes("\x93NUMPY", 6);
  bytes += static_cast<char>(major);
  bytes += '\0';
  for (size_t i = 0; i < length_bytes; ++i)
    bytes += static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  return bytes + header + data;
}

inline std::string ShapeText(const std::vector<size_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// A header dict with the shape as text: shapes beyond a 32-bit size_t must be
// writable too, to test that readers refuse them.
inline std::string DictWithShape(const std::string& descr, const std::string& shape,
                                 bool fortran = false) {
  return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
         ", 'shape': " + shape + ", }";
}

inline std::string Dict(const std::string& descr, const std::vector<size_t>& shape,
                        bool fortran = false) {
  return DictWithShape(descr, ShapeText(shape), fortran);
}

inline std::string F32Data(const std::vector<float>& values) {
  std::string data(values.size() * 4, '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], 4);
    for (int b = 0; b < 4; ++b) data[4 * i + b] = static_cast<char>((bits >> (8 * b)) & 0xFF);
  }
  return data;
}

inline std::string U16Data(const std::vector<uint16_t>& values) {
  std::string data(values.size() * 2, '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    data[2 * i] = static_cast<char>(values[i] & 0xFF);
    data[2 * i + 1] = static_cast<char>(values[i] >> 8);
  }
  return data;
}

// An f32 array as a complete file.
inline void WriteNpyF32(const std::string& path, const std::vector<size_t>& shape,
                        const std::vector<float>& values) {
  WriteBytes(path, NpyBytes(Dict("<f4", shape), F32Data(values)));
}

// ---------------------------------------------------------------------------
// covattn-compare in-process.

struct RunResult {
  int status;
  std::string out, err;
};

inline std::string Drain(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), f)) > 0) s.append(buffer, n);
  std::fclose(f);
  return s;
}

inline RunResult Run(const std::vector<std::string>& args) {
  std::vector<const char*> argv = {"covattn-compare"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  std::FILE* out = std::tmpfile();
  std::FILE* err = std::tmpfile();
  REQUIRE(out != nullptr);
  REQUIRE(err != nullptr);
  RunResult r;
  r.status = covattn_compare::CompareMain(static_cast<int>(argv.size()), argv.data(), out, err);
  r.out = Drain(out);
  r.err = Drain(err);
  return r;
}

inline std::vector<std::string> Concat(std::vector<std::string> a,
                                       const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// ---------------------------------------------------------------------------
// Minimal parsers: CSV with quoted fields, and JSON into a small tree.

inline std::vector<std::vector<std::string>> ParseCsv(const std::string& text) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false, any = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"')
        field += '"', ++i;
      else if (c == '"')
        quoted = false;
      else
        field += c;
    } else if (c == '"') {
      quoted = true, any = true;
    } else if (c == ',') {
      row.push_back(field), field.clear(), any = true;
    } else if (c == '\n') {
      row.push_back(field), field.clear();
      rows.push_back(row), row.clear(), any = false;
    } else {
      field += c, any = true;
    }
  }
  REQUIRE_FALSE(quoted);
  REQUIRE_FALSE(any);  // the file ends with a newline
  return rows;
}

struct Json {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
  bool boolean = false;
  double number = 0.0;
  std::string text;
  std::vector<Json> items;
  std::map<std::string, Json> members;
  const Json& operator[](const std::string& key) const {
    static const Json missing;
    auto it = members.find(key);
    return it == members.end() ? missing : it->second;
  }
};

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}
  bool Parse(Json* out) {
    if (!Value(out)) return false;
    Space();
    return i_ == s_.size();
  }

 private:
  void Space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool Literal(const char* word) {
    const std::string w = word;
    if (s_.compare(i_, w.size(), w) != 0) return false;
    i_ += w.size();
    return true;
  }
  bool String(std::string* out) {
    if (i_ >= s_.size() || s_[i_] != '"') return false;
    ++i_;
    while (i_ < s_.size() && s_[i_] != '"') {
      if (static_cast<unsigned char>(s_[i_]) < 0x20) return false;
      if (s_[i_] == '\\') {
        if (++i_ >= s_.size()) return false;
        const char e = s_[i_];
        if (e == 'u') {
          if (i_ + 4 >= s_.size()) return false;
          i_ += 4;
          *out += '?';
        } else if (std::string("\"\\/bfnrt").find(e) == std::string::npos) {
          return false;
        } else {
          *out += e == 'n' ? '\n' : e == 't' ? '\t' : e;
        }
        ++i_;
        continue;
      }
      *out += s_[i_++];
    }
    if (i_ >= s_.size()) return false;
    ++i_;
    return true;
  }
  bool Value(Json* v) {
    Space();
    if (i_ >= s_.size()) return false;
    const char c = s_[i_];
    if (c == '{') {
      v->kind = Json::kObject;
      ++i_;
      Space();
      if (i_ < s_.size() && s_[i_] == '}') return ++i_, true;
      for (;;) {
        Space();
        std::string key;
        if (!String(&key)) return false;
        Space();
        if (i_ >= s_.size() || s_[i_++] != ':') return false;
        if (v->members.count(key)) return false;  // duplicate keys would hide data
        if (!Value(&v->members[key])) return false;
        Space();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        return i_ < s_.size() && s_[i_++] == '}';
      }
    }
    if (c == '[') {
      v->kind = Json::kArray;
      ++i_;
      Space();
      if (i_ < s_.size() && s_[i_] == ']') return ++i_, true;
      for (;;) {
        v->items.emplace_back();
        if (!Value(&v->items.back())) return false;
        Space();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        return i_ < s_.size() && s_[i_++] == ']';
      }
    }
    if (c == '"') {
      v->kind = Json::kString;
      return String(&v->text);
    }
    if (Literal("null")) return v->kind = Json::kNull, true;
    if (Literal("true")) return v->kind = Json::kBool, v->boolean = true, true;
    if (Literal("false")) return v->kind = Json::kBool, v->boolean = false, true;
    // Numbers: JSON's grammar (no NaN, no inf, no leading '+').
    const size_t start = i_;
    if (s_[i_] == '-') ++i_;
    if (i_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[i_]))) return false;
    while (i_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[i_])) ||
                              std::string(".eE+-").find(s_[i_]) != std::string::npos)) {
      ++i_;
    }
    v->kind = Json::kNumber;
    char* end = nullptr;
    const std::string number = s_.substr(start, i_ - start);
    v->number = std::strtod(number.c_str(), &end);
    return end == number.c_str() + number.size();
  }

  const std::string& s_;
  size_t i_ = 0;
};

// Well-formed enough: one <svg> root, every element closed in order.
inline void CheckSvg(const std::string& svg) {
  REQUIRE(svg.rfind("<svg", 0) == 0);
  REQUIRE(svg.size() > 1000);
  CHECK(svg.substr(svg.size() - 7) == "</svg>\n");
  std::vector<std::string> open;
  size_t elements = 0, polylines = 0;
  for (size_t i = svg.find('<'); i != std::string::npos; i = svg.find('<', i + 1)) {
    const size_t close = svg.find('>', i);
    REQUIRE(close != std::string::npos);
    const std::string tag = svg.substr(i + 1, close - i - 1);
    REQUIRE_FALSE(tag.empty());
    CHECK(tag.find('<') == std::string::npos);
    if (tag[0] == '/') {
      REQUIRE_FALSE(open.empty());
      CHECK(open.back() == tag.substr(1));
      open.pop_back();
      continue;
    }
    const std::string name = tag.substr(0, tag.find_first_of(" /"));
    ++elements;
    polylines += name == "polyline";
    if (tag.back() != '/') open.push_back(name);
    if (elements > 1) CHECK(!open.empty());  // nothing outside the root
  }
  CHECK(open.empty());
  CHECK(polylines > 0);
}

// ---------------------------------------------------------------------------
// Random checkpoints, written here in the llama2.c layout.

struct Shape {
  int32_t dim = 32, hidden = 96, layers = 2, heads = 4, kv_heads = 2, vocab = 40, seq_len = 64;
  bool shared = true;
  int32_t head_dim() const { return dim / heads; }
};

// Weights in file order. Scales make the model look trained: unit-RMS
// activations, attention scores and logits with a std of about 2.
inline std::vector<float> RandomWeights(const Shape& s, uint64_t seed) {
  covattn_test::Rng rng(seed);
  std::vector<float> w;
  auto add = [&](size_t n, double mean, double std) {
    for (size_t i = 0; i < n; ++i) w.push_back(static_cast<float>(mean + std * rng.Normal()));
  };
  const size_t d = size_t(s.dim), kv = size_t(s.kv_heads * s.head_dim()), L = size_t(s.layers);
  const size_t hidden = size_t(s.hidden), vocab = size_t(s.vocab);
  const double in = 1.0 / std::sqrt(double(d));
  add(vocab * d, 0.0, 1.0);                                   // token embedding
  add(L * d, 1.0, 0.1);                                       // rms_att
  add(L * d * d, 0.0, 1.4 * in);                              // wq
  add(L * kv * d, 0.0, 1.4 * in);                             // wk
  add(L * kv * d, 0.0, in);                                   // wv
  add(L * d * d, 0.0, in);                                    // wo
  add(L * d, 1.0, 0.1);                                       // rms_ffn
  add(L * hidden * d, 0.0, in);                               // w1
  add(L * d * hidden, 0.0, 1.0 / std::sqrt(double(hidden)));  // w2
  add(L * hidden * d, 0.0, in);                               // w3
  add(d, 0.3, 0.03);  // rms_final: logits with a std of about 2
  add(2 * size_t(s.seq_len) * size_t(s.head_dim() / 2), 7.0, 0.0);  // unused RoPE tables
  if (!s.shared) add(vocab * d, 0.0, in);                           // wcls
  return w;
}

inline std::string HeaderBytes(const int32_t fields[7]) {
  std::string bytes(28, '\0');
  for (int i = 0; i < 7; ++i) {
    const uint32_t u = static_cast<uint32_t>(fields[i]);
    for (int b = 0; b < 4; ++b) bytes[4 * i + b] = static_cast<char>((u >> (8 * b)) & 0xFF);
  }
  return bytes;
}

inline std::string CheckpointBytes(const Shape& s, const std::vector<float>& weights) {
  const int32_t fields[7] = {
      s.dim, s.hidden, s.layers, s.heads, s.kv_heads, s.shared ? s.vocab : -s.vocab, s.seq_len};
  return HeaderBytes(fields) + F32Data(weights);
}

// The checkpoint of CheckpointBytes, parsed in memory as "test.bin".
inline covattn_model::Checkpoint MakeCheckpoint(const Shape& s, const std::vector<float>& weights) {
  const std::string bytes = CheckpointBytes(s, weights);
  covattn_model::Checkpoint ck;
  std::string error;
  REQUIRE_MESSAGE(
      covattn_model::ParseCheckpoint("test.bin", reinterpret_cast<const uint8_t*>(bytes.data()),
                                     bytes.size(), &ck, &error),
      error);
  return ck;
}

}  // namespace covattn_compare_test

#endif  // COVATTN_TESTS_COMPARE_TEST_UTIL_H_
