// C entry points of exact attention: argument validation, then one dispatch
// into the per-target kernel (attention_kernels.cc).

#include "attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention_threads.h"
#include "covattn/covattn.h"
#include "online_softmax.h"
#include "partial_state.h"
#include "validate.h"

namespace covattn {
namespace detail {
namespace {

// Extents of everything a call reads, to check outputs against.
struct InputExtents {
  KvExtents kv;
  Extent q;
  bool Overlap(const Extent& e) const { return kv.Overlaps(e) || e.Overlaps(q); }
};

covattn_status CheckHeadDim(size_t head_dim) {
  return (head_dim == 0 || head_dim > COVATTN_MAX_HEAD_DIM) ? COVATTN_ERR_INVALID_HEAD_DIM
                                                            : COVATTN_OK;
}

// Validates everything but the destination and fills `pb`, `inputs` and
// `pool` (NULL: the calling thread). check_position is false only for decode
// on an empty cache, whose single query sits at position 0 of a cache
// without tokens.
covattn_status ValidateProblem(const covattn_kv_cache* kv, const covattn_queries* q, size_t n_past,
                               const covattn_attention_options* options, bool check_position,
                               AttentionProblem* pb, InputExtents* inputs,
                               const covattn_thread_pool** pool) {
  if (kv == nullptr || q == nullptr) return COVATTN_ERR_NULL_POINTER;
  if (KvElementSize(kv->dtype) == 0) return COVATTN_ERR_UNSUPPORTED_DTYPE;
  if (CheckHeadDim(kv->head_dim) != COVATTN_OK) return COVATTN_ERR_INVALID_HEAD_DIM;
  if (kv->n_heads == 0 || q->n_heads == 0) return COVATTN_ERR_INVALID_HEAD_COUNT;
  if (q->n_heads % kv->n_heads != 0) return COVATTN_ERR_HEAD_MISMATCH;
  float scale = 1.0f / std::sqrt(static_cast<float>(kv->head_dim));
  size_t window = 0, n_sinks = 0;
  *pool = nullptr;
  if (options != nullptr) {
    if (!std::isfinite(options->scale)) return COVATTN_ERR_INVALID_SCALE;
    if (options->scale != 0.0f) scale = options->scale;
    window = options->window;
    n_sinks = options->n_sinks;
    *pool = options->threads;
    if (*pool != nullptr && ((*pool)->parallel_for == nullptr || (*pool)->n_threads == 0)) {
      return COVATTN_ERR_INVALID_THREAD_POOL;
    }
  }
  size_t positions_end;
  if (check_position &&
      (AddOverflows(n_past, q->n_tokens, &positions_end) || positions_end > kv->n_tokens)) {
    return COVATTN_ERR_INVALID_POSITION;
  }
  COVATTN_RETURN_IF_ERROR(CheckKvTensors(*kv, &inputs->kv));
  COVATTN_RETURN_IF_ERROR(CheckTensor(q->data, sizeof(float), q->n_tokens, q->token_stride,
                                      q->n_heads, q->head_stride, kv->head_dim, &inputs->q));
  *pb = AttentionProblem{kv->dtype,
                         kv->k,
                         kv->v,
                         kv->k_token_stride,
                         kv->k_head_stride,
                         kv->v_token_stride,
                         kv->v_head_stride,
                         kv->n_heads,
                         kv->head_dim,
                         q->data,
                         q->n_tokens,
                         q->n_heads,
                         q->token_stride,
                         q->head_stride,
                         n_past,
                         scale,
                         window,
                         n_sinks,
                         0,
                         kv->n_tokens,
                         kv->dtype == COVATTN_INT8 ? kv->int8_scales : nullptr};
  return COVATTN_OK;
}

// The scratch of a call on the calling thread (pool NULL) or over a pool.
covattn_status CheckScratch(size_t head_dim, const covattn_thread_pool* pool, const void* scratch,
                            size_t scratch_bytes, Extent* extent) {
  size_t required = AttentionScratchBytes(head_dim);
  if (pool != nullptr && !ThreadedScratchBytes(head_dim, pool->n_threads, &required)) {
    return COVATTN_ERR_SCRATCH_TOO_SMALL;  // no memory is that large
  }
  if (scratch == nullptr || scratch_bytes < required) return COVATTN_ERR_SCRATCH_TOO_SMALL;
  return MemoryExtent(scratch, scratch_bytes, extent);
}

// Runs a validated problem on the calling thread or over the pool.
covattn_status Run(const AttentionProblem& pb, const AttentionResultSink& sink,
                   const covattn_thread_pool* pool, void* scratch, AttentionOutcome* outcome) {
  if (pool == nullptr) {
    RunAttention(pb, sink, scratch, outcome);
    return COVATTN_OK;
  }
  return RunAttentionThreaded(pb, sink, *pool, scratch, outcome) ? COVATTN_OK
                                                                 : COVATTN_ERR_INVALID_THREAD_POOL;
}

covattn_status Finish(const AttentionOutcome& outcome) {
  if (outcome.nonfinite) return COVATTN_ERR_NONFINITE;
  return outcome.fully_masked ? COVATTN_FULLY_MASKED : COVATTN_OK;
}

// n_rows contiguous f32 rows of row_elems elements.
covattn_status CheckRows(const float* p, size_t n_rows, size_t row_elems, Extent* extent) {
  return CheckTensor(p, sizeof(float), n_rows, row_elems, 1, 0, row_elems, extent);
}

// Checks a partial state of n_rows rows: three disjoint f32 arrays.
covattn_status CheckPartial(const covattn_partial* state, size_t n_rows, size_t head_dim,
                            Extent extents[3]) {
  if (state == nullptr) return COVATTN_ERR_NULL_POINTER;
  COVATTN_RETURN_IF_ERROR(CheckRows(state->m, n_rows, 1, &extents[0]));
  COVATTN_RETURN_IF_ERROR(CheckRows(state->l, n_rows, 1, &extents[1]));
  COVATTN_RETURN_IF_ERROR(CheckRows(state->o, n_rows, head_dim, &extents[2]));
  if (extents[0].Overlaps(extents[1]) || extents[0].Overlaps(extents[2]) ||
      extents[1].Overlaps(extents[2])) {
    return COVATTN_ERR_ALIASING;
  }
  return COVATTN_OK;
}

bool PartialRowsFinite(const covattn_partial& s, size_t n_rows, size_t head_dim) {
  for (size_t r = 0; r < n_rows; ++r) {
    if (!std::isfinite(s.m[r]) || !std::isfinite(s.l[r])) return false;
  }
  for (size_t i = 0; i < n_rows * head_dim; ++i) {
    if (!std::isfinite(s.o[i])) return false;
  }
  return true;
}

// covattn_prefill, and covattn_decode through it. empty_cache_decode: the
// query of a decode call on an empty cache, validated like any other and
// answered with zeros (it sees no token).
covattn_status Prefill(const covattn_kv_cache* kv, const covattn_queries* q, size_t n_past,
                       const covattn_attention_options* options, const covattn_outputs* out,
                       void* scratch, size_t scratch_bytes, bool empty_cache_decode) {
  if (out == nullptr) return COVATTN_ERR_NULL_POINTER;
  AttentionProblem pb;
  InputExtents inputs;
  const covattn_thread_pool* pool;
  COVATTN_RETURN_IF_ERROR(
      ValidateProblem(kv, q, n_past, options, !empty_cache_decode, &pb, &inputs, &pool));
  Extent out_extent, log_z_extent, scratch_extent;
  COVATTN_RETURN_IF_ERROR(CheckTensor(out->data, sizeof(float), q->n_tokens, out->token_stride,
                                      q->n_heads, out->head_stride, kv->head_dim, &out_extent));
  if (out->log_z != nullptr) {
    COVATTN_RETURN_IF_ERROR(CheckTensor(out->log_z, sizeof(float), q->n_tokens, q->n_heads,
                                        q->n_heads, 1, 1, &log_z_extent));
  }
  COVATTN_RETURN_IF_ERROR(
      CheckScratch(kv->head_dim, pool, scratch, scratch_bytes, &scratch_extent));
  if (inputs.Overlap(out_extent) || inputs.Overlap(log_z_extent) ||
      inputs.Overlap(scratch_extent) || out_extent.Overlaps(log_z_extent) ||
      out_extent.Overlaps(scratch_extent) || log_z_extent.Overlaps(scratch_extent)) {
    return COVATTN_ERR_ALIASING;
  }
  if (q->n_tokens == 0) return COVATTN_OK;
  if (empty_cache_decode) {
    std::fill(out->data, out->data + q->n_heads * kv->head_dim, 0.0f);
    return COVATTN_FULLY_MASKED;
  }
  AttentionResultSink sink{out->data, out->token_stride, out->head_stride, out->log_z,
                           nullptr,   nullptr,           nullptr};
  AttentionOutcome outcome{false, false};
  COVATTN_RETURN_IF_ERROR(Run(pb, sink, pool, scratch, &outcome));
  return Finish(outcome);
}

}  // namespace

bool MergePartialRows(size_t n_rows, size_t head_dim, const covattn_partial& into,
                      const covattn_partial& other) {
  // Refuse non-finite states, and merges whose result would overflow, before
  // touching `into`. The first pass computes exactly what the second stores.
  if (!PartialRowsFinite(into, n_rows, head_dim) || !PartialRowsFinite(other, n_rows, head_dim)) {
    return false;
  }
  for (const bool store : {false, true}) {
    for (size_t r = 0; r < n_rows; ++r) {
      const SoftmaxMergeWeights w = MergeWeights(into.m[r], other.m[r]);
      const float l = into.l[r] * w.w_a + other.l[r] * w.w_b;
      if (!store && !std::isfinite(l)) return false;
      float* o = into.o + r * head_dim;
      const float* ob = other.o + r * head_dim;
      for (size_t i = 0; i < head_dim; ++i) {
        const float merged = o[i] * w.w_a + ob[i] * w.w_b;
        if (store) {
          o[i] = merged;
        } else if (!std::isfinite(merged)) {
          return false;
        }
      }
      if (store) {
        into.m[r] = w.m;
        into.l[r] = l;
      }
    }
  }
  return true;
}

}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" {

covattn_status covattn_attention_scratch_size(size_t head_dim, size_t* bytes) {
  if (bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  COVATTN_RETURN_IF_ERROR(CheckHeadDim(head_dim));
  *bytes = AttentionScratchBytes(head_dim);
  return COVATTN_OK;
}

covattn_status covattn_attention_scratch_size_threads(size_t head_dim, size_t n_threads,
                                                      size_t* bytes) {
  if (bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  COVATTN_RETURN_IF_ERROR(CheckHeadDim(head_dim));
  if (n_threads == 0) return COVATTN_ERR_INVALID_THREAD_POOL;
  return ThreadedScratchBytes(head_dim, n_threads, bytes) ? COVATTN_OK : COVATTN_ERR_SIZE_OVERFLOW;
}

covattn_status covattn_prefill(const covattn_kv_cache* kv, const covattn_queries* q, size_t n_past,
                               const covattn_attention_options* options, const covattn_outputs* out,
                               void* scratch, size_t scratch_bytes) {
  return Prefill(kv, q, n_past, options, out, scratch, scratch_bytes,
                 /*empty_cache_decode=*/false);
}

covattn_status covattn_decode(const covattn_kv_cache* kv, const float* q, size_t n_q_heads,
                              const covattn_attention_options* options, float* out, void* scratch,
                              size_t scratch_bytes) {
  if (kv == nullptr || q == nullptr || out == nullptr) return COVATTN_ERR_NULL_POINTER;
  // On an empty cache the query sees nothing: zeros and COVATTN_FULLY_MASKED,
  // like any fully masked row, after the same checks as any decode call.
  const bool empty = kv->n_tokens == 0;
  const covattn_queries queries{q, 1, n_q_heads, n_q_heads * kv->head_dim, kv->head_dim};
  const covattn_outputs outputs{out, n_q_heads * kv->head_dim, kv->head_dim, nullptr};
  return Prefill(kv, &queries, empty ? 0 : kv->n_tokens - 1, options, &outputs, scratch,
                 scratch_bytes, empty);
}

covattn_status covattn_prefill_partial(const covattn_kv_cache* kv, const covattn_queries* q,
                                       size_t n_past, const covattn_attention_options* options,
                                       size_t token_begin, size_t token_end,
                                       const covattn_partial* state, void* scratch,
                                       size_t scratch_bytes) {
  if (state == nullptr) return COVATTN_ERR_NULL_POINTER;
  AttentionProblem pb;
  InputExtents inputs;
  const covattn_thread_pool* pool;
  COVATTN_RETURN_IF_ERROR(
      ValidateProblem(kv, q, n_past, options, /*check_position=*/true, &pb, &inputs, &pool));
  if (token_begin > token_end || token_end > kv->n_tokens) return COVATTN_ERR_INVALID_RANGE;
  size_t n_rows;
  if (MulOverflows(q->n_tokens, q->n_heads, &n_rows)) return COVATTN_ERR_SIZE_OVERFLOW;
  Extent state_extents[3], scratch_extent;
  COVATTN_RETURN_IF_ERROR(CheckPartial(state, n_rows, kv->head_dim, state_extents));
  COVATTN_RETURN_IF_ERROR(
      CheckScratch(kv->head_dim, pool, scratch, scratch_bytes, &scratch_extent));
  for (const Extent& e : state_extents) {
    if (inputs.Overlap(e) || e.Overlaps(scratch_extent)) return COVATTN_ERR_ALIASING;
  }
  if (inputs.Overlap(scratch_extent)) return COVATTN_ERR_ALIASING;
  if (n_rows == 0) return COVATTN_OK;
  pb.token_begin = token_begin;
  pb.token_end = token_end;
  AttentionResultSink sink{nullptr, 0, 0, nullptr, state->m, state->l, state->o};
  AttentionOutcome outcome{false, false};
  COVATTN_RETURN_IF_ERROR(Run(pb, sink, pool, scratch, &outcome));
  return outcome.nonfinite ? COVATTN_ERR_NONFINITE : COVATTN_OK;
}

covattn_status covattn_partial_merge(size_t n_rows, size_t head_dim, const covattn_partial* into,
                                     const covattn_partial* other) {
  if (into == nullptr || other == nullptr) return COVATTN_ERR_NULL_POINTER;
  COVATTN_RETURN_IF_ERROR(CheckHeadDim(head_dim));
  Extent a[3], b[3];
  COVATTN_RETURN_IF_ERROR(CheckPartial(into, n_rows, head_dim, a));
  COVATTN_RETURN_IF_ERROR(CheckPartial(other, n_rows, head_dim, b));
  for (const Extent& x : a) {
    for (const Extent& y : b) {
      if (x.Overlaps(y)) return COVATTN_ERR_ALIASING;
    }
  }
  // A refused merge leaves `into` as it was.
  return MergePartialRows(n_rows, head_dim, *into, *other) ? COVATTN_OK : COVATTN_ERR_NONFINITE;
}

covattn_status covattn_partial_finalize(size_t n_rows, size_t head_dim,
                                        const covattn_partial* state, float* out, float* log_z) {
  if (state == nullptr || (out == nullptr && n_rows != 0)) return COVATTN_ERR_NULL_POINTER;
  COVATTN_RETURN_IF_ERROR(CheckHeadDim(head_dim));
  Extent s[3], out_extent, log_z_extent;
  COVATTN_RETURN_IF_ERROR(CheckPartial(state, n_rows, head_dim, s));
  COVATTN_RETURN_IF_ERROR(CheckRows(out, n_rows, head_dim, &out_extent));
  if (log_z != nullptr) COVATTN_RETURN_IF_ERROR(CheckRows(log_z, n_rows, 1, &log_z_extent));
  for (const Extent& e : s) {
    if (e.Overlaps(out_extent) || e.Overlaps(log_z_extent)) return COVATTN_ERR_ALIASING;
  }
  if (out_extent.Overlaps(log_z_extent)) return COVATTN_ERR_ALIASING;
  // A state with NaN or infinity is refused before anything is written (an
  // infinite l would otherwise finalize to zeros).
  if (!PartialRowsFinite(*state, n_rows, head_dim)) return COVATTN_ERR_NONFINITE;
  bool masked = false, nonfinite = false;
  for (size_t r = 0; r < n_rows; ++r) {
    const RowOutcome row =
        FinalizeRow(state->m[r], state->l[r], state->o + r * head_dim, head_dim, /*valid=*/true,
                    out + r * head_dim, log_z != nullptr ? log_z + r : nullptr);
    masked |= row == RowOutcome::kMasked;
    nonfinite |= row == RowOutcome::kNonfinite;
  }
  if (nonfinite) return COVATTN_ERR_NONFINITE;
  return masked ? COVATTN_FULLY_MASKED : COVATTN_OK;
}

}  // extern "C"
