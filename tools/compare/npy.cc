#include "npy.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>

#include "bytes.h"
#include "half.h"

namespace covattn_compare {
namespace {

constexpr unsigned char kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
// numpy writes headers of a few hundred bytes; anything this long is not one.
constexpr size_t kMaxHeaderBytes = size_t{1} << 20;
constexpr size_t kMaxDims = 32;

enum class Element { kF32, kF16, kF64, kBF16 };

size_t ElementBytes(Element e) { return e == Element::kF64 ? 8 : e == Element::kF32 ? 4 : 2; }

struct Failure {
  NpyProblem problem;
  std::string what;
};

// A value of the header dictionary: only what .npy headers hold.
struct Value {
  enum Kind { kString, kBool, kIntTuple, kOther } kind = kOther;
  std::string text;
  bool flag = false;
  std::vector<size_t> ints;
};

// Parses the Python literal dict of a .npy header, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4, 5), }
class HeaderParser {
 public:
  HeaderParser(const char* begin, const char* end) : p_(begin), end_(end) {}

  bool ParseDict(std::string* descr, bool* descr_structured, bool* fortran,
                 std::vector<size_t>* shape, std::string* why) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    if (!Consume('{')) return Fail("it does not start with '{'", why);
    for (;;) {
      if (Consume('}')) break;
      std::string key;
      if (!ParseString(&key)) return Fail("expected a quoted key", why);
      if (!Consume(':')) return Fail("expected ':' after '" + key + "'", why);
      Value value;
      if (!ParseValue(&value)) return Fail("cannot parse the value of '" + key + "'", why);
      if (key == "descr") {
        if (have_descr) return Fail("'descr' appears twice", why);
        have_descr = true;
        *descr_structured = value.kind != Value::kString;
        *descr = value.text;
      } else if (key == "fortran_order") {
        if (have_fortran) return Fail("'fortran_order' appears twice", why);
        if (value.kind != Value::kBool) return Fail("'fortran_order' is not True or False", why);
        have_fortran = true;
        *fortran = value.flag;
      } else if (key == "shape") {
        if (have_shape) return Fail("'shape' appears twice", why);
        if (value.kind != Value::kIntTuple) return Fail("'shape' is not a tuple of integers", why);
        have_shape = true;
        *shape = value.ints;
      } else {
        return Fail("unexpected key '" + key + "'", why);
      }
      if (Consume(',')) continue;
      if (Consume('}')) break;
      return Fail("expected ',' or '}' after '" + key + "'", why);
    }
    SkipSpace();
    if (p_ != end_) return Fail("unexpected text after the closing '}'", why);
    if (!have_descr) return Fail("the key 'descr' is missing", why);
    if (!have_fortran) return Fail("the key 'fortran_order' is missing", why);
    if (!have_shape) return Fail("the key 'shape' is missing", why);
    return true;
  }

 private:
  static bool Fail(const std::string& what, std::string* why) {
    *why = what;
    return false;
  }
  void SkipSpace() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  bool Consume(char c) {
    SkipSpace();
    if (p_ == end_ || *p_ != c) return false;
    ++p_;
    return true;
  }
  bool ParseString(std::string* s) {
    SkipSpace();
    if (p_ == end_ || (*p_ != '\'' && *p_ != '"')) return false;
    const char quote = *p_++;
    s->clear();
    while (p_ != end_ && *p_ != quote) {
      if (*p_ == '\\' || *p_ == '\n') return false;  // escapes never occur in valid headers
      s->push_back(*p_++);
    }
    if (p_ == end_) return false;
    ++p_;
    return true;
  }
  bool ParseInt(size_t* x) {
    SkipSpace();
    if (p_ == end_ || *p_ < '0' || *p_ > '9') return false;
    uint64_t v = 0;
    while (p_ != end_ && *p_ >= '0' && *p_ <= '9') {
      const uint64_t digit = static_cast<uint64_t>(*p_++ - '0');
      if (v > (UINT64_MAX - digit) / 10) return false;
      v = v * 10 + digit;
    }
    if (p_ != end_ && *p_ == 'L') ++p_;  // Python 2 long literals
    // Beyond SIZE_MAX (a 32-bit size_t) a value saturates: a shape holding it
    // is then refused as too large, which it is, rather than as unreadable.
    *x = v > SIZE_MAX ? SIZE_MAX : static_cast<size_t>(v);
    return true;
  }
  bool ParseWord(const char* word) {
    const size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) return false;
    p_ += n;
    return true;
  }
  // Skips a bracketed literal (a structured dtype's list), quotes respected.
  bool SkipBracketed() {
    int depth = 0;
    while (p_ != end_) {
      const char c = *p_;
      if (c == '\'' || c == '"') {
        std::string ignored;
        if (!ParseString(&ignored)) return false;
        continue;
      }
      ++p_;
      if (c == '[' || c == '(') ++depth;
      if (c == ']' || c == ')') {
        if (--depth == 0) return true;
      }
    }
    return false;
  }
  bool ParseValue(Value* v) {
    SkipSpace();
    if (p_ == end_) return false;
    if (*p_ == '\'' || *p_ == '"') {
      v->kind = Value::kString;
      return ParseString(&v->text);
    }
    if (ParseWord("True")) {
      v->kind = Value::kBool, v->flag = true;
      return true;
    }
    if (ParseWord("False")) {
      v->kind = Value::kBool, v->flag = false;
      return true;
    }
    if (*p_ == '[') {
      v->kind = Value::kOther;
      return SkipBracketed();
    }
    if (!Consume('(')) return false;
    v->kind = Value::kIntTuple;
    for (;;) {
      if (Consume(')')) return true;
      size_t x;
      if (!ParseInt(&x) || v->ints.size() == kMaxDims) return false;
      v->ints.push_back(x);
      if (Consume(',')) continue;
      return Consume(')');
    }
  }

  const char* p_;
  const char* end_;
};

bool ParseDescr(const std::string& descr, bool structured, const NpyReadOptions& options,
                Element* element, Failure* failure) {
  const std::string hint =
      "expected float32 '<f4', float16 '<f2', float64 '<f8', or bfloat16 stored as uint16 "
      "'<u2' (with --bf16)";
  if (structured) {
    *failure = {NpyProblem::kUnsupportedDtype, "structured dtypes are not supported; " + hint};
    return false;
  }
  const std::string type = descr.size() == 3 ? descr.substr(1) : descr;
  const char order = descr.size() == 3 ? descr[0] : '?';
  const bool known = type == "f4" || type == "f2" || type == "f8" || type == "u2";
  if (descr.size() != 3 || !known || order == '|') {
    *failure = {NpyProblem::kUnsupportedDtype, "dtype '" + descr + "' is not supported; " + hint};
    return false;
  }
  if (order == '>') {
    *failure = {NpyProblem::kBigEndian,
                "big-endian data ('" + descr + "') is not supported; save it as '<" + type + "'"};
    return false;
  }
  if (order != '<' && order != '=') {
    *failure = {NpyProblem::kUnsupportedDtype, "dtype '" + descr + "' has an unknown byte order"};
    return false;
  }
  if (type == "u2" && !options.uint16_as_bf16) {
    *failure = {NpyProblem::kUnsupportedDtype,
                "uint16 data ('" + descr + "'): pass --bf16 if it holds bfloat16 bits"};
    return false;
  }
  *element = type == "f4"   ? Element::kF32
             : type == "f2" ? Element::kF16
             : type == "f8" ? Element::kF64
                            : Element::kBF16;
  return true;
}

void Convert(Element element, const unsigned char* src, size_t n, float* dst) {
  using covattn::detail::GetLE;
  switch (element) {
    case Element::kF32:
      for (size_t i = 0; i < n; ++i) dst[i] = covattn::F32FromBits(uint32_t(GetLE(src + 4 * i, 4)));
      break;
    case Element::kF16:
      for (size_t i = 0; i < n; ++i)
        dst[i] = covattn::F32FromF16Bits(uint16_t(GetLE(src + 2 * i, 2)));
      break;
    case Element::kBF16:
      for (size_t i = 0; i < n; ++i)
        dst[i] = covattn::F32FromBF16Bits(uint16_t(GetLE(src + 2 * i, 2)));
      break;
    case Element::kF64:
      for (size_t i = 0; i < n; ++i) {
        const uint64_t bits = GetLE(src + 8 * i, 8);
        double d;
        std::memcpy(&d, &bits, sizeof(d));
        dst[i] = static_cast<float>(d);
      }
      break;
  }
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

bool ReadExactly(std::FILE* f, unsigned char* dst, size_t n) {
  return n == 0 || std::fread(dst, 1, n, f) == n;
}

// The prefix and the header dictionary, checked against the file's size.
bool ReadHeader(std::FILE* file, uint64_t file_bytes, NpyHeader* out, Failure* failure) {
  unsigned char prefix[12];
  const size_t got = std::fread(prefix, 1, sizeof(prefix), file);
  if (got < sizeof(kMagic) || std::memcmp(prefix, kMagic, sizeof(kMagic)) != 0) {
    *failure = {NpyProblem::kBadMagic, "not a .npy file (it does not start with \\x93NUMPY)"};
    return false;
  }
  if (got < 8) {
    *failure = {NpyProblem::kTruncated, "the file ends inside the format version"};
    return false;
  }
  const unsigned major = prefix[6], minor = prefix[7];
  if (major < 1 || major > 3 || minor != 0) {
    *failure = {NpyProblem::kBadVersion, "format version " + std::to_string(major) + "." +
                                             std::to_string(minor) +
                                             " is not supported (1.0, 2.0 or 3.0)"};
    return false;
  }
  const size_t length_bytes = major == 1 ? 2 : 4;
  if (got < 8 + length_bytes) {
    *failure = {NpyProblem::kTruncated, "the file ends inside the header length"};
    return false;
  }
  const uint64_t header_bytes = covattn::detail::GetLE(prefix + 8, length_bytes);
  const uint64_t data_offset = 8 + length_bytes + header_bytes;
  if (header_bytes > kMaxHeaderBytes) {
    *failure = {NpyProblem::kBadHeader,
                "header length " + std::to_string(header_bytes) + " is absurd"};
    return false;
  }
  if (file_bytes < data_offset) {
    *failure = {NpyProblem::kTruncated, "the file ends inside the header (" +
                                            std::to_string(file_bytes) + " bytes, header needs " +
                                            std::to_string(data_offset) + ")"};
    return false;
  }
  std::vector<char> text(header_bytes);
  if (std::fseek(file, static_cast<long>(8 + length_bytes), SEEK_SET) != 0 ||
      !ReadExactly(file, reinterpret_cast<unsigned char*>(text.data()), text.size())) {
    *failure = {NpyProblem::kOpen, "read error in the header"};
    return false;
  }

  std::string why;
  HeaderParser parser(text.data(), text.data() + text.size());
  if (!parser.ParseDict(&out->descr, &out->structured, &out->fortran_order, &out->shape, &why)) {
    *failure = {NpyProblem::kBadHeader, "malformed header: " + why};
    return false;
  }
  out->data_offset = data_offset;
  return true;
}

bool Read(const std::string& path, const NpyReadOptions& options, NpyArray* array,
          Failure* failure) {
  struct stat info;
  if (::stat(path.c_str(), &info) != 0) {
    *failure = {NpyProblem::kOpen, std::string("cannot open: ") + std::strerror(errno)};
    return false;
  }
  if (!S_ISREG(info.st_mode)) {
    *failure = {NpyProblem::kOpen, "not a regular file"};
    return false;
  }
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) {
    *failure = {NpyProblem::kOpen, std::string("cannot open: ") + std::strerror(errno)};
    return false;
  }
  const uint64_t file_size = static_cast<uint64_t>(info.st_size);

  NpyHeader header;
  if (!ReadHeader(file.get(), file_size, &header, failure)) return false;
  const std::string& descr = header.descr;
  const std::vector<size_t>& shape = header.shape;
  const bool fortran = header.fortran_order;
  const uint64_t data_offset = header.data_offset;
  Element element;
  if (!ParseDescr(descr, header.structured, options, &element, failure)) return false;
  size_t non_trivial = 0;
  uint64_t count = 1;
  for (size_t extent : shape) {
    non_trivial += extent > 1;
    if (extent != 0 && count > options.max_elements / extent) {
      *failure = {NpyProblem::kTooLarge, "shape " + ShapeString(shape) + " is too large"};
      return false;
    }
    count *= extent;
  }
  if (count > options.max_elements) {
    *failure = {NpyProblem::kTooLarge, "shape " + ShapeString(shape) + " is too large"};
    return false;
  }
  if (fortran && non_trivial > 1) {
    *failure = {NpyProblem::kFortranOrder,
                "Fortran (column-major) order is not supported; save np.ascontiguousarray(x)"};
    return false;
  }
  const size_t elem = ElementBytes(element);
  const uint64_t data_bytes = count * elem;
  const uint64_t have = file_size - data_offset;
  if (have < data_bytes) {
    *failure = {NpyProblem::kTruncated, "truncated: shape " + ShapeString(shape) + " of '" + descr +
                                            "' needs " + std::to_string(data_bytes) +
                                            " bytes of data, the file holds " +
                                            std::to_string(have)};
    return false;
  }
  if (have > data_bytes) {
    *failure = {NpyProblem::kTrailingData, std::to_string(have - data_bytes) +
                                               " unexpected bytes after the data of shape " +
                                               ShapeString(shape)};
    return false;
  }

  std::vector<float> data;
  try {
    data.resize(static_cast<size_t>(count));
  } catch (const std::bad_alloc&) {
    *failure = {NpyProblem::kTooLarge, "not enough memory for shape " + ShapeString(shape)};
    return false;
  }
  constexpr size_t kChunkElements = size_t{1} << 18;
  std::vector<unsigned char> chunk(kChunkElements * elem);
  for (size_t done = 0; done < count;) {
    const size_t n = std::min<size_t>(kChunkElements, static_cast<size_t>(count) - done);
    if (!ReadExactly(file.get(), chunk.data(), n * elem)) {
      *failure = {NpyProblem::kTruncated, "read error or early end of the data"};
      return false;
    }
    Convert(element, chunk.data(), n, data.data() + done);
    done += n;
  }
  array->descr = descr;
  array->shape = shape;
  array->data = std::move(data);
  return true;
}

}  // namespace

std::string ShapeString(const std::vector<size_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

bool ReadNpyHeader(std::FILE* file, uint64_t file_bytes, NpyHeader* header, std::string* what) {
  Failure failure{NpyProblem::kNone, ""};
  if (!ReadHeader(file, file_bytes, header, &failure)) {
    *what = failure.what;
    return false;
  }
  header->count = 1;
  for (size_t extent : header->shape) {
    if (extent != 0 && header->count > file_bytes / extent) {
      *what = "impossible shape " + ShapeString(header->shape) + " for a file of " +
              std::to_string(file_bytes) + " bytes";
      return false;
    }
    header->count *= extent;
  }
  if (header->structured) {
    *what = "structured dtypes are not supported";
    return false;
  }
  return true;
}

bool NpyF32Writer::Open(const std::string& path, const std::vector<size_t>& shape,
                        std::string* error) {
  path_ = path;
  expected_ = 1;
  for (size_t extent : shape) expected_ *= extent;
  written_ = 0;
  std::string dict =
      "{'descr': '<f4', 'fortran_order': False, 'shape': " + ShapeString(shape) + ", }";
  // Padded with spaces and a newline so that the data starts at a multiple of 64.
  const size_t prefix = 10;
  while ((prefix + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string bytes(reinterpret_cast<const char*>(kMagic), sizeof(kMagic));
  bytes += '\x01';
  bytes += '\x00';
  bytes += static_cast<char>(dict.size() & 0xFF);
  bytes += static_cast<char>(dict.size() >> 8);
  bytes += dict;
  file_.reset(std::fopen(path.c_str(), "wb"));
  if (!file_ || std::fwrite(bytes.data(), 1, bytes.size(), file_.get()) != bytes.size()) {
    *error = path + ": cannot write: " + std::strerror(errno);
    file_.reset();
    return false;
  }
  return true;
}

bool NpyF32Writer::Append(const float* values, size_t n, std::string* error) {
  buffer_.resize(4 * n);
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], 4);
    for (size_t b = 0; b < 4; ++b) buffer_[4 * i + b] = static_cast<uint8_t>(bits >> (8 * b));
  }
  if (!file_ || written_ + n > expected_ ||
      std::fwrite(buffer_.data(), 1, buffer_.size(), file_.get()) != buffer_.size()) {
    *error = path_ + ": cannot write" + (file_ ? ": " + std::string(std::strerror(errno)) : "");
    return false;
  }
  written_ += n;
  return true;
}

bool NpyF32Writer::Close(std::string* error) {
  const bool complete = written_ == expected_;
  const bool closed = file_ && std::fclose(file_.release()) == 0;
  if (!complete || !closed) {
    *error = path_ + (complete ? ": cannot close the file" : ": incomplete array");
    return false;
  }
  return true;
}

bool ReadNpy(const std::string& path, const NpyReadOptions& options, NpyArray* array,
             NpyError* error) {
  *array = NpyArray();
  Failure failure{NpyProblem::kNone, ""};
  if (Read(path, options, array, &failure)) {
    *error = NpyError();
    return true;
  }
  *array = NpyArray();
  error->problem = failure.problem;
  error->message = path + ": " + failure.what;
  return false;
}

}  // namespace covattn_compare
