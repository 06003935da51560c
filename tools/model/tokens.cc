#include "tokens.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>

#include "npy.h"

namespace covattn_model {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

// Where the tokens of a file are: the data offset, bytes per token, count.
struct TokenLayout {
  uint64_t data_offset = 0;
  size_t token_bytes = 1;
  uint64_t count = 0;
};

bool OpenTokens(const std::string& path, TokenFormat format, File* file, TokenLayout* layout,
                std::string* what) {
  struct stat info;
  if (::stat(path.c_str(), &info) != 0) {
    *what = std::string("cannot open: ") + std::strerror(errno);
    return false;
  }
  if (!S_ISREG(info.st_mode)) {
    *what = "not a regular file";
    return false;
  }
  file->reset(std::fopen(path.c_str(), "rb"));
  if (!*file) {
    *what = std::string("cannot open: ") + std::strerror(errno);
    return false;
  }
  const uint64_t file_bytes = static_cast<uint64_t>(info.st_size);
  if (format == TokenFormat::kBytes) {
    *layout = TokenLayout{0, 1, file_bytes};
    return true;
  }
  covattn_compare::NpyHeader header;
  if (!covattn_compare::ReadNpyHeader(file->get(), file_bytes, &header, what)) return false;
  if (header.descr != "<i4" && header.descr != "<i8") {
    *what = "dtype '" + header.descr +
            "' is not a token type; expected int32 '<i4' or int64 "
            "'<i8' (a raw byte file needs the bytes format)";
    return false;
  }
  size_t long_axes = 0;
  for (size_t extent : header.shape) long_axes += extent > 1;
  if (long_axes > 1) {
    *what = "shape " + covattn_compare::ShapeString(header.shape) +
            " is not a token sequence (one axis)";
    return false;
  }
  layout->data_offset = header.data_offset;
  layout->token_bytes = header.descr == "<i4" ? 4 : 8;
  layout->count = header.count;
  const uint64_t data_bytes = file_bytes - header.data_offset;
  if (data_bytes != layout->count * layout->token_bytes) {
    *what = (data_bytes < layout->count * layout->token_bytes ? "truncated: shape "
                                                              : "size mismatch: shape ") +
            covattn_compare::ShapeString(header.shape) + " of '" + header.descr + "' needs " +
            std::to_string(layout->count * layout->token_bytes) +
            " bytes of data, the file holds " + std::to_string(data_bytes);
    return false;
  }
  return true;
}

std::string OutsideVocabulary(int64_t id, uint64_t position, size_t vocab_size) {
  return "token " + std::to_string(id) + " at position " + std::to_string(position) +
         " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")";
}

int64_t DecodeToken(const uint8_t* p, size_t bytes) {
  if (bytes == 1) return p[0];
  uint64_t u = 0;
  for (size_t i = 0; i < bytes; ++i) u |= uint64_t{p[i]} << (8 * i);
  if (bytes == 4) return static_cast<int32_t>(static_cast<uint32_t>(u));
  int64_t s;
  std::memcpy(&s, &u, 8);
  return s;
}

}  // namespace

bool CountTokens(const std::string& path, TokenFormat format, size_t* count, std::string* error) {
  File file;
  TokenLayout layout;
  std::string what;
  if (!OpenTokens(path, format, &file, &layout, &what)) {
    *error = path + ": " + what;
    return false;
  }
  *count = static_cast<size_t>(layout.count);
  return true;
}

bool ReadTokens(const std::string& path, TokenFormat format, const TokenWindow& window,
                size_t vocab_size, std::vector<int32_t>* tokens, std::string* error) {
  tokens->clear();
  File file;
  TokenLayout layout;
  std::string what;
  auto fail = [&](const std::string& w) {
    *error = path + ": " + w;
    tokens->clear();
    return false;
  };
  if (!OpenTokens(path, format, &file, &layout, &what)) return fail(what);
  if (window.offset >= layout.count) {
    return fail("no tokens from offset " + std::to_string(window.offset) + " (the file holds " +
                std::to_string(layout.count) + ")");
  }
  uint64_t n = layout.count - window.offset;
  if (window.max_tokens != 0 && window.max_tokens < n) n = window.max_tokens;
  std::vector<uint8_t> raw;
  try {
    raw.resize(static_cast<size_t>(n * layout.token_bytes));
    tokens->reserve(static_cast<size_t>(n));
  } catch (const std::bad_alloc&) {
    return fail("not enough memory for " + std::to_string(n) + " tokens");
  }
  const uint64_t start = layout.data_offset + window.offset * layout.token_bytes;
  if (std::fseek(file.get(), static_cast<long>(start), SEEK_SET) != 0 ||
      std::fread(raw.data(), 1, raw.size(), file.get()) != raw.size()) {
    return fail("read error in the tokens");
  }
  for (uint64_t i = 0; i < n; ++i) {
    const int64_t id = DecodeToken(raw.data() + i * layout.token_bytes, layout.token_bytes);
    if (id < 0 || static_cast<uint64_t>(id) >= vocab_size) {
      return fail(OutsideVocabulary(id, window.offset + i, vocab_size));
    }
    tokens->push_back(static_cast<int32_t>(id));
  }
  return true;
}

bool CheckTokens(const std::vector<int32_t>& tokens, size_t vocab_size, const std::string& source,
                 size_t first_position, std::string* error) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || static_cast<size_t>(tokens[i]) >= vocab_size) {
      *error = source + ": " + OutsideVocabulary(tokens[i], first_position + i, vocab_size);
      return false;
    }
  }
  return true;
}

}  // namespace covattn_model
