#include "validate.h"

#include <algorithm>

namespace covattn {
namespace detail {

size_t DtypeSize(uint32_t dtype) {
  switch (dtype) {
    case COVATTN_F32:
      return 4;
    case COVATTN_F16:
    case COVATTN_BF16:
      return 2;
    default:
      return 0;
  }
}

size_t KvElementSize(uint32_t dtype) { return dtype == COVATTN_INT8 ? 1 : DtypeSize(dtype); }

covattn_status CheckTensor(const void* base, size_t elem_size, size_t n_outer, size_t outer_stride,
                           size_t n_inner, size_t inner_stride, size_t dim, Extent* extent) {
  *extent = Extent{};
  if (n_outer == 0 || n_inner == 0 || dim == 0) return COVATTN_OK;
  if (base == nullptr) return COVATTN_ERR_NULL_POINTER;
  if (reinterpret_cast<uintptr_t>(base) % elem_size != 0) return COVATTN_ERR_MISALIGNED;

  // Vectors do not overlap when, taking the strides of the dimensions with
  // more than one vector from small to large, each stride steps over the
  // whole block spanned by the smaller ones.
  struct Axis {
    size_t count, stride;
  } axes[2] = {{n_outer, outer_stride}, {n_inner, inner_stride}};
  if (axes[0].stride > axes[1].stride) std::swap(axes[0], axes[1]);
  size_t span = dim;  // elements spanned by the axes handled so far
  for (const Axis& axis : axes) {
    if (axis.count == 1) continue;
    if (axis.stride < span) return COVATTN_ERR_INVALID_STRIDE;
    size_t reach;
    if (MulOverflows(axis.count - 1, axis.stride, &reach) || AddOverflows(reach, span, &span)) {
      return COVATTN_ERR_SIZE_OVERFLOW;
    }
  }
  size_t bytes;
  if (MulOverflows(span, elem_size, &bytes)) return COVATTN_ERR_SIZE_OVERFLOW;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(base);
  if (bytes > UINTPTR_MAX - begin) return COVATTN_ERR_SIZE_OVERFLOW;
  extent->begin = begin;
  extent->end = begin + bytes;
  return COVATTN_OK;
}

covattn_status MemoryExtent(const void* p, size_t bytes, Extent* extent) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p);
  if (bytes > UINTPTR_MAX - begin) return COVATTN_ERR_SIZE_OVERFLOW;
  *extent = Extent{begin, begin + bytes};
  return COVATTN_OK;
}

covattn_status CheckKvTensors(const covattn_kv_cache& kv, KvExtents* e) {
  *e = KvExtents{};
  const size_t elem = KvElementSize(kv.dtype);
  COVATTN_RETURN_IF_ERROR(CheckTensor(kv.k, elem, kv.n_tokens, kv.k_token_stride, kv.n_heads,
                                      kv.k_head_stride, kv.head_dim, &e->k));
  COVATTN_RETURN_IF_ERROR(CheckTensor(kv.v, elem, kv.n_tokens, kv.v_token_stride, kv.n_heads,
                                      kv.v_head_stride, kv.head_dim, &e->v));
  if (kv.dtype != COVATTN_INT8 || kv.n_tokens == 0 || kv.n_heads == 0) return COVATTN_OK;
  const covattn_int8_scales* s = kv.int8_scales;
  if (s == nullptr) return COVATTN_ERR_NULL_POINTER;
  COVATTN_RETURN_IF_ERROR(CheckTensor(s->k_scale, sizeof(float), kv.n_tokens, s->k_token_stride,
                                      kv.n_heads, s->k_head_stride, 1, &e->k_scale));
  return CheckTensor(s->v_scale, sizeof(float), kv.n_tokens, s->v_token_stride, kv.n_heads,
                     s->v_head_stride, 1, &e->v_scale);
}

covattn_status CheckKvBlock(const covattn_kv_cache* block, size_t n_heads, size_t head_dim,
                            const Extent& object, KvExtents* extents, bool int8_ok) {
  if (block == nullptr) return COVATTN_ERR_NULL_POINTER;
  const bool int8 = int8_ok && block->dtype == COVATTN_INT8;
  if (!int8 && DtypeSize(block->dtype) == 0) return COVATTN_ERR_UNSUPPORTED_DTYPE;
  if (block->n_heads != n_heads || block->head_dim != head_dim) {
    return COVATTN_ERR_SHAPE_MISMATCH;
  }
  COVATTN_RETURN_IF_ERROR(CheckKvTensors(*block, extents));
  return extents->Overlaps(object) ? COVATTN_ERR_ALIASING : COVATTN_OK;
}

}  // namespace detail
}  // namespace covattn
