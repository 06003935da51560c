// A small, defensive reader of NumPy .npy files (and the writer of the float32
// arrays covattn-compare --dump-qkv writes) (format versions 1.0, 2.0 and
// 3.0): little-endian float32, float16, float64, and bfloat16 stored as
// uint16, C order. Everything the header claims is checked against the file
// before any data is trusted; every problem is reported as a message naming
// the file, never by crashing. The format is specified in numpy's
// numpy/lib/format.py ("NEP 1").
#ifndef COVATTN_TOOLS_COMPARE_NPY_H_
#define COVATTN_TOOLS_COMPARE_NPY_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace covattn_compare {

// What went wrong, for callers (and tests) that need more than the message.
enum class NpyProblem {
  kNone,
  kOpen,              // cannot open or read the file
  kBadMagic,          // not a .npy file
  kBadVersion,        // format version other than 1.0, 2.0, 3.0
  kBadHeader,         // the header dictionary cannot be parsed or lacks a key
  kUnsupportedDtype,  // descr names a type covattn-compare does not read
  kBigEndian,         // big-endian data
  kFortranOrder,      // column-major data
  kTooLarge,          // the shape's size overflows or exceeds the limit
  kTruncated,         // the file ends before the data the header promises
  kTrailingData,      // bytes after the data
};

struct NpyReadOptions {
  // '<u2' is read as bfloat16 bits when set, refused otherwise (uint16 data
  // is not attention activations unless the user says so).
  bool uint16_as_bf16 = false;
  // Refuse arrays with more elements than this (a guard against absurd
  // headers before allocating): 2^34, or what a 32-bit address space can
  // hold as f32.
  uint64_t max_elements =
      SIZE_MAX / sizeof(float) < (uint64_t{1} << 34) ? SIZE_MAX / sizeof(float) : uint64_t{1} << 34;
};

struct NpyArray {
  std::string descr;          // as in the header, e.g. "<f4"
  std::vector<size_t> shape;  // C order
  std::vector<float> data;    // converted to f32, row-major
};

struct NpyError {
  NpyProblem problem = NpyProblem::kNone;
  std::string message;  // "<path>: <what is wrong>"
};

// Reads a whole file, checking its size against the header before
// allocating. On failure returns false, fills *error and leaves *array empty.
bool ReadNpy(const std::string& path, const NpyReadOptions& options, NpyArray* array,
             NpyError* error);

// "(3, 4, 5)" as numpy prints shapes.
std::string ShapeString(const std::vector<size_t>& shape);

// The header of any .npy file, for readers of other element types (the
// model's token files).
struct NpyHeader {
  std::string descr;        // e.g. "<i4"; empty when structured
  bool structured = false;  // a list of fields, not one type
  bool fortran_order = false;
  std::vector<size_t> shape;
  uint64_t count = 0;        // elements (the shape's product)
  uint64_t data_offset = 0;  // bytes before the data
};

// Reads the header at the start of `file` (of file_bytes bytes). False with
// a message (without the file name) for a file that is not .npy, an unknown
// version, a header that does not parse, a structured dtype, or a shape of
// more elements than the file has bytes.
bool ReadNpyHeader(std::FILE* file, uint64_t file_bytes, NpyHeader* header, std::string* what);

// Writes one float32 array of a known shape (C order, little-endian), row by
// row: the --dump-qkv files.
class NpyF32Writer {
 public:
  // Creates the file and writes its header.
  bool Open(const std::string& path, const std::vector<size_t>& shape, std::string* error);
  // Appends n values.
  bool Append(const float* values, size_t n, std::string* error);
  // Checks that every element of the shape was written, and closes.
  bool Close(std::string* error);

 private:
  struct Closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::string path_;
  std::unique_ptr<std::FILE, Closer> file_;
  uint64_t expected_ = 0, written_ = 0;
  std::vector<uint8_t> buffer_;
};

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_NPY_H_
