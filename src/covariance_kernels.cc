// The covariance state's kernels (MATH.md sections 2 and 3), compiled once
// per Highway target (the element-type dependent part of the block update is
// covariance_kernels-inl.h, built per element type):
//  - block update: each sub-block of at most kSubBlockTokens tokens is centred
//    on its own (weighted) mean and packed into column panels, then one
//    register-tiled GEMM forms its co-moments sum_t w_t c_t [c_t]^T for the
//    d rows of k against the 2d columns [k | v] and, in the same pass, Chan-
//    merges them into the state: M <- decay M + M_block + u u^T;
//  - single tokens: the weighted Welford step, a rank-1 update with the same
//    formula and no packing;
//  - merge of two states: the same formula with M_block = M_other;
//  - readout: y = a^T [M_kk | M_kv] for all query heads of a GQA group at
//    once, so every row of the state is loaded once per group.
// Keeping one formula, u_i u_j + (decay M_ij + acc_ij), on every path keeps
// M_kk exactly symmetric: every term is symmetric in (i, j) bit for bit.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "covariance_kernels.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "covariance_kernels-inl.h"
#include "covattn/covattn.h"

HWY_BEFORE_NAMESPACE();
namespace covattn {
namespace HWY_NAMESPACE {
using detail::CovReadoutProblem;

// ---------------------------------------------------------------------------
// The block GEMM.

// One register tile of the block's co-moments, merged into the state:
// rows i0 + [0, rows) of k (from a, lda floats per token) against the kV
// vectors of columns of b (ldb floats per token), over n_tokens tokens; then
// m[r][c] <- u_rows[r] u_cols[c] + (decay m[r][c] + acc[r][c]) for the valid
// rows and the first `cols` columns. Rows past `rows` repeat the last row
// (valid memory, results discarded), so one instantiation serves every tile.
// Not inlined (nor is ReadoutChunk): a tile is hundreds of FMAs per call, and
// the callers stay small enough for the compiler.
#define COVATTN_GEMM_ROW(r)                                     \
  if constexpr (kR > r) {                                       \
    const auto a = hn::Set(d, at[o##r]);                        \
    c##r##0 = hn::MulAdd(a, b0, c##r##0);                       \
    if constexpr (kV > 1) c##r##1 = hn::MulAdd(a, b1, c##r##1); \
    if constexpr (kV > 2) c##r##2 = hn::MulAdd(a, b2, c##r##2); \
    if constexpr (kV > 3) c##r##3 = hn::MulAdd(a, b3, c##r##3); \
  }
#define COVATTN_GEMM_STORE_VEC(r, v)                                                \
  if constexpr (kV > v) {                                                           \
    if (cols > v * N) {                                                             \
      CombineVec(d, mr + v * N, cols - v * N, c##r##v, ur, u_cols + v * N, vdecay); \
    }                                                                               \
  }
#define COVATTN_GEMM_STORE(r)                \
  if constexpr (kR > r) {                    \
    if (r < rows) {                          \
      float* HWY_RESTRICT mr = m + r * ldm;  \
      const auto ur = hn::Set(d, u_rows[r]); \
      COVATTN_GEMM_STORE_VEC(r, 0)           \
      COVATTN_GEMM_STORE_VEC(r, 1)           \
      COVATTN_GEMM_STORE_VEC(r, 2)           \
      COVATTN_GEMM_STORE_VEC(r, 3)           \
    }                                        \
  }

template <size_t kR, size_t kV, class D>
HWY_NOINLINE void GemmTile(D d, const float* HWY_RESTRICT a, size_t lda, size_t rows,
                           const float* HWY_RESTRICT b, size_t ldb, size_t n_tokens,
                           float* HWY_RESTRICT m, size_t ldm, size_t cols,
                           const float* HWY_RESTRICT u_rows, const float* HWY_RESTRICT u_cols,
                           float decay) {
  static_assert(kR >= 1 && kR <= 8 && kV >= 1 && kV <= 4, "tile shape");
  const size_t N = hn::Lanes(d);
  const size_t last = rows - 1;
  const size_t o0 = 0, o1 = HWY_MIN(size_t{1}, last), o2 = HWY_MIN(size_t{2}, last);
  const size_t o3 = HWY_MIN(size_t{3}, last), o4 = HWY_MIN(size_t{4}, last);
  const size_t o5 = HWY_MIN(size_t{5}, last), o6 = HWY_MIN(size_t{6}, last);
  const size_t o7 = HWY_MIN(size_t{7}, last);
  auto c00 = hn::Zero(d), c01 = hn::Zero(d), c02 = hn::Zero(d), c03 = hn::Zero(d);
  auto c10 = hn::Zero(d), c11 = hn::Zero(d), c12 = hn::Zero(d), c13 = hn::Zero(d);
  auto c20 = hn::Zero(d), c21 = hn::Zero(d), c22 = hn::Zero(d), c23 = hn::Zero(d);
  auto c30 = hn::Zero(d), c31 = hn::Zero(d), c32 = hn::Zero(d), c33 = hn::Zero(d);
  auto c40 = hn::Zero(d), c41 = hn::Zero(d), c42 = hn::Zero(d), c43 = hn::Zero(d);
  auto c50 = hn::Zero(d), c51 = hn::Zero(d), c52 = hn::Zero(d), c53 = hn::Zero(d);
  auto c60 = hn::Zero(d), c61 = hn::Zero(d), c62 = hn::Zero(d), c63 = hn::Zero(d);
  auto c70 = hn::Zero(d), c71 = hn::Zero(d), c72 = hn::Zero(d), c73 = hn::Zero(d);
  for (size_t t = 0; t < n_tokens; ++t) {
    const float* HWY_RESTRICT bt = b + t * ldb;
    const float* HWY_RESTRICT at = a + t * lda;
    const auto b0 = hn::LoadU(d, bt);
    auto b1 = b0, b2 = b0, b3 = b0;
    if constexpr (kV > 1) b1 = hn::LoadU(d, bt + N);
    if constexpr (kV > 2) b2 = hn::LoadU(d, bt + 2 * N);
    if constexpr (kV > 3) b3 = hn::LoadU(d, bt + 3 * N);
    COVATTN_GEMM_ROW(0)
    COVATTN_GEMM_ROW(1)
    COVATTN_GEMM_ROW(2)
    COVATTN_GEMM_ROW(3)
    COVATTN_GEMM_ROW(4)
    COVATTN_GEMM_ROW(5)
    COVATTN_GEMM_ROW(6)
    COVATTN_GEMM_ROW(7)
  }
  const auto vdecay = hn::Set(d, decay);
  COVATTN_GEMM_STORE(0)
  COVATTN_GEMM_STORE(1)
  COVATTN_GEMM_STORE(2)
  COVATTN_GEMM_STORE(3)
  COVATTN_GEMM_STORE(4)
  COVATTN_GEMM_STORE(5)
  COVATTN_GEMM_STORE(6)
  COVATTN_GEMM_STORE(7)
}
#undef COVATTN_GEMM_ROW
#undef COVATTN_GEMM_STORE_VEC
#undef COVATTN_GEMM_STORE

// The GEMM of a packed sub-block of b tokens (ws.pack, by PackCentred) with
// the co-moment merge in its epilogue: m <- decay m + M_block + u u^T, u =
// ws.u. Element type independent, so compiled once per target.
void MergePackedBlock(size_t dim, float* m, size_t b, float decay_f, const Workspace& ws) {
  const hn::ScalableTag<float> d;
  const size_t width = 2 * dim;
  const size_t N = hn::Lanes(d), P = kGemmVecs * N;
  const size_t padded = detail::RoundUp(width, N);
  // Column panels outside (each is read by every row tile while it sits in
  // L1), row tiles of k inside, taken from the panels holding those rows.
  // M_kk is symmetric: a tile skips its leading column vectors that lie
  // wholly below the diagonal (j < i for all its rows), and those elements
  // are copied from their mirror images afterwards. The copy is bit-exact:
  // (j, i) is computed with the same products in the same order.
  for (size_t col0 = 0; col0 < padded; col0 += P) {
    const size_t pw = HWY_MIN(P, padded - col0), panel_vecs = pw / N;
    const size_t cols = HWY_MIN(pw, width - col0);
    const float* bp = ws.pack + col0 * b;
    for (size_t r0 = 0; r0 < dim; r0 += P) {
      const size_t rw = HWY_MIN(P, padded - r0), r_end = HWY_MIN(r0 + P, dim);
      const float* ap = ws.pack + r0 * b;
      for (size_t i0 = r0; i0 < r_end; i0 += kGemmRows) {
        const size_t skip = i0 > col0 ? HWY_MIN(panel_vecs, (i0 - col0) / N) : 0;
        if (skip == panel_vecs) continue;
        const size_t n_vecs = panel_vecs - skip, c0 = skip * N;
        const size_t rows = HWY_MIN(kGemmRows, r_end - i0);
        float* mt = m + i0 * width + col0 + c0;
        const float* a = ap + (i0 - r0);
        const float* bt = bp + c0;
        const float* u_cols = ws.u + col0 + c0;
        if (n_vecs >= kGemmVecs) {
          GemmTile<kGemmRows, kGemmVecs>(d, a, rw, rows, bt, pw, b, mt, width, cols - c0, ws.u + i0,
                                         u_cols, decay_f);
        } else if (n_vecs == 1) {
          GemmTile<kGemmRows, 1>(d, a, rw, rows, bt, pw, b, mt, width, cols - c0, ws.u + i0, u_cols,
                                 decay_f);
        } else if (n_vecs == 2) {
          GemmTile<kGemmRows, HWY_MIN(size_t{2}, kGemmVecs)>(d, a, rw, rows, bt, pw, b, mt, width,
                                                             cols - c0, ws.u + i0, u_cols, decay_f);
        } else {
          GemmTile<kGemmRows, HWY_MIN(size_t{3}, kGemmVecs)>(d, a, rw, rows, bt, pw, b, mt, width,
                                                             cols - c0, ws.u + i0, u_cols, decay_f);
        }
      }
    }
  }
}

// Fills what MergePackedBlock skipped below the diagonal of M_kk from its
// mirror image: the columns [0, N floor(i0 / N)) of row i, with i0 the
// first row of i's tile (kGemmRows divides the panel width). Only the GEMM
// path skips, and it skips the same elements every time, so one copy after
// all of a call's sub-blocks suffices. Where kGemmRows and N are multiples
// of 4, four rows share their extent and the copy goes by 4 x 4 blocks
// transposed in registers (gathers are slow on current x86 cores).
void MirrorSkipped(float* HWY_RESTRICT m, size_t dim) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d), width = 2 * dim;
  size_t i = 0;
#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128
  static_assert(kGemmRows % 4 == 0, "four rows per tile");
  const hn::CappedTag<float, 4> d4;
  const hn::Repartition<uint64_t, decltype(d4)> d64;
  for (; i + 4 <= dim; i += 4) {
    const size_t i0 = i - i % kGemmRows, end = i0 - i0 % N;
    for (size_t j = 0; j < end; j += 4) {
      const float* src = m + j * width + i;
      const auto r0 = hn::LoadU(d4, src), r1 = hn::LoadU(d4, src + width);
      const auto r2 = hn::LoadU(d4, src + 2 * width), r3 = hn::LoadU(d4, src + 3 * width);
      const auto t0 = hn::BitCast(d64, hn::InterleaveLower(d4, r0, r1));  // r0[0] r1[0] r0[1] r1[1]
      const auto t1 = hn::BitCast(d64, hn::InterleaveLower(d4, r2, r3));
      const auto t2 = hn::BitCast(d64, hn::InterleaveUpper(d4, r0, r1));  // r0[2] r1[2] r0[3] r1[3]
      const auto t3 = hn::BitCast(d64, hn::InterleaveUpper(d4, r2, r3));
      float* dst = m + i * width + j;
      hn::StoreU(hn::BitCast(d4, hn::InterleaveLower(d64, t0, t1)), d4, dst);
      hn::StoreU(hn::BitCast(d4, hn::InterleaveUpper(d64, t0, t1)), d4, dst + width);
      hn::StoreU(hn::BitCast(d4, hn::InterleaveLower(d64, t2, t3)), d4, dst + 2 * width);
      hn::StoreU(hn::BitCast(d4, hn::InterleaveUpper(d64, t2, t3)), d4, dst + 3 * width);
    }
  }
#endif
  for (; i < dim; ++i) {
    const size_t i0 = i - i % kGemmRows, end = i0 - i0 % N;
    float* HWY_RESTRICT mi = m + i * width;
    for (size_t j = 0; j < end; ++j) mi[j] = m[j * width + i];
  }
}

// ---------------------------------------------------------------------------
// Input scan: finite and within kMaxInputMagnitude, checked on the bits
// (|x| as an unsigned integer is monotonic in the magnitude, NaN and infinity
// above every finite value).

template <typename TU>
bool BitsWithin(const CovBlock& block, size_t n_heads, size_t dim, TU abs_mask, TU limit) {
  const hn::ScalableTag<TU> du;
  const size_t N = hn::Lanes(du);
  const auto vmask = hn::Set(du, abs_mask);
  auto vmax = hn::Zero(du);
  TU smax = 0;
  const void* bases[2] = {block.k, block.v};
  const size_t token_strides[2] = {block.k_token_stride, block.v_token_stride};
  const size_t head_strides[2] = {block.k_head_stride, block.v_head_stride};
  for (size_t which = 0; which < 2; ++which) {
    const TU* base = static_cast<const TU*>(bases[which]);
    for (size_t t = 0; t < block.n_tokens; ++t) {
      for (size_t h = 0; h < n_heads; ++h) {
        const TU* p = base + t * token_strides[which] + h * head_strides[which];
        size_t i = 0;
        for (; i + N <= dim; i += N) vmax = hn::Max(vmax, hn::And(hn::LoadU(du, p + i), vmask));
        for (; i < dim; ++i) {
          TU bits;
          std::memcpy(&bits, p + i, sizeof(bits));
          smax = HWY_MAX(smax, static_cast<TU>(bits & abs_mask));
        }
      }
    }
  }
  HWY_ALIGN TU lanes[detail::kVectorSlackBytes / sizeof(TU)];
  hn::Store(vmax, du, lanes);
  for (size_t i = 0; i < N; ++i) smax = HWY_MAX(smax, lanes[i]);
  return smax <= limit;
}

// Every scale of an int8 block finite and at most `limit` in magnitude.
bool ScalesWithin(const CovBlock& block, size_t n_heads, double limit) {
  const covattn_int8_scales& s = *block.int8_scales;
  for (size_t t = 0; t < block.n_tokens; ++t) {
    for (size_t h = 0; h < n_heads; ++h) {
      const float k = s.k_scale[t * s.k_token_stride + h * s.k_head_stride];
      const float v = s.v_scale[t * s.v_token_stride + h * s.v_head_stride];
      if (!(std::fabs(k) <= limit && std::fabs(v) <= limit)) return false;  // NaN too
    }
  }
  return true;
}

bool BlockInRange(const CovBlock& block, size_t n_heads, size_t dim, bool f16_storage) {
  // With f16 storage the limit is what rounds to a finite f16: below 65520.
  switch (block.dtype) {
    case COVATTN_F32:  // 2^40 is 0x53800000; 65520 is 0x477FF000
      return BitsWithin<uint32_t>(block, n_heads, dim, 0x7FFFFFFFu,
                                  f16_storage ? 0x477FEFFFu : 0x53800000u);
    case COVATTN_F16:  // every finite value is far below 2^40
      return BitsWithin<uint16_t>(block, n_heads, dim, 0x7FFF, 0x7BFF);
    case COVATTN_INT8:  // |q| <= 128: the scales decide (never f16 storage: no cache takes int8)
      return ScalesWithin(block, n_heads, 0x1p40 / 128);
    default:  // COVATTN_BF16: 2^40 is 0x5380; 65280 (0x477F) is the last below 65520
      return BitsWithin<uint16_t>(block, n_heads, dim, 0x7FFF, f16_storage ? 0x477F : 0x5380);
  }
}

// ---------------------------------------------------------------------------
// Merge of two states.

void Merge(covattn_cov_state* into, const covattn_cov_state* other, float* work) {
  const hn::ScalableTag<float> d;
  const size_t dim = into->head_dim, width = 2 * dim;
  const size_t padded = detail::RoundUp(width, hn::Lanes(d));
  const double lambda = into->forgetting;
  // into's tokens all age by the number of tokens in other.
  const double decay = lambda == 1.0 ? 1.0 : std::pow(lambda, static_cast<double>(other->n_tokens));
  const Workspace ws(work, dim);
  for (size_t h = 0; h < into->n_heads; ++h) {
    const CovHead head = into->Head(h);
    const double* other_doubles = other->Doubles(h);
    const double wb = other_doubles[0];
    if (wb == 0.0) continue;
    MergeMeans(
        width, padded, *head.weight * decay, wb, [&](size_t c) { return other_doubles[1 + c]; },
        head.weight, head.mean, ws.u);
    CombineRows(d, head.m, dim, width, other->Moments(h), ws.u, static_cast<float>(decay));
  }
}

// ---------------------------------------------------------------------------
// Readout.

// Stores the first `valid` lanes of x at p.
template <class D, class V>
HWY_INLINE void StoreFirst(D d, V x, size_t valid, float* HWY_RESTRICT p) {
  if (valid >= hn::Lanes(d)) {
    hn::StoreU(x, d, p);
    return;
  }
  HWY_ALIGN float buf[kMaxLanesF32];
  hn::Store(x, d, buf);
  std::copy(buf, buf + valid, p);
}

// Columns [col, col + kV Lanes) of y_h = a_h^T M for kH heads (rows of a,
// lda apart), over the dim rows of M (ldm floats apart). For the k part
// (col < dim) adds a_h . y_h over the valid columns to quad[h] (a is zero
// beyond dim, so lanes past the k part add nothing); for the v part writes
// out_h = mu + y_h / W to out + h * ld_out.
#define COVATTN_READ_HEAD(h)                                    \
  if constexpr (kH > h) {                                       \
    const auto s = hn::Set(d, a##h[j]);                         \
    y##h##0 = hn::MulAdd(s, x0, y##h##0);                       \
    if constexpr (kV > 1) y##h##1 = hn::MulAdd(s, x1, y##h##1); \
  }
#define COVATTN_READ_FINISH(h)                                                               \
  if constexpr (kH > h) {                                                                    \
    if (k_part) {                                                                            \
      auto dot = hn::Mul(hn::LoadU(d, a##h + col), y##h##0);                                 \
      if constexpr (kV > 1) dot = hn::MulAdd(hn::LoadU(d, a##h + col + N), y##h##1, dot);    \
      quad[h] += hn::GetLane(hn::SumOfLanes(d, dot));                                        \
    } else {                                                                                 \
      float* o = out + h * ld_out;                                                           \
      StoreFirst(d, hn::MulAdd(y##h##0, inv_w, hn::LoadU(d, mu)), valid, o);                 \
      if constexpr (kV > 1) {                                                                \
        if (valid > N) {                                                                     \
          StoreFirst(d, hn::MulAdd(y##h##1, inv_w, hn::LoadU(d, mu + N)), valid - N, o + N); \
        }                                                                                    \
      }                                                                                      \
    }                                                                                        \
  }

template <size_t kH, size_t kV, class D>
HWY_NOINLINE void ReadoutChunk(D d, const float* HWY_RESTRICT m, size_t ldm, size_t dim, size_t col,
                               size_t valid, const float* HWY_RESTRICT a, size_t lda, bool k_part,
                               const float* HWY_RESTRICT mu, float w_inv, float* HWY_RESTRICT out,
                               size_t ld_out, double* quad) {
  static_assert(kH >= 1 && kH <= 8 && kV >= 1 && kV <= 2, "tile shape");
  const size_t N = hn::Lanes(d);
  const float* HWY_RESTRICT a0 = a;
  const float* HWY_RESTRICT a1 = a + (kH > 1 ? lda : 0);
  const float* HWY_RESTRICT a2 = a + (kH > 2 ? 2 * lda : 0);
  const float* HWY_RESTRICT a3 = a + (kH > 3 ? 3 * lda : 0);
  const float* HWY_RESTRICT a4 = a + (kH > 4 ? 4 * lda : 0);
  const float* HWY_RESTRICT a5 = a + (kH > 5 ? 5 * lda : 0);
  const float* HWY_RESTRICT a6 = a + (kH > 6 ? 6 * lda : 0);
  const float* HWY_RESTRICT a7 = a + (kH > 7 ? 7 * lda : 0);
  auto y00 = hn::Zero(d), y01 = hn::Zero(d), y10 = hn::Zero(d), y11 = hn::Zero(d);
  auto y20 = hn::Zero(d), y21 = hn::Zero(d), y30 = hn::Zero(d), y31 = hn::Zero(d);
  auto y40 = hn::Zero(d), y41 = hn::Zero(d), y50 = hn::Zero(d), y51 = hn::Zero(d);
  auto y60 = hn::Zero(d), y61 = hn::Zero(d), y70 = hn::Zero(d), y71 = hn::Zero(d);
  for (size_t j = 0; j < dim; ++j) {
    const float* HWY_RESTRICT row = m + j * ldm + col;
    const auto x0 = hn::LoadU(d, row);  // may read into the head's slack
    auto x1 = x0;
    if constexpr (kV > 1) x1 = hn::LoadU(d, row + N);
    COVATTN_READ_HEAD(0)
    COVATTN_READ_HEAD(1)
    COVATTN_READ_HEAD(2)
    COVATTN_READ_HEAD(3)
    COVATTN_READ_HEAD(4)
    COVATTN_READ_HEAD(5)
    COVATTN_READ_HEAD(6)
    COVATTN_READ_HEAD(7)
  }
  const auto inv_w = hn::Set(d, w_inv);
  COVATTN_READ_FINISH(0)
  COVATTN_READ_FINISH(1)
  COVATTN_READ_FINISH(2)
  COVATTN_READ_FINISH(3)
  COVATTN_READ_FINISH(4)
  COVATTN_READ_FINISH(5)
  COVATTN_READ_FINISH(6)
  COVATTN_READ_FINISH(7)
}
#undef COVATTN_READ_HEAD
#undef COVATTN_READ_FINISH

template <size_t kH, class D>
HWY_INLINE void ReadoutPart(D d, const float* HWY_RESTRICT m, size_t dim, bool k_part,
                            const double* HWY_RESTRICT mean, const float* HWY_RESTRICT a,
                            size_t lda, float w_inv, float* HWY_RESTRICT out, double* quad) {
  const size_t N = hn::Lanes(d), width = 2 * dim;
  const size_t begin = k_part ? 0 : dim;
  HWY_ALIGN float mu[kReadVecs * kMaxLanesF32] = {};
  for (size_t col = begin; col < begin + dim; col += kReadVecs * N) {
    const size_t valid = HWY_MIN(kReadVecs * N, begin + dim - col);
    if (!k_part) {
      for (size_t i = 0; i < valid; ++i) mu[i] = static_cast<float>(mean[col + i]);
    }
    float* o = out + (col - begin);
    if (valid > N) {
      ReadoutChunk<kH, kReadVecs>(d, m, width, dim, col, valid, a, lda, k_part, mu, w_inv, o, dim,
                                  quad);
    } else {
      ReadoutChunk<kH, 1>(d, m, width, dim, col, valid, a, lda, k_part, mu, w_inv, o, dim, quad);
    }
  }
}

template <size_t kH, class D>
HWY_INLINE void ReadoutHeads(D d, const float* HWY_RESTRICT m, size_t dim, bool stats,
                             const double* HWY_RESTRICT mean, const float* HWY_RESTRICT a,
                             const float* HWY_RESTRICT a_value, size_t lda, float w_inv,
                             float* HWY_RESTRICT out, double* quad) {
  if (stats) ReadoutPart<kH>(d, m, dim, /*k_part=*/true, mean, a, lda, w_inv, out, quad);
  ReadoutPart<kH>(d, m, dim, /*k_part=*/false, mean, a_value, lda, w_inv, out, quad);
}

// tile[h][i] = scale q[h][i] for nh query rows, zero for N lanes beyond dim.
void ScaleQueries(const float* q, size_t nh, size_t dim, float scale, size_t N, float* tile,
                  size_t lda) {
  for (size_t h = 0; h < nh; ++h) {
    float* row = tile + h * lda;
    for (size_t i = 0; i < dim; ++i) row[i] = scale * q[h * dim + i];
    std::fill(row + dim, row + dim + N, 0.0f);
  }
}

bool Readout(const covattn_cov_state* state, const CovReadoutProblem& pb) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const size_t dim = state->head_dim;
  const size_t group = pb.n_q_heads / pb.n_heads;
  const bool stats = pb.log_z != nullptr || pb.ess != nullptr || pb.sigma2 != nullptr;
  // Scaled queries of one head tile, zero beyond dim, and those of the value
  // part when they differ (no scratch: on the stack, at most 2 kReadHeads x
  // 576 floats).
  constexpr size_t kLda = COVATTN_MAX_HEAD_DIM + kMaxLanesF32;
  HWY_ALIGN float a[kReadHeads * kLda];
  HWY_ALIGN float a_value_tile[kReadHeads * kLda];
  const float* a_value = pb.value_q != nullptr ? a_value_tile : a;
  bool finite = true;
  for (size_t kv = 0; kv < pb.n_heads; ++kv) {
    const float* m = state->Moments(pb.first_head + kv);
    const double* doubles = state->Doubles(pb.first_head + kv);
    const double weight = doubles[0];
    const double* mean = doubles + 1;
    if (weight == 0.0) {
      // A head that has seen nothing (the bounded cache folds tokens head by
      // head) contributes no mass: log Z = -inf, ESS = 0, output 0.
      for (size_t h = kv * group; h < (kv + 1) * group; ++h) {
        std::fill(pb.out + h * dim, pb.out + (h + 1) * dim, 0.0f);
        if (pb.log_z != nullptr) pb.log_z[h] = -std::numeric_limits<float>::infinity();
        if (pb.ess != nullptr) pb.ess[h] = 0.0f;
        if (pb.sigma2 != nullptr) pb.sigma2[h] = 0.0;
      }
      continue;
    }
    const float w_inv = static_cast<float>(1.0 / weight);
    for (size_t g0 = 0; g0 < group; g0 += kReadHeads) {
      const size_t nh = HWY_MIN(kReadHeads, group - g0);
      const size_t first = kv * group + g0;
      ScaleQueries(pb.q + first * dim, nh, dim, pb.scale, N, a, kLda);
      if (pb.value_q != nullptr) {
        ScaleQueries(pb.value_q + first * dim, nh, dim, pb.scale, N, a_value_tile, kLda);
      }
      double quad[kReadHeads] = {};
      float* out = pb.out + first * dim;
      switch (nh) {
#define COVATTN_READ_CASE(n)                                                                      \
  case n:                                                                                         \
    ReadoutHeads<HWY_MIN(size_t{n}, kReadHeads)>(d, m, dim, stats, mean, a, a_value, kLda, w_inv, \
                                                 out, quad);                                      \
    break;
        COVATTN_READ_CASE(1)
        COVATTN_READ_CASE(2)
        COVATTN_READ_CASE(3)
        COVATTN_READ_CASE(4)
        COVATTN_READ_CASE(5)
        COVATTN_READ_CASE(6)
        COVATTN_READ_CASE(7)
        default:
          ReadoutHeads<kReadHeads>(d, m, dim, stats, mean, a, a_value, kLda, w_inv, out, quad);
          break;
#undef COVATTN_READ_CASE
      }
      for (size_t h = 0; h < nh; ++h) {
        const float* o = out + h * dim;
        for (size_t i = 0; i < dim; ++i) finite &= std::isfinite(o[i]);
        if (!stats) continue;
        // log Z = log W + a.mu_k + a^T C_kk a / 2, ESS = W exp(-a^T C_kk a).
        const float* ah = a + h * kLda;
        double a_mu = 0.0;
        for (size_t i = 0; i < dim; ++i) a_mu += double{ah[i]} * mean[i];
        const double sigma2 = quad[h] / weight;
        if (pb.sigma2 != nullptr) pb.sigma2[first + h] = sigma2;
        if (pb.log_z != nullptr) {
          pb.log_z[first + h] = static_cast<float>(std::log(weight) + a_mu + 0.5 * sigma2);
          finite &= std::isfinite(pb.log_z[first + h]);
        }
        if (pb.ess != nullptr) {
          pb.ess[first + h] = static_cast<float>(weight * std::exp(-sigma2));
          finite &= std::isfinite(pb.ess[first + h]);
        }
      }
    }
  }
  return finite;
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "dispatch.h"

namespace covattn {
HWY_EXPORT(BlockInRange);
HWY_EXPORT(Merge);
HWY_EXPORT(Readout);

namespace detail {

bool CovBlockInRange(const CovBlock& block, size_t n_heads, size_t dim, bool f16_storage) {
  return COVATTN_DISPATCH(BlockInRange)(block, n_heads, dim, f16_storage);
}

void CovUpdate(covattn_cov_state* state, const CovBlock& block, float* work) {
  CovUpdateHeads(state, block, 0, state->n_heads, work);
}

void CovUpdateHeads(covattn_cov_state* state, const CovBlock& block, size_t first_head,
                    size_t n_heads, float* work) {
  if (block.dtype == COVATTN_INT8) {
    CovUpdateHeadsInt8(state, block, first_head, n_heads, work);
    return;
  }
  ForDtype(block.dtype, CovUpdateHeadsF32, CovUpdateHeadsF16, CovUpdateHeadsBF16)(
      state, block, first_head, n_heads, work);
}

void CovMerge(covattn_cov_state* into, const covattn_cov_state* other, float* work) {
  COVATTN_DISPATCH(Merge)(into, other, work);
}

bool CovReadout(const covattn_cov_state* state, const CovReadoutProblem& problem) {
  return COVATTN_DISPATCH(Readout)(state, problem);
}

}  // namespace detail
}  // namespace covattn
#endif  // HWY_ONCE
