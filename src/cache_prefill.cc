// Prefill through the bounded cache (include/covattn/cache.h, MATH.md
// section 4): a block's query positions attend to the cache as it was before
// the block (the read side of decode, cache_decode.h) and causally to the
// block's own tokens, all merged exactly; then the block is appended as
// covattn_cache_append would. Positions run in tiles (PrefillPositions), so
// the scratch does not grow with the block: per tile one attention call per
// stored segment with every position of the tile, one causal call over the
// block, and the summary's readout per position.

#include <algorithm>
#include <cmath>

#include "cache.h"
#include "cache_decode.h"
#include "online_softmax.h"

namespace covattn {
namespace detail {
namespace {

// Everything covattn_cache_prefill checks after the cache, the pointers and
// the block (whose extents are k and v), in the order of its statuses.
covattn_status CheckPrefill(const covattn_cache* cache, const covattn_kv_cache& block,
                            const Extent& k, const Extent& v, const covattn_queries& q, float scale,
                            const covattn_outputs& out, void* scratch, size_t scratch_bytes) {
  if (q.n_tokens != block.n_tokens) return COVATTN_ERR_SHAPE_MISMATCH;
  ScratchNeeds needs;
  COVATTN_RETURN_IF_ERROR(CacheScratchBytes(cache->config, q.n_heads, &needs));
  if (!std::isfinite(scale)) return COVATTN_ERR_INVALID_SCALE;
  const size_t d = cache->Dim(), n = q.n_tokens;
  Extent inputs[4] = {k, v, {}, CacheExtent(cache)}, outputs[3];  // out, log_z, scratch
  COVATTN_RETURN_IF_ERROR(CheckTensor(q.data, sizeof(float), n, q.token_stride, q.n_heads,
                                      q.head_stride, d, &inputs[2]));
  COVATTN_RETURN_IF_ERROR(CheckTensor(out.data, sizeof(float), n, out.token_stride, q.n_heads,
                                      out.head_stride, d, &outputs[0]));
  if (out.log_z != nullptr) {
    COVATTN_RETURN_IF_ERROR(
        CheckTensor(out.log_z, sizeof(float), n, q.n_heads, q.n_heads, 1, 1, &outputs[1]));
  }
  COVATTN_RETURN_IF_ERROR(CheckScratch(scratch, scratch_bytes, needs.prefill, &outputs[2]));
  for (int i = 0; i < 3; ++i) {
    for (const Extent& input : inputs) {
      if (outputs[i].Overlaps(input)) return COVATTN_ERR_ALIASING;
    }
    for (int j = i + 1; j < 3; ++j) {
      if (outputs[i].Overlaps(outputs[j])) return COVATTN_ERR_ALIASING;
    }
  }
  return CheckAppendCount(cache, block);
}

bool QueriesFinite(const covattn_queries& q, size_t d) {
  for (size_t t = 0; t < q.n_tokens; ++t) {
    for (size_t h = 0; h < q.n_heads; ++h) {
      const float* row = q.data + t * q.token_stride + h * q.head_stride;
      if (!std::all_of(row, row + d, [](float x) { return std::isfinite(x); })) return false;
    }
  }
  return true;
}

// The block's tokens [0, t1) for the positions from t0 on: causal.
Segment CausalBlock(const covattn_kv_cache& block, size_t t0, size_t t1) {
  return Segment{block.dtype,
                 block.k,
                 block.v,
                 block.k_token_stride,
                 block.k_head_stride,
                 block.v_token_stride,
                 block.v_head_stride,
                 /*n_tokens=*/t1,
                 block.n_heads,
                 /*first_position=*/t0,
                 {}};  // blocks are never int8
}

// Positions [t0, t1) of a validated call: the exact part of the stored
// tokens, the block's tokens 0 .. t causally, the summary, merged into the
// outputs. False if anything was not finite.
bool PrefillTile(const covattn_cache* cache, const covattn_kv_cache& block, const CacheQueries& all,
                 size_t t0, size_t t1, const covattn_outputs& out, const ReadScratch& s) {
  const size_t d = cache->Dim(), n = all.n_q_heads;
  const KvHeadRange all_heads{0, cache->Heads()};
  const CacheQueries tile{
      all.q + t0 * all.token_stride, t1 - t0, n, all.token_stride, all.head_stride, all.scale};
  bool empty;
  bool finite = ExactPart(cache, all_heads, tile, s, &empty);
  finite = AddSegment(cache, CausalBlock(block, t0, t1), tile, 0, n, s, &empty) && finite;
  for (size_t t = 0; t < tile.n_positions && finite; ++t) {
    // The summary's readout takes one position's queries contiguous.
    const float* q = tile.q + t * tile.token_stride;
    if (tile.head_stride != d) {
      for (size_t h = 0; h < n; ++h) {
        std::copy(q + h * tile.head_stride, q + h * tile.head_stride + d, s.query + h * d);
      }
      q = s.query;
    }
    bool nonfinite = false;
    const bool have_summary =
        SummaryPart(cache, all_heads, q, n, all.scale, /*want_ess=*/false, s, &nonfinite);
    finite = !nonfinite;
    for (size_t h = 0; h < n && finite; ++h) {
      float diagnostics[3];
      float* row = out.data + (t0 + t) * out.token_stride + h * out.head_stride;
      finite = MergeRow(s, t * n + h, h, have_summary, d, row, diagnostics) == RowOutcome::kOk;
      if (out.log_z != nullptr) out.log_z[(t0 + t) * n + h] = diagnostics[2];
    }
  }
  return finite;
}

}  // namespace
}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" {

covattn_status covattn_cache_prefill(covattn_cache* cache, const covattn_kv_cache* block,
                                     const covattn_queries* q, float scale,
                                     const covattn_outputs* out, void* scratch,
                                     size_t scratch_bytes) {
  COVATTN_RETURN_IF_ERROR(CheckCache(cache));
  if (block == nullptr || q == nullptr || out == nullptr) return COVATTN_ERR_NULL_POINTER;
  Extent k, v;
  COVATTN_RETURN_IF_ERROR(CheckAppendBlock(cache, block, &k, &v));
  COVATTN_RETURN_IF_ERROR(
      CheckPrefill(cache, *block, k, v, *q, scale, *out, scratch, scratch_bytes));
  if (block->n_tokens == 0) return COVATTN_OK;
  // Bad values are refused before anything is written.
  const size_t d = cache->Dim();
  if (!AppendBlockInRange(cache, *block) || !QueriesFinite(*q, d)) return COVATTN_ERR_NONFINITE;
  if (scale == 0.0f) scale = 1.0f / std::sqrt(static_cast<float>(d));
  const size_t n = q->n_heads, positions = PrefillPositions(n, cache->Heads());
  const ReadScratch s = CarveReadScratch(scratch, positions * n, n, d, /*query_copy=*/true);
  const CacheQueries all{q->data, q->n_tokens, n, q->token_stride, q->head_stride, scale};
  // Every output first, against the cache before the block; the cache
  // changes only once they all succeeded.
  for (size_t t0 = 0; t0 < q->n_tokens; t0 += positions) {
    if (!PrefillTile(cache, *block, all, t0, std::min(q->n_tokens, t0 + positions), *out, s)) {
      return COVATTN_ERR_NONFINITE;
    }
  }
  AppendTokens(cache, *block, scratch);
  return COVATTN_OK;
}

}  // extern "C"
