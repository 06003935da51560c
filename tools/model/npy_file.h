// The two pieces of the NumPy .npy format the model evaluation needs beyond
// tools/compare/npy.h (which reads float arrays only): the header of an
// integer array (token files), and a streaming writer of float32 arrays (the
// --dump-qkv files, read back by covattn-compare --qkv). Format: numpy's
// numpy/lib/format.py (versions 1.0, 2.0, 3.0; little-endian, C order).
#ifndef COVATTN_TOOLS_MODEL_NPY_FILE_H_
#define COVATTN_TOOLS_MODEL_NPY_FILE_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace covattn_model {

struct NpyHeader {
  std::string descr;  // e.g. "<i4"
  bool fortran_order = false;
  std::vector<size_t> shape;
  uint64_t count = 0;        // elements (product of the shape)
  uint64_t data_offset = 0;  // bytes before the data
};

// Reads the header at the start of `file` (of file_bytes bytes). False with a
// message (without the file name) for a file that is not .npy, an unknown
// version, a header that does not parse, or a shape whose element count
// exceeds the file's size.
bool ReadNpyHeader(std::FILE* file, uint64_t file_bytes, NpyHeader* header, std::string* what);

// "(3, 4, 5)" as numpy prints shapes.
std::string NpyShapeString(const std::vector<size_t>& shape);

// Writes one float32 array of a known shape, row by row.
class NpyF32Writer {
 public:
  // Creates the file and writes its header.
  bool Open(const std::string& path, const std::vector<size_t>& shape, std::string* error);
  // Appends n values (little-endian).
  bool Append(const float* values, size_t n, std::string* error);
  // Checks that the shape's every element was written, and closes.
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

}  // namespace covattn_model

#endif  // COVATTN_TOOLS_MODEL_NPY_FILE_H_
