// A small, defensive reader of NumPy .npy files (format versions 1.0, 2.0 and
// 3.0): little-endian float32, float16, float64, and bfloat16 stored as
// uint16, C order. Everything the header claims is checked against the file
// before any data is trusted; every problem is reported as a message naming
// the file, never by crashing. The format is specified in numpy's
// numpy/lib/format.py ("NEP 1").
#ifndef COVATTN_TOOLS_COMPARE_NPY_H_
#define COVATTN_TOOLS_COMPARE_NPY_H_

#include <cstddef>
#include <cstdint>
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
  // headers before allocating).
  uint64_t max_elements = uint64_t{1} << 34;
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

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_NPY_H_
