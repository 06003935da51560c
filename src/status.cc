// Status strings and the library version.
#include "covattn/covattn.h"

#define COVATTN_STRINGIFY_(x) #x
#define COVATTN_STRINGIFY(x) COVATTN_STRINGIFY_(x)

extern "C" {

const char* covattn_status_string(covattn_status status) {
  switch (status) {
    case COVATTN_OK:
      return "ok";
    case COVATTN_FULLY_MASKED:
      return "ok, but some query rows saw no visible token (their output is zero)";
    case COVATTN_ERR_NULL_POINTER:
      return "a required pointer is NULL";
    case COVATTN_ERR_UNSUPPORTED_DTYPE:
      return "unsupported element type";
    case COVATTN_ERR_INVALID_HEAD_DIM:
      return "head_dim must be between 1 and COVATTN_MAX_HEAD_DIM";
    case COVATTN_ERR_INVALID_HEAD_COUNT:
      return "a head count is zero";
    case COVATTN_ERR_HEAD_MISMATCH:
      return "the number of query heads is not a multiple of the number of KV heads";
    case COVATTN_ERR_INVALID_STRIDE:
      return "strides make two vectors of a tensor overlap";
    case COVATTN_ERR_SIZE_OVERFLOW:
      return "a size or extent overflows";
    case COVATTN_ERR_MISALIGNED:
      return "a pointer is not aligned to its element size";
    case COVATTN_ERR_ALIASING:
      return "an output buffer overlaps an input or another output";
    case COVATTN_ERR_INVALID_SCALE:
      return "scale is NaN or infinite";
    case COVATTN_ERR_INVALID_POSITION:
      return "query positions lie beyond the end of the cache";
    case COVATTN_ERR_INVALID_RANGE:
      return "token range is reversed or beyond the end of the cache";
    case COVATTN_ERR_SCRATCH_TOO_SMALL:
      return "scratch memory is missing or smaller than required";
    case COVATTN_ERR_NONFINITE:
      return "the result is not finite (NaN or infinite inputs, or overflow)";
    case COVATTN_ERR_UNKNOWN_TARGET:
      return "unknown target name";
    case COVATTN_ERR_TARGET_UNAVAILABLE:
      return "none of the named targets is available on this CPU";
    case COVATTN_ERR_EMPTY_STATE:
      return "the state has seen no token";
    case COVATTN_ERR_SHAPE_MISMATCH:
      return "head count, head_dim or settings do not match";
    case COVATTN_ERR_INVALID_FORGETTING:
      return "forgetting factor must be in (0, 1]";
    case COVATTN_ERR_OUT_OF_MEMORY:
      return "out of memory";
    case COVATTN_ERR_BUFFER_TOO_SMALL:
      return "buffer too small";
    case COVATTN_ERR_TRUNCATED:
      return "serialized data is truncated";
    case COVATTN_ERR_BAD_MAGIC:
      return "serialized data is not a covattn object of this kind";
    case COVATTN_ERR_VERSION:
      return "unsupported serialized format version";
    case COVATTN_ERR_CHECKSUM:
      return "serialized data fails its checksum";
    case COVATTN_ERR_CORRUPT:
      return "serialized data is inconsistent or not finite";
    case COVATTN_ERR_INVALID_BUDGET:
      return "invalid cache budget";
    case COVATTN_ERR_INVALID_THREAD_POOL:
      return "invalid thread pool, or a pool that did not run every task as asked";
  }
  return "unknown status";
}

const char* covattn_version(void) {
  return COVATTN_STRINGIFY(COVATTN_VERSION_MAJOR) "." COVATTN_STRINGIFY(
      COVATTN_VERSION_MINOR) "." COVATTN_STRINGIFY(COVATTN_VERSION_PATCH);
}

uint32_t covattn_version_number(void) { return COVATTN_VERSION_NUMBER; }

}  // extern "C"
