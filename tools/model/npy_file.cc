#include "npy_file.h"

#include <cerrno>
#include <cstring>

namespace covattn_model {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicBytes = 6;
// numpy writes headers of a few hundred bytes; longer ones are not .npy.
constexpr uint64_t kMaxHeaderBytes = 1 << 16;

// The text after "'key':" in a header dictionary (spaces skipped), or NULL.
const char* ValueOf(const std::string& dict, const char* key) {
  for (const char quote : {'\'', '"'}) {
    const std::string quoted = std::string(1, quote) + key + quote;
    size_t at = dict.find(quoted);
    if (at == std::string::npos) continue;
    at += quoted.size();
    while (at < dict.size() && dict[at] == ' ') ++at;
    if (at >= dict.size() || dict[at] != ':') return nullptr;
    ++at;
    while (at < dict.size() && dict[at] == ' ') ++at;
    return dict.c_str() + at;
  }
  return nullptr;
}

bool ParseDescr(const char* p, std::string* descr) {
  if (p == nullptr || (*p != '\'' && *p != '"')) return false;
  const char* end = std::strchr(p + 1, *p);
  if (end == nullptr) return false;
  descr->assign(p + 1, end);
  return true;
}

// "(3, 4)", "(7,)" or "()" into extents, each checked against `limit` so the
// product cannot overflow.
bool ParseShape(const char* p, uint64_t limit, std::vector<size_t>* shape, uint64_t* count) {
  if (p == nullptr || *p++ != '(') return false;
  shape->clear();
  *count = 1;
  for (;;) {
    while (*p == ' ') ++p;
    if (*p == ')') return true;
    if (*p < '0' || *p > '9') return false;
    uint64_t x = 0;
    while (*p >= '0' && *p <= '9') {
      const uint64_t digit = static_cast<uint64_t>(*p++ - '0');
      if (digit > limit || x > (limit - digit) / 10) return false;
      x = x * 10 + digit;
    }
    if (*p == 'L') ++p;  // Python 2 long literals
    if (x != 0 && *count > limit / x) return false;
    *count *= x;
    shape->push_back(static_cast<size_t>(x));
    while (*p == ' ') ++p;
    if (*p == ',')
      ++p;
    else if (*p != ')')
      return false;
  }
}

void PutLE(uint8_t* p, uint64_t value, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(value >> (8 * i));
}

}  // namespace

std::string NpyShapeString(const std::vector<size_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

bool ReadNpyHeader(std::FILE* file, uint64_t file_bytes, NpyHeader* header, std::string* what) {
  uint8_t prefix[12] = {};
  const size_t got = std::fread(prefix, 1, sizeof(prefix), file);
  if (got < kMagicBytes || std::memcmp(prefix, kMagic, kMagicBytes) != 0) {
    *what = "not a .npy file (it does not start with \\x93NUMPY)";
    return false;
  }
  const unsigned major = prefix[6], minor = prefix[7];
  if (got < 10 || major < 1 || major > 3 || minor != 0) {
    *what = got < 10 ? "truncated inside the .npy prefix"
                     : "format version " + std::to_string(major) + "." + std::to_string(minor) +
                           " is not supported (1.0, 2.0 or 3.0)";
    return false;
  }
  const size_t length_bytes = major == 1 ? 2 : 4;
  if (got < 8 + length_bytes) {
    *what = "truncated inside the .npy prefix";
    return false;
  }
  uint64_t header_bytes = 0;
  for (size_t i = 0; i < length_bytes; ++i) header_bytes |= uint64_t{prefix[8 + i]} << (8 * i);
  const uint64_t data_offset = 8 + length_bytes + header_bytes;
  if (header_bytes > kMaxHeaderBytes || data_offset > file_bytes) {
    *what = "header length " + std::to_string(header_bytes) +
            (header_bytes > kMaxHeaderBytes ? " is absurd" : " runs past the end of the file");
    return false;
  }
  std::string dict(static_cast<size_t>(header_bytes), '\0');
  if (std::fseek(file, static_cast<long>(8 + length_bytes), SEEK_SET) != 0 ||
      std::fread(&dict[0], 1, dict.size(), file) != dict.size()) {
    *what = "read error in the header";
    return false;
  }
  const char* fortran = ValueOf(dict, "fortran_order");
  if (!ParseDescr(ValueOf(dict, "descr"), &header->descr) || fortran == nullptr ||
      (std::strncmp(fortran, "True", 4) != 0 && std::strncmp(fortran, "False", 5) != 0)) {
    *what = "malformed header: " + dict.substr(0, dict.find('\n'));
    return false;
  }
  header->fortran_order = fortran[0] == 'T';
  if (!ParseShape(ValueOf(dict, "shape"), file_bytes, &header->shape, &header->count)) {
    *what = "malformed or impossible shape in the header: " + dict.substr(0, dict.find('\n'));
    return false;
  }
  header->data_offset = data_offset;
  return true;
}

bool NpyF32Writer::Open(const std::string& path, const std::vector<size_t>& shape,
                        std::string* error) {
  path_ = path;
  expected_ = 1;
  for (size_t extent : shape) expected_ *= extent;
  written_ = 0;
  std::string dict =
      "{'descr': '<f4', 'fortran_order': False, 'shape': " + NpyShapeString(shape) + ", }";
  // Padded with spaces and a newline so the data starts at a multiple of 64.
  const size_t prefix = 10;
  while ((prefix + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string bytes(kMagic, kMagicBytes);
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
    PutLE(buffer_.data() + 4 * i, bits, 4);
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

}  // namespace covattn_model
