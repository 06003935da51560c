// Token sequences for the model evaluation: read from a NumPy .npy file of
// int32 or int64 (any shape with at most one extent above 1, C order), or
// from a raw file whose every byte is one token (byte-level models), with a
// window [offset, offset + max_tokens) of the file. Every token is checked
// against the vocabulary; problems are messages naming the file (and the
// position of a bad token in it).
#ifndef COVATTN_TOOLS_MODEL_TOKENS_H_
#define COVATTN_TOOLS_MODEL_TOKENS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace covattn_model {

enum class TokenFormat { kNpy, kBytes };

struct TokenWindow {
  size_t offset = 0;      // first token of the file used
  size_t max_tokens = 0;  // 0: every token from offset on
};

// Reads the window's tokens; only that part of the file is read. An empty
// window (offset at or past the end) is an error.
bool ReadTokens(const std::string& path, TokenFormat format, const TokenWindow& window,
                size_t vocab_size, std::vector<int32_t>* tokens, std::string* error);

// The number of tokens in a file (for cutting windows), checked like
// ReadTokens' header.
bool CountTokens(const std::string& path, TokenFormat format, size_t* count, std::string* error);

// False with "<source>: token <id> at position <first_position + i> is outside
// the vocabulary [0, vocab_size)" for the first bad token.
bool CheckTokens(const std::vector<int32_t>& tokens, size_t vocab_size, const std::string& source,
                 size_t first_position, std::string* error);

}  // namespace covattn_model

#endif  // COVATTN_TOOLS_MODEL_TOKENS_H_
