// Helpers of the covattn-compare tests: scratch directories, hand-made .npy
// files byte by byte, reading files back.
#ifndef COVATTN_TESTS_COMPARE_TEST_UTIL_H_
#define COVATTN_TESTS_COMPARE_TEST_UTIL_H_

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

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
  for (size_t i = 0; i < length_bytes; ++i) bytes += static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  return bytes + header + data;
}

inline std::string ShapeText(const std::vector<size_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

inline std::string Dict(const std::string& descr, const std::vector<size_t>& shape,
                        bool fortran = false) {
  return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
         ", 'shape': " + ShapeText(shape) + ", }";
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

}  // namespace covattn_compare_test

#endif  // COVATTN_TESTS_COMPARE_TEST_UTIL_H_
