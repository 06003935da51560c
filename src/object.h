// What the two stateful objects (covariance state, bounded cache) share: a
// magic that tells a live handle from any other memory, and memory that is
// either the caller's (init) or allocated once by create and freed by
// destroy. Each object has fields `magic` and `allocation`.
#ifndef COVATTN_SRC_OBJECT_H_
#define COVATTN_SRC_OBJECT_H_

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "covattn/covattn.h"

namespace covattn {
namespace detail {

// COVATTN_ERR_NULL_POINTER, COVATTN_ERR_CORRUPT for memory that is not a
// live object of this kind, else COVATTN_OK.
template <class Object>
covattn_status CheckObject(const Object* object, uint64_t magic) {
  if (object == nullptr) return COVATTN_ERR_NULL_POINTER;
  return object->magic == magic ? COVATTN_OK : COVATTN_ERR_CORRUPT;
}

// Allocates `bytes` and makes the object there with init(memory), which
// cannot fail on memory of that size.
template <class Object, class Init>
covattn_status CreateObject(size_t bytes, Init init, Object** object) {
  void* memory = std::malloc(bytes);
  if (memory == nullptr) return COVATTN_ERR_OUT_OF_MEMORY;
  Object* made = init(memory);
  made->allocation = memory;
  *object = made;
  return COVATTN_OK;
}

// Frees an object create made; an object in caller memory stays valid (the
// caller owns and may reuse it), and anything else is left alone.
template <class Object>
void DestroyObject(Object* object, uint64_t magic) {
  if (CheckObject(object, magic) != COVATTN_OK || object->allocation == nullptr) return;
  void* allocation = object->allocation;
  object->magic = 0;
  std::free(allocation);
}

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_OBJECT_H_
