// Exact streaming softmax attention (MATH.md section 1), the per-target
// bodies: compiled once per Highway target and element type by the thin
// attention_kernels_{f32,f16,bf16,int8}.cc, so the element types build in
// parallel. Queries are processed in tiles of up to kTileRows rows (query
// positions x query heads sharing one KV head), keys and values in chunks of
// up to kChunkTokens tokens (ChunkTokensFor), so every K/V element loaded
// serves all rows of a tile and no score matrix larger than a pass x a chunk
// ever exists. Passes of many rows of one KV head (prefill) score and
// normalise with the rows in the lanes (ScoreRowsInLanes).
#if defined(COVATTN_SRC_ATTENTION_KERNELS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef COVATTN_SRC_ATTENTION_KERNELS_INL_H_
#undef COVATTN_SRC_ATTENTION_KERNELS_INL_H_
#else
#define COVATTN_SRC_ATTENTION_KERNELS_INL_H_
#endif

#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "attention.h"
#include "load-inl.h"
#include "online_softmax.h"

HWY_BEFORE_NAMESPACE();
namespace covattn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail::AttentionOutcome;
using detail::AttentionProblem;
using detail::AttentionResultSink;
using detail::kChunksPerBlock;
using detail::kChunkTokens;
using detail::kInitialMax;
using detail::kPassRows;
using detail::kTileRows;

// Prefetches the K and V rows of the next chunk while the current one is
// processed, one cache line for every 64 bytes the kernels load, so requests
// are spread evenly over the arithmetic at the pace it consumes data. Lines
// are requested in memory order (token-major or head-major, whichever the
// strides say) so DRAM sees long sequential runs even when one head's rows
// lie a page or more apart, where hardware prefetchers give up.
template <typename T>
class PrefetchCursor {
 public:
  // Tokens [t0, t0 + n_tokens) of KV heads [h0, h1).
  void Reset(const AttentionProblem& pb, size_t t0, size_t n_tokens, size_t h0, size_t h1) {
    const bool token_major = pb.k_head_stride < pb.k_token_stride;
    n_outer_ = token_major ? n_tokens : h1 - h0;
    n_inner_ = token_major ? h1 - h0 : n_tokens;
    outer_ = inner_ = 0;
    budget_ = 0;
    in_v_ = false;
    offset_ = 0;
    row_ = nullptr;
    // Nothing to fetch: t0 may be one past the last token, whose address
    // (t0 times a stride) may not exist, even as a pointer.
    if (n_outer_ == 0 || n_inner_ == 0) return;
    const size_t outer0 = token_major ? t0 : h0, inner0 = token_major ? h0 : t0;
    outer_k_ = (token_major ? pb.k_token_stride : pb.k_head_stride) * sizeof(T);
    inner_k_ = (token_major ? pb.k_head_stride : pb.k_token_stride) * sizeof(T);
    outer_v_ = (token_major ? pb.v_token_stride : pb.v_head_stride) * sizeof(T);
    inner_v_ = (token_major ? pb.v_head_stride : pb.v_token_stride) * sizeof(T);
    k_ = static_cast<const char*>(pb.k) + outer0 * outer_k_ + inner0 * inner_k_;
    v_ = static_cast<const char*>(pb.v) + outer0 * outer_v_ + inner0 * inner_v_;
    row_bytes_ = pb.head_dim * sizeof(T);
    row_ = k_;
  }

  // Credits `bytes` just loaded; prefetches one line per 64 bytes of credit.
  HWY_INLINE void Advance(size_t bytes) {
    budget_ += bytes;
    if (budget_ >= 64 && row_ != nullptr) Fetch();
  }

 private:
  // The state lives in locals while lines are issued, a row's lines in one
  // tight loop: kept in the members, the bookkeeping cost more than the
  // prefetches (18% of a cache-resident decode, docs/results.md).
  HWY_NOINLINE void Fetch() {
    const char* row = row_;
    size_t offset = offset_, budget = budget_;
    while (budget >= 64 && row != nullptr) {
      const size_t lines_left = (row_bytes_ - offset + 63) / 64;
      const size_t n = std::min(budget / 64, lines_left);
      // Into L2, not L1 (prefetcht1; PLDL2KEEP on Arm): a chunk of a layer
      // is up to 512 KiB, far more than L1 holds until it is read, and L1
      // prefetches tie up its few miss buffers. Measured on Zen 5: f32 layer
      // decode 23.9 -> 17.3 ms (docs/results.md).
      for (size_t i = 0; i < n; ++i) __builtin_prefetch(row + offset + 64 * i, /*rw=*/0, 2);
      budget -= 64 * n;
      offset += 64 * n;
      if (offset < row_bytes_) break;  // the credit ran out within the row
      offset = 0;                      // next row: K then V of each (token, head), in memory order
      if (!in_v_) {
        in_v_ = true;
      } else {
        in_v_ = false;
        if (++inner_ == n_inner_) inner_ = 0, ++outer_;
        if (outer_ == n_outer_) {
          row = nullptr;
          break;
        }
      }
      row = in_v_ ? v_ + outer_ * outer_v_ + inner_ * inner_v_
                  : k_ + outer_ * outer_k_ + inner_ * inner_k_;
    }
    row_ = row;
    offset_ = offset;
    budget_ = budget;
  }

  const char* k_ = nullptr;
  const char* v_ = nullptr;
  const char* row_ = nullptr;  // row being prefetched; nullptr when done
  size_t outer_k_ = 0, inner_k_ = 0, outer_v_ = 0, inner_v_ = 0;
  size_t n_outer_ = 0, n_inner_ = 0, row_bytes_ = 0;
  size_t outer_ = 0, inner_ = 0, offset_ = 0, budget_ = 0;
  bool in_v_ = false;
};

// A pass over one KV head (one head's decode, prefill) prefetches instead
// beside its loads: each K or V vector loaded prefetches the same place one
// chunk on, the head's next rows in memory order. No bookkeeping and evenly
// spread, where the cursor issued lines in bursts: one cache-resident head
// 106 -> 86 us f32, 74 -> 64 us int8. Over several heads the cursor stays:
// prefetching beside the loads (any distance from one head to one chunk
// ahead, L1 or L2) made f16 layers 1.5x slower (docs/results.md, "Prefetch
// beside the loads").
struct PrefetchDistance {
  size_t k, v;  // bytes from a loaded K (V) element to the one to prefetch; 0: none
};

// Prefetches the line `ahead` bytes on from the vector of d at p into L1 and
// L2 (prefetcht0, PLDL1KEEP), if kBeside; vectors narrower than a line only
// from the start of one, once per line. The address is never dereferenced,
// so it may lie past the cache. kBeside is a template parameter of the
// kernels below: as a run-time test in their inner loops it cost the layer
// passes, which do not prefetch beside their loads, 5-15%.
template <bool kBeside, class D, typename T>
HWY_INLINE void PrefetchLine(D d, const T* p, size_t ahead) {
  if constexpr (!kBeside) return;
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  const size_t vector_bytes = hn::Lanes(d) * sizeof(T);
  if (vector_bytes < 64 && (at & 63) >= vector_bytes) return;
  __builtin_prefetch(reinterpret_cast<const void*>(at + ahead), /*rw=*/0, /*locality=*/3);
}

// out[p] = the sum of the lanes of v_p, p = 0..3: two interleaving steps
// within 128-bit blocks leave each block holding one partial sum per vector,
// then the blocks are added. A quarter of the work of four SumOfLanes.
template <class D, class V>
HWY_INLINE void SumOfLanes4(D d, V v0, V v1, V v2, V v3, float* HWY_RESTRICT out) {
#if HWY_TARGET == HWY_SCALAR
  out[0] = hn::GetLane(v0), out[1] = hn::GetLane(v1);
  out[2] = hn::GetLane(v2), out[3] = hn::GetLane(v3);
  (void)d;
#else
  const hn::Repartition<uint64_t, D> d64;
  const V t01 = hn::Add(hn::InterleaveLower(d, v0, v1), hn::InterleaveUpper(d, v0, v1));
  const V t23 = hn::Add(hn::InterleaveLower(d, v2, v3), hn::InterleaveUpper(d, v2, v3));
  const auto u = hn::BitCast(d64, t01), w = hn::BitCast(d64, t23);
  const V t = hn::Add(hn::BitCast(d, hn::InterleaveLower(d64, u, w)),
                      hn::BitCast(d, hn::InterleaveUpper(d64, u, w)));
  HWY_ALIGN float blocks[HWY_MAX_BYTES / sizeof(float)];
  hn::Store(t, d, blocks);
  const hn::CappedTag<float, 4> d4;
  auto sum = hn::Load(d4, blocks);
  for (size_t i = 4; i < hn::Lanes(d); i += 4) sum = hn::Add(sum, hn::Load(d4, blocks + i));
  hn::StoreU(sum, d4, out);
#endif
}

// sums[t * kRows + r] = a_r . k_t for kRows rows and kTok consecutive tokens,
// kRows * kTok <= 4: every loaded key serves all rows, every query vector all
// tokens, and one transposing reduction finishes all four dot products.
// Every key vector loaded prefetches `ahead` bytes on (PrefetchLine), as in
// the functions below.
template <size_t kRows, size_t kTok, bool kBeside, class D, typename T>
HWY_INLINE void ScoreStep(D d, const float* HWY_RESTRICT a, size_t lda, const T* HWY_RESTRICT k,
                          size_t k_stride, size_t dim, size_t ahead, float* HWY_RESTRICT sums) {
  static_assert(kRows * kTok <= 4, "four dot products at a time");
  constexpr size_t kPairs = kRows * kTok;
  const size_t N = hn::Lanes(d);
  const size_t dim_vec = dim - dim % N;
  const size_t dim_vec2 = dim - dim % (2 * N);
  // Pair p is row p % kRows and token p / kRows; unused pairs repeat pair 0.
  const float* HWY_RESTRICT a0 = a;
  const float* HWY_RESTRICT a1 = a + (kPairs > 1 ? (1 % kRows) * lda : 0);
  const float* HWY_RESTRICT a2 = a + (kPairs > 2 ? (2 % kRows) * lda : 0);
  const float* HWY_RESTRICT a3 = a + (kPairs > 3 ? (3 % kRows) * lda : 0);
  const T* HWY_RESTRICT k0 = k;
  const T* HWY_RESTRICT k1 = k + (kPairs > 1 ? (1 / kRows) * k_stride : 0);
  const T* HWY_RESTRICT k2 = k + (kPairs > 2 ? (2 / kRows) * k_stride : 0);
  const T* HWY_RESTRICT k3 = k + (kPairs > 3 ? (3 / kRows) * k_stride : 0);
  auto x0 = hn::Zero(d), x1 = hn::Zero(d), x2 = hn::Zero(d), x3 = hn::Zero(d);
  auto y0 = hn::Zero(d), y1 = hn::Zero(d), y2 = hn::Zero(d), y3 = hn::Zero(d);
  size_t i = 0;
  for (; i < dim_vec2; i += 2 * N) {  // two accumulators per pair hide FMA latency
    for (size_t t = 0; t < kTok; ++t) {
      PrefetchLine<kBeside>(d, k + t * k_stride + i, ahead);
      PrefetchLine<kBeside>(d, k + t * k_stride + i + N, ahead);
    }
    x0 = hn::MulAdd(hn::LoadU(d, a0 + i), LoadAsF32(d, k0 + i), x0);
    y0 = hn::MulAdd(hn::LoadU(d, a0 + i + N), LoadAsF32(d, k0 + i + N), y0);
    if constexpr (kPairs > 1) {
      x1 = hn::MulAdd(hn::LoadU(d, a1 + i), LoadAsF32(d, k1 + i), x1);
      y1 = hn::MulAdd(hn::LoadU(d, a1 + i + N), LoadAsF32(d, k1 + i + N), y1);
    }
    if constexpr (kPairs > 2) {
      x2 = hn::MulAdd(hn::LoadU(d, a2 + i), LoadAsF32(d, k2 + i), x2);
      y2 = hn::MulAdd(hn::LoadU(d, a2 + i + N), LoadAsF32(d, k2 + i + N), y2);
    }
    if constexpr (kPairs > 3) {
      x3 = hn::MulAdd(hn::LoadU(d, a3 + i), LoadAsF32(d, k3 + i), x3);
      y3 = hn::MulAdd(hn::LoadU(d, a3 + i + N), LoadAsF32(d, k3 + i + N), y3);
    }
  }
  for (; i < dim_vec; i += N) {
    for (size_t t = 0; t < kTok; ++t) PrefetchLine<kBeside>(d, k + t * k_stride + i, ahead);
    x0 = hn::MulAdd(hn::LoadU(d, a0 + i), LoadAsF32(d, k0 + i), x0);
    if constexpr (kPairs > 1) x1 = hn::MulAdd(hn::LoadU(d, a1 + i), LoadAsF32(d, k1 + i), x1);
    if constexpr (kPairs > 2) x2 = hn::MulAdd(hn::LoadU(d, a2 + i), LoadAsF32(d, k2 + i), x2);
    if constexpr (kPairs > 3) x3 = hn::MulAdd(hn::LoadU(d, a3 + i), LoadAsF32(d, k3 + i), x3);
  }
  float out[4];
  SumOfLanes4(d, hn::Add(x0, y0), hn::Add(x1, y1), hn::Add(x2, y2), hn::Add(x3, y3), out);
  for (; i < dim; ++i) {  // the dims after the last whole vector
    out[0] += a0[i] * ElementAsF32(k0 + i);
    if constexpr (kPairs > 1) out[1] += a1[i] * ElementAsF32(k1 + i);
    if constexpr (kPairs > 2) out[2] += a2[i] * ElementAsF32(k2 + i);
    if constexpr (kPairs > 3) out[3] += a3[i] * ElementAsF32(k3 + i);
  }
  for (size_t p = 0; p < kPairs; ++p) sums[p] = out[p];
}

// Vector registers of the target, which size the register blocks below.
#if (HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3) || (HWY_ARCH_ARM_A64 && HWY_TARGET != HWY_EMU128)
constexpr size_t kVectorRegisters = 32;
#else
constexpr size_t kVectorRegisters = 16;
#endif

// Tokens a score step of two to four rows takes at once: its 4 x kTok
// accumulators, the four query vectors and a key fit in the registers. Each
// query vector loaded then serves kTok tokens: with one token per step the
// loads of a, not the FMAs, were the limit (docs/results.md, "Four tokens per
// score step").
constexpr size_t kScoreTokens = kVectorRegisters >= 32 ? 4 : 2;

// sums[t * 4 + r] = a_r . k_t for kRows (2 to 4) rows and kTok (2 or 4)
// consecutive tokens, one accumulator per dot product (there are enough of
// them to hide the FMA latency); rows from kRows on are left 0.
template <size_t kRows, size_t kTok, bool kBeside, class D, typename T>
HWY_INLINE void ScoreStepTokens(D d, const float* HWY_RESTRICT a, size_t lda,
                                const T* HWY_RESTRICT k, size_t k_stride, size_t dim, size_t ahead,
                                float* HWY_RESTRICT sums) {
  static_assert(kRows >= 2 && kRows <= 4 && (kTok == 2 || kTok == 4), "a step of 2-4 x 2 or 4");
  const size_t N = hn::Lanes(d);
  const size_t dim_vec = dim - dim % N;
  // Rows from kRows on point at row 0 and are never used.
  const float* HWY_RESTRICT a0 = a;
  const float* HWY_RESTRICT a1 = a + lda;
  const float* HWY_RESTRICT a2 = a + (kRows > 2 ? 2 * lda : 0);
  const float* HWY_RESTRICT a3 = a + (kRows > 3 ? 3 * lda : 0);
  const T* HWY_RESTRICT k0 = k;
  const T* HWY_RESTRICT k1 = k + k_stride;
  const T* HWY_RESTRICT k2 = k + (kTok > 2 ? 2 * k_stride : 0);
  const T* HWY_RESTRICT k3 = k + (kTok > 2 ? 3 * k_stride : 0);
  auto c00 = hn::Zero(d), c01 = hn::Zero(d), c02 = hn::Zero(d), c03 = hn::Zero(d);
  auto c10 = hn::Zero(d), c11 = hn::Zero(d), c12 = hn::Zero(d), c13 = hn::Zero(d);
  auto c20 = hn::Zero(d), c21 = hn::Zero(d), c22 = hn::Zero(d), c23 = hn::Zero(d);
  auto c30 = hn::Zero(d), c31 = hn::Zero(d), c32 = hn::Zero(d), c33 = hn::Zero(d);
  size_t i = 0;
  for (; i < dim_vec; i += N) {  // c<t><r> += a_r * k_t
    const auto q0 = hn::LoadU(d, a0 + i), q1 = hn::LoadU(d, a1 + i);
    const auto q2 = hn::LoadU(d, a2 + i), q3 = hn::LoadU(d, a3 + i);
    PrefetchLine<kBeside>(d, k0 + i, ahead), PrefetchLine<kBeside>(d, k1 + i, ahead);
    if constexpr (kTok > 2)
      PrefetchLine<kBeside>(d, k2 + i, ahead), PrefetchLine<kBeside>(d, k3 + i, ahead);
    const auto x0 = LoadAsF32Shared(d, k0 + i);
    c00 = hn::MulAdd(q0, x0, c00), c01 = hn::MulAdd(q1, x0, c01);
    if constexpr (kRows > 2) c02 = hn::MulAdd(q2, x0, c02);
    if constexpr (kRows > 3) c03 = hn::MulAdd(q3, x0, c03);
    const auto x1 = LoadAsF32Shared(d, k1 + i);
    c10 = hn::MulAdd(q0, x1, c10), c11 = hn::MulAdd(q1, x1, c11);
    if constexpr (kRows > 2) c12 = hn::MulAdd(q2, x1, c12);
    if constexpr (kRows > 3) c13 = hn::MulAdd(q3, x1, c13);
    if constexpr (kTok > 2) {
      const auto x2 = LoadAsF32Shared(d, k2 + i);
      c20 = hn::MulAdd(q0, x2, c20), c21 = hn::MulAdd(q1, x2, c21);
      if constexpr (kRows > 2) c22 = hn::MulAdd(q2, x2, c22);
      if constexpr (kRows > 3) c23 = hn::MulAdd(q3, x2, c23);
      const auto x3 = LoadAsF32Shared(d, k3 + i);
      c30 = hn::MulAdd(q0, x3, c30), c31 = hn::MulAdd(q1, x3, c31);
      if constexpr (kRows > 2) c32 = hn::MulAdd(q2, x3, c32);
      if constexpr (kRows > 3) c33 = hn::MulAdd(q3, x3, c33);
    }
  }
  SumOfLanes4(d, c00, c01, c02, c03, sums);
  SumOfLanes4(d, c10, c11, c12, c13, sums + 4);
  if constexpr (kTok > 2) {
    SumOfLanes4(d, c20, c21, c22, c23, sums + 8);
    SumOfLanes4(d, c30, c31, c32, c33, sums + 12);
  }
  for (; i < dim; ++i) {  // the dims after the last whole vector
    for (size_t t = 0; t < kTok; ++t) {
      const float kt = ElementAsF32(k + t * k_stride + i);
      for (size_t r = 0; r < kRows; ++r) sums[t * 4 + r] += a[r * lda + i] * kt;
    }
  }
}

// s[r * lds + t] = sums[t * 4 + r] for kRows rows and kTok tokens: with four
// tokens, a 4 x 4 transpose and one vector store per row.
template <size_t kRows, size_t kTok>
HWY_INLINE void StoreScoreTokens(const float* HWY_RESTRICT sums, float* HWY_RESTRICT s,
                                 size_t lds) {
#if HWY_TARGET != HWY_SCALAR
  if constexpr (kTok == 4) {
    const hn::CappedTag<float, 4> d4;
    const hn::Repartition<uint64_t, decltype(d4)> d64;
    const auto x0 = hn::LoadU(d4, sums), x1 = hn::LoadU(d4, sums + 4);
    const auto x2 = hn::LoadU(d4, sums + 8), x3 = hn::LoadU(d4, sums + 12);
    const auto t0 = hn::BitCast(d64, hn::InterleaveLower(d4, x0, x1));  // x0[0] x1[0] x0[1] x1[1]
    const auto t1 = hn::BitCast(d64, hn::InterleaveLower(d4, x2, x3));
    const auto t2 = hn::BitCast(d64, hn::InterleaveUpper(d4, x0, x1));  // x0[2] x1[2] x0[3] x1[3]
    const auto t3 = hn::BitCast(d64, hn::InterleaveUpper(d4, x2, x3));
    hn::StoreU(hn::BitCast(d4, hn::InterleaveLower(d64, t0, t1)), d4, s);
    hn::StoreU(hn::BitCast(d4, hn::InterleaveUpper(d64, t0, t1)), d4, s + lds);
    if constexpr (kRows > 2) {
      hn::StoreU(hn::BitCast(d4, hn::InterleaveLower(d64, t2, t3)), d4, s + 2 * lds);
    }
    if constexpr (kRows > 3) {
      hn::StoreU(hn::BitCast(d4, hn::InterleaveUpper(d64, t2, t3)), d4, s + 3 * lds);
    }
    return;
  }
#endif
  for (size_t t = 0; t < kTok; ++t) {
    for (size_t r = 0; r < kRows; ++r) s[r * lds + t] = sums[t * 4 + r];
  }
}

// Scores s[r][j] = a_r . k_j for kRows rows and n_tokens tokens: two to four
// rows kScoreTokens tokens at a time, one row four tokens at a time, and the
// tokens left over four dot products at a time; k_ahead: the prefetch
// distance of the keys (PrefetchDistance).
// Not inlined, like AccumulateRows and ProcessRowGroup: each runs once per
// chunk, so the call costs nothing measurable, while inlining every tile
// shape into one function per element type and target made that function
// take the compiler (under ASan) many minutes.
template <size_t kRows, bool kBeside, class D, typename T>
HWY_NOINLINE void ScoreRows(D d, const float* HWY_RESTRICT a, size_t lda, const T* HWY_RESTRICT k,
                            size_t k_stride, size_t n_tokens, size_t dim, float* HWY_RESTRICT s,
                            size_t lds, PrefetchCursor<T>& cursor, size_t k_ahead) {
  constexpr size_t kTok = kRows == 1 ? 4 : kRows == 2 ? 2 : 1;
  float sums[16];
  size_t j = 0;
  if constexpr (kRows >= 2) {
    for (; j + kScoreTokens <= n_tokens; j += kScoreTokens) {
      cursor.Advance(kScoreTokens * dim * sizeof(T));
      ScoreStepTokens<kRows, kScoreTokens, kBeside>(d, a, lda, k + j * k_stride, k_stride, dim,
                                                    k_ahead, sums);
      StoreScoreTokens<kRows, kScoreTokens>(sums, s + j, lds);
    }
  }
  for (; j + kTok <= n_tokens; j += kTok) {
    cursor.Advance(kTok * dim * sizeof(T));
    ScoreStep<kRows, kTok, kBeside>(d, a, lda, k + j * k_stride, k_stride, dim, k_ahead, sums);
    for (size_t t = 0; t < kTok; ++t) {
      for (size_t r = 0; r < kRows; ++r) s[r * lds + j + t] = sums[t * kRows + r];
    }
  }
  for (; j < n_tokens; ++j) {  // tokens left over when several share a step
    cursor.Advance(dim * sizeof(T));
    ScoreStep<kRows, 1, kBeside>(d, a, lda, k + j * k_stride, k_stride, dim, k_ahead, sums);
    for (size_t r = 0; r < kRows; ++r) s[r * lds + j] = sums[r];
  }
}

// Passes whose rows all share one KV head and are many (prefill) keep the
// rows in the lanes instead: the pass's queries transposed once (a_t,
// [dim][kPassRows]), each key element broadcast and multiplied with a vector
// of rows, so a chunk's scores need no reduction across lanes, and the
// online softmax then runs on vectors of rows too (SoftmaxInLanes). Alone,
// this score step runs at 0.88-0.99 of the FMA peak where ScoreRows reaches
// 0.61-0.74 (`kernel_steps_bench`); f32 prefill 4096 x d 128 took 8-10%
// less time, f16 about the same: what remains is the weighted sum and the
// exps (docs/results.md, "Rows in the lanes"). From 16 rows of one KV head
// in a pass, so decode of up to 8 query heads per KV head is unchanged. Not
// on HWY_SCALAR (one lane).
constexpr size_t kRowsInLanesMinRows = 16;
using RowsTag = hn::CappedTag<float, 16>;

// Tokens a block of the lanes kernel takes: two row vectors times kTok
// accumulators, the two row vectors and a key element fit in the registers.
constexpr size_t kLanesTokens = kVectorRegisters >= 32 ? 8 : 4;

// s[t * kPassRows + r] = a_r . k_t for rows r of two vectors from r0 and kTok
// (1 to 8) tokens; a_t holds a_r[i] at a_t[i * kPassRows + r], k f32 keys.
template <size_t kTok>
HWY_INLINE void ScoreTokensInLanes(const float* HWY_RESTRICT a_t, size_t r0,
                                   const float* HWY_RESTRICT k, size_t k_stride, size_t dim,
                                   float* HWY_RESTRICT s) {
  const RowsTag d;
  const size_t N = hn::Lanes(d);
  auto x0 = hn::Zero(d), x1 = hn::Zero(d), x2 = hn::Zero(d), x3 = hn::Zero(d);
  auto x4 = hn::Zero(d), x5 = hn::Zero(d), x6 = hn::Zero(d), x7 = hn::Zero(d);
  auto y0 = hn::Zero(d), y1 = hn::Zero(d), y2 = hn::Zero(d), y3 = hn::Zero(d);
  auto y4 = hn::Zero(d), y5 = hn::Zero(d), y6 = hn::Zero(d), y7 = hn::Zero(d);
  for (size_t i = 0; i < dim; ++i) {
    const auto lo = hn::LoadU(d, a_t + i * kPassRows + r0);
    const auto hi = hn::LoadU(d, a_t + i * kPassRows + r0 + N);
    const float* HWY_RESTRICT ki = k + i;
    auto kt = hn::Set(d, ki[0]);
    x0 = hn::MulAdd(lo, kt, x0), y0 = hn::MulAdd(hi, kt, y0);
    if constexpr (kTok > 1) {
      kt = hn::Set(d, ki[k_stride]);
      x1 = hn::MulAdd(lo, kt, x1), y1 = hn::MulAdd(hi, kt, y1);
    }
    if constexpr (kTok > 2) {
      kt = hn::Set(d, ki[2 * k_stride]);
      x2 = hn::MulAdd(lo, kt, x2), y2 = hn::MulAdd(hi, kt, y2);
      kt = hn::Set(d, ki[3 * k_stride]);
      x3 = hn::MulAdd(lo, kt, x3), y3 = hn::MulAdd(hi, kt, y3);
    }
    if constexpr (kTok > 4) {
      kt = hn::Set(d, ki[4 * k_stride]);
      x4 = hn::MulAdd(lo, kt, x4), y4 = hn::MulAdd(hi, kt, y4);
      kt = hn::Set(d, ki[5 * k_stride]);
      x5 = hn::MulAdd(lo, kt, x5), y5 = hn::MulAdd(hi, kt, y5);
      kt = hn::Set(d, ki[6 * k_stride]);
      x6 = hn::MulAdd(lo, kt, x6), y6 = hn::MulAdd(hi, kt, y6);
      kt = hn::Set(d, ki[7 * k_stride]);
      x7 = hn::MulAdd(lo, kt, x7), y7 = hn::MulAdd(hi, kt, y7);
    }
  }
  float* HWY_RESTRICT out = s + r0;
  hn::StoreU(x0, d, out), hn::StoreU(y0, d, out + N);
  if constexpr (kTok > 1)
    hn::StoreU(x1, d, out + kPassRows), hn::StoreU(y1, d, out + kPassRows + N);
  if constexpr (kTok > 2) {
    hn::StoreU(x2, d, out + 2 * kPassRows), hn::StoreU(y2, d, out + 2 * kPassRows + N);
    hn::StoreU(x3, d, out + 3 * kPassRows), hn::StoreU(y3, d, out + 3 * kPassRows + N);
  }
  if constexpr (kTok > 4) {
    hn::StoreU(x4, d, out + 4 * kPassRows), hn::StoreU(y4, d, out + 4 * kPassRows + N);
    hn::StoreU(x5, d, out + 5 * kPassRows), hn::StoreU(y5, d, out + 5 * kPassRows + N);
    hn::StoreU(x6, d, out + 6 * kPassRows), hn::StoreU(y6, d, out + 6 * kPassRows + N);
    hn::StoreU(x7, d, out + 7 * kPassRows), hn::StoreU(y7, d, out + 7 * kPassRows + N);
  }
}

// s[t * kPassRows + r] = a_r . k_t for rows [0, n_rows) and n_tokens f32
// keys; rows up to the next two vectors are a_t's zero padding. ahead: bytes
// from a key to the one to prefetch (0: none), a line at a time as the first
// rows' blocks start.
inline HWY_NOINLINE void ScoreRowsInLanes(const float* HWY_RESTRICT a_t, size_t n_rows,
                                          const float* HWY_RESTRICT k, size_t k_stride,
                                          size_t n_tokens, size_t dim, size_t ahead,
                                          float* HWY_RESTRICT s) {
  const size_t pair = 2 * hn::Lanes(RowsTag());
  const auto prefetch = [&](size_t j0, size_t j1) {
    // Addresses as integers: they may lie past the cache (PrefetchLine).
    uintptr_t row = reinterpret_cast<uintptr_t>(k) + (j0 * k_stride) * sizeof(float) + ahead;
    for (size_t j = j0; j < j1; ++j, row += k_stride * sizeof(float)) {
      for (size_t b = 0; b < dim * sizeof(float); b += 64) {
        __builtin_prefetch(reinterpret_cast<const void*>(row + b), 0, 3);
      }
    }
  };
  for (size_t r0 = 0; r0 < n_rows; r0 += pair) {
    size_t j = 0;
    for (; j + kLanesTokens <= n_tokens; j += kLanesTokens) {
      if (r0 == 0 && ahead != 0) prefetch(j, j + kLanesTokens);
      ScoreTokensInLanes<kLanesTokens>(a_t, r0, k + j * k_stride, k_stride, dim, s + j * kPassRows);
    }
    for (; j < n_tokens; ++j) {
      if (r0 == 0 && ahead != 0) prefetch(j, j + 1);
      ScoreTokensInLanes<1>(a_t, r0, k + j * k_stride, k_stride, dim, s + j * kPassRows);
    }
  }
}

// dst[t * dim + i] = k_t[i] as f32 for n_tokens rows (the lanes kernel
// broadcasts f32 elements; converting each chunk once is cheaper than
// converting each element once per two row vectors).
template <class D, typename T>
HWY_NOINLINE void KeysAsF32(D d, const T* HWY_RESTRICT k, size_t k_stride, size_t n_tokens,
                            size_t dim, size_t ahead, float* HWY_RESTRICT dst) {
  const size_t N = hn::Lanes(d);
  for (size_t t = 0; t < n_tokens; ++t) {
    const T* HWY_RESTRICT kt = k + t * k_stride;
    float* HWY_RESTRICT out = dst + t * dim;
    size_t i = 0;
    for (; i + N <= dim; i += N) {
      if (ahead != 0) PrefetchLine<true>(d, kt + i, ahead);
      hn::StoreU(LoadAsF32(d, kt + i), d, out + i);
    }
    for (; i < dim; ++i) out[i] = ElementAsF32(kt + i);
  }
}

// o[0, Lanes(d)) += x.
template <class D, class V>
HWY_INLINE void AddTo(D d, V x, float* HWY_RESTRICT o) {
  hn::StoreU(hn::Add(hn::LoadU(d, o), x), d, o);
}

// Vectors of V a pass of AccumulateRows keeps per row: 4 x 4 sums, four
// values and a weight fit in 32 registers; 4 x 2 and their three in 16.
// Eight sums, as 4 x 2 gives, are exactly the FMAs in flight that two
// pipes of latency 4 need, so any stall idles them: 16 leave slack.
constexpr size_t kMaxPassVectors = kVectorRegisters >= 32 ? 4 : 2;

// o_r[i, i + kVecs N) += sum_j p_r[j p_step] * v_j[i, i + kVecs N) for kRows
// rows: the kVecs vectors of every row's chunk sum stay in registers while
// the chunk's values stream, then are added to o (a block's part of the
// output, MATH.md section 1). v_ahead: the prefetch distance of the values.
template <size_t kRows, size_t kVecs, bool kBeside, class D, typename T>
HWY_INLINE void AccumulatePass(D d, const float* HWY_RESTRICT const* p, size_t p_step,
                               const T* HWY_RESTRICT v, size_t v_stride, size_t n_tokens,
                               float* HWY_RESTRICT const* o, PrefetchCursor<T>& cursor,
                               size_t v_ahead) {
  const size_t N = hn::Lanes(d);
  // Sizeless vectors (SVE) cannot be array elements: one name per sum.
  auto x0 = hn::Zero(d), y0 = hn::Zero(d), z0 = hn::Zero(d), u0 = hn::Zero(d);
  auto x1 = hn::Zero(d), y1 = hn::Zero(d), z1 = hn::Zero(d), u1 = hn::Zero(d);
  auto x2 = hn::Zero(d), y2 = hn::Zero(d), z2 = hn::Zero(d), u2 = hn::Zero(d);
  auto x3 = hn::Zero(d), y3 = hn::Zero(d), z3 = hn::Zero(d), u3 = hn::Zero(d);
  for (size_t j = 0; j < n_tokens; ++j) {
    const T* HWY_RESTRICT vj = v + j * v_stride;
    if (j % 8 == 0) cursor.Advance(8 * kVecs * N * sizeof(T));
    PrefetchLine<kBeside>(d, vj, v_ahead);
    if constexpr (kVecs > 1) PrefetchLine<kBeside>(d, vj + N, v_ahead);
    if constexpr (kVecs > 2) PrefetchLine<kBeside>(d, vj + 2 * N, v_ahead);
    if constexpr (kVecs > 3) PrefetchLine<kBeside>(d, vj + 3 * N, v_ahead);
    // Fewer than four vectors: the unused loads (of vj) are dead code.
    const auto vx = LoadAsF32Shared(d, vj);
    const auto vy = LoadAsF32Shared(d, vj + (kVecs > 1 ? N : 0));
    const auto vz = LoadAsF32Shared(d, vj + (kVecs > 2 ? 2 * N : 0));
    const auto vu = LoadAsF32Shared(d, vj + (kVecs > 3 ? 3 * N : 0));
    const auto w0 = hn::Set(d, p[0][j * p_step]);
    x0 = hn::MulAdd(w0, vx, x0);
    if constexpr (kVecs > 1) y0 = hn::MulAdd(w0, vy, y0);
    if constexpr (kVecs > 2) z0 = hn::MulAdd(w0, vz, z0);
    if constexpr (kVecs > 3) u0 = hn::MulAdd(w0, vu, u0);
    if constexpr (kRows > 1) {
      const auto w1 = hn::Set(d, p[1][j * p_step]);
      x1 = hn::MulAdd(w1, vx, x1);
      if constexpr (kVecs > 1) y1 = hn::MulAdd(w1, vy, y1);
      if constexpr (kVecs > 2) z1 = hn::MulAdd(w1, vz, z1);
      if constexpr (kVecs > 3) u1 = hn::MulAdd(w1, vu, u1);
    }
    if constexpr (kRows > 2) {
      const auto w2 = hn::Set(d, p[2][j * p_step]);
      x2 = hn::MulAdd(w2, vx, x2);
      if constexpr (kVecs > 1) y2 = hn::MulAdd(w2, vy, y2);
      if constexpr (kVecs > 2) z2 = hn::MulAdd(w2, vz, z2);
      if constexpr (kVecs > 3) u2 = hn::MulAdd(w2, vu, u2);
    }
    if constexpr (kRows > 3) {
      const auto w3 = hn::Set(d, p[3][j * p_step]);
      x3 = hn::MulAdd(w3, vx, x3);
      if constexpr (kVecs > 1) y3 = hn::MulAdd(w3, vy, y3);
      if constexpr (kVecs > 2) z3 = hn::MulAdd(w3, vz, z3);
      if constexpr (kVecs > 3) u3 = hn::MulAdd(w3, vu, u3);
    }
  }
  AddTo(d, x0, o[0]);
  if constexpr (kVecs > 1) AddTo(d, y0, o[0] + N);
  if constexpr (kVecs > 2) AddTo(d, z0, o[0] + 2 * N);
  if constexpr (kVecs > 3) AddTo(d, u0, o[0] + 3 * N);
  if constexpr (kRows > 1) {
    AddTo(d, x1, o[1]);
    if constexpr (kVecs > 1) AddTo(d, y1, o[1] + N);
    if constexpr (kVecs > 2) AddTo(d, z1, o[1] + 2 * N);
    if constexpr (kVecs > 3) AddTo(d, u1, o[1] + 3 * N);
  }
  if constexpr (kRows > 2) {
    AddTo(d, x2, o[2]);
    if constexpr (kVecs > 1) AddTo(d, y2, o[2] + N);
    if constexpr (kVecs > 2) AddTo(d, z2, o[2] + 2 * N);
    if constexpr (kVecs > 3) AddTo(d, u2, o[2] + 3 * N);
  }
  if constexpr (kRows > 3) {
    AddTo(d, x3, o[3]);
    if constexpr (kVecs > 1) AddTo(d, y3, o[3] + N);
    if constexpr (kVecs > 2) AddTo(d, z3, o[3] + 2 * N);
    if constexpr (kVecs > 3) AddTo(d, u3, o[3] + 3 * N);
  }
}

// Vectors the next pass of AccumulateRows takes when `left` remain: as many
// as the registers allow, but never a pass of one after others (it streams
// every token again for a quarter of a pair's FMAs, which cost AVX-512 its
// lead over AVX2 at d = 48 and 80: docs/results.md, "Four tokens per score
// step"), so five go as three and two, three without four registers as two
// and one.
constexpr size_t PassVectors(size_t left) {
  if (left >= kMaxPassVectors + 2 || left == kMaxPassVectors) return kMaxPassVectors;
  if (left == kMaxPassVectors + 1)
    return kMaxPassVectors >= 3 ? kMaxPassVectors - 1 : kMaxPassVectors;
  return left;
}

// o_r += sum_j p[r ldp + j p_step] * v_j for kRows rows (p_step: 1 for
// weights by row, kPassRows for a rows-in-lanes chunk), in passes of
// PassVectors vectors each.
template <size_t kRows, bool kBeside, class D, typename T>
HWY_NOINLINE void AccumulateRows(D d, const float* HWY_RESTRICT p, size_t ldp, size_t p_step,
                                 const T* HWY_RESTRICT v, size_t v_stride, size_t n_tokens,
                                 size_t dim, float* HWY_RESTRICT o, size_t ldo,
                                 PrefetchCursor<T>& cursor, size_t v_ahead) {
  const size_t N = hn::Lanes(d);
  const size_t n_vec = dim / N;
  float* HWY_RESTRICT o0 = o;
  float* HWY_RESTRICT o1 = o + (kRows > 1 ? ldo : 0);
  float* HWY_RESTRICT o2 = o + (kRows > 2 ? 2 * ldo : 0);
  float* HWY_RESTRICT o3 = o + (kRows > 3 ? 3 * ldo : 0);
  const float* HWY_RESTRICT p0 = p;
  const float* HWY_RESTRICT p1 = p + (kRows > 1 ? ldp : 0);
  const float* HWY_RESTRICT p2 = p + (kRows > 2 ? 2 * ldp : 0);
  const float* HWY_RESTRICT p3 = p + (kRows > 3 ? 3 * ldp : 0);
  const float* HWY_RESTRICT const rows_p[4] = {p0, p1, p2, p3};
  for (size_t vec = 0; vec < n_vec;) {
    const size_t i = vec * N, take = PassVectors(n_vec - vec);
    float* HWY_RESTRICT const rows_o[4] = {o0 + i, o1 + i, o2 + i, o3 + i};
    const auto pass = [&](auto vecs) {
      AccumulatePass<kRows, decltype(vecs)::value, kBeside>(d, rows_p, p_step, v + i, v_stride,
                                                            n_tokens, rows_o, cursor, v_ahead);
    };
    if constexpr (kMaxPassVectors >= 4) {
      if (take == 4) pass(std::integral_constant<size_t, 4>());
      if (take == 3) pass(std::integral_constant<size_t, 3>());
    }
    if (take == 2) pass(std::integral_constant<size_t, 2>());
    if (take == 1) pass(std::integral_constant<size_t, 1>());
    vec += take;
  }
  for (size_t i = n_vec * N; i < dim; ++i) {  // the dims after the last whole vector
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    for (size_t j = 0; j < n_tokens; ++j) {
      const float vf = ElementAsF32(v + j * v_stride + i);
      s0 += p0[j * p_step] * vf;
      if constexpr (kRows > 1) s1 += p1[j * p_step] * vf;
      if constexpr (kRows > 2) s2 += p2[j * p_step] * vf;
      if constexpr (kRows > 3) s3 += p3[j * p_step] * vf;
    }
    o0[i] += s0;
    if constexpr (kRows > 1) o1[i] += s1;
    if constexpr (kRows > 2) o2[i] += s2;
    if constexpr (kRows > 3) o3[i] += s3;
  }
}

// Largest of x[0, n), n >= 1; *finite says whether every element is finite.
template <class D>
HWY_INLINE float MaxOf(D d, const float* HWY_RESTRICT x, size_t n, bool* finite) {
  const size_t N = hn::Lanes(d);
  float result = x[0];
  bool all_finite = true;
  size_t j = 0;
  if (n >= N) {
    auto mx = hn::LoadU(d, x);
    auto ok = hn::IsFinite(mx);
    for (j = N; j + N <= n; j += N) {
      const auto xj = hn::LoadU(d, x + j);
      ok = hn::And(ok, hn::IsFinite(xj));
      mx = hn::Max(mx, xj);
    }
    all_finite = hn::AllTrue(d, ok);
    result = hn::GetLane(hn::MaxOfLanes(d, mx));
  }
  for (; j < n; ++j) {
    all_finite &= std::isfinite(x[j]);
    result = std::max(result, x[j]);
  }
  *finite = all_finite;
  return result;
}

// x[j] <- exp(x[j] - shift) for j in [0, n); returns their sum. NaN inputs
// stay NaN (Highway's Exp maps them to 0), so bad input cannot vanish; they
// are not passed to Exp, whose float-to-int conversion on the emulated
// targets (EMU128, SCALAR) is undefined behaviour for NaN.
template <class D>
HWY_INLINE float ExpShiftedSum(D d, float* HWY_RESTRICT x, size_t n, float shift) {
  const size_t N = hn::Lanes(d);
  const auto vshift = hn::Set(d, shift);
  auto sum = hn::Zero(d);
  size_t j = 0;
  for (; j + N <= n; j += N) {
    const auto arg = hn::Sub(hn::LoadU(d, x + j), vshift);
    const auto is_number = hn::Eq(arg, arg);
    const auto e = hn::IfThenElse(is_number, hn::Exp(d, hn::IfThenElseZero(is_number, arg)), arg);
    hn::StoreU(e, d, x + j);
    sum = hn::Add(sum, e);
  }
  float total = hn::GetLane(hn::SumOfLanes(d, sum));
  for (; j < n; ++j) {
    x[j] = std::exp(x[j] - shift);
    total += x[j];
  }
  return total;
}

// The rows of one pass: tiles of up to kTileRows rows, each tile the query
// rows of one KV head, kPassRows rows in all. A pass walks the cache once,
// chunk by chunk, every tile taking its turn on each chunk while the chunk is
// in cache (for a decode step, all heads of a layer in one pass: the cache is
// streamed in memory order once). Per-row arrays live in scratch.
struct Pass {
  float* a;        // [kPassRows][ld] scaled queries
  float* o;        // [kPassRows][ld] un-normalised outputs of the blocks done
  float* o_block;  // [kPassRows][ld] the current block's part of them
  float* p;        // [kPassRows][kChunkTokens] scores, then softmax weights
  // Rows in the lanes (ScoreRowsInLanes): a transposed, [dim][kPassRows];
  // a chunk's scores, [token][kPassRows]; its keys as f32, [token][dim].
  bool rows_in_lanes;
  size_t s_t_first;  // the token of s_t's first row
  float* a_t;
  float* s_t;
  float* k_f32;
  size_t chunks_in_block;
  float m[kPassRows];
  double l[kPassRows];  // a scalar per chunk: double costs nothing
  // A score of the row was NaN or infinite: from non-finite input, or from
  // an overflow (every score -inf would otherwise look like a masked row).
  bool bad_score[kPassRows];
  size_t pos[kPassRows];      // query position of each row
  size_t q_token[kPassRows];  // query token index of each row
  size_t q_head[kPassRows];   // query head of each row
  size_t ld;
  size_t n_rows;
  struct TileRows {
    size_t first_row, n_rows, kv_head;
  } tiles[kPassRows];
  size_t n_tiles;
};

// The part of chunk [c0, c1) that row r sees; the chunk lies wholly in the
// sink segment (tokens < n_sinks, seen up to the row's position) or in the
// window segment (seen from lo to the row's position).
struct Interval {
  size_t begin, end;
};

HWY_INLINE Interval RowInterval(const AttentionProblem& pb, const Pass& pass, size_t r,
                                bool sink_segment, size_t c0, size_t c1) {
  const size_t pos = pass.pos[r];
  size_t lo = 0;
  if (!sink_segment && pb.window != 0 && pos + 1 > pb.window) lo = pos + 1 - pb.window;
  Interval iv{std::max(c0, lo), std::min(c1, pos + 1)};
  if (iv.end < iv.begin) iv.end = iv.begin;
  return iv;
}

// The scales of an int8 chunk's tokens, [j - c0] (MATH.md section 7): the
// kernels score and sum the raw int8 vectors, then scale each token's score
// by its K scale and its softmax weight by its V scale, a few multiplies per
// token and row instead of one per element.
struct ChunkScales {
  float k[kChunkTokens], v[kChunkTokens];
};

// x[j] *= scale[j] for j in [0, n).
HWY_INLINE void MultiplyByScales(float* HWY_RESTRICT x, const float* HWY_RESTRICT scale, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t j = 0;
  for (; j + N <= n; j += N) {
    hn::StoreU(hn::Mul(hn::LoadU(d, x + j), hn::LoadU(d, scale + j)), d, x + j);
  }
  for (; j < n; ++j) x[j] *= scale[j];
}

// The scores of rows r0 .. r0 + kRows - 1 against keys [ja, jb) (k: key
// ja), then each row's online-softmax update over its interval iv[r]: its
// weights in p, 0 outside iv[r].
template <size_t kRows, class D, typename T>
HWY_INLINE void ScoreRowGroup(D d, const AttentionProblem& pb, Pass& pass, size_t r0, const T* k,
                              size_t ja, size_t jb, const Interval* iv, const ChunkScales* scales,
                              size_t c0, PrefetchCursor<T>& cursor, size_t k_ahead) {
  const size_t dim = pb.head_dim;
  // d spans the head dimension (it may be narrower than a full vector: see
  // AttentionTyped); the loops over a row's tokens use full vectors.
  const hn::ScalableTag<float> d_tokens;
  float* p = pass.p + r0 * kChunkTokens;
  const float* a = pass.a + r0 * pass.ld;
  if (k_ahead != 0) {
    ScoreRows<kRows, true>(d, a, pass.ld, k, pb.k_token_stride, jb - ja, dim, p, kChunkTokens,
                           cursor, k_ahead);
  } else {
    ScoreRows<kRows, false>(d, a, pass.ld, k, pb.k_token_stride, jb - ja, dim, p, kChunkTokens,
                            cursor, 0);
  }
  for (size_t r = 0; r < kRows; ++r) {
    float* pr = p + r * kChunkTokens;  // index j - ja
    const size_t b = iv[r].begin, e = iv[r].end;
    if (b >= e) {
      std::fill(pr, pr + (jb - ja), 0.0f);
      continue;
    }
    if (scales != nullptr) MultiplyByScales(pr + (b - ja), scales->k + (b - c0), e - b);
    float& m = pass.m[r0 + r];
    double& l = pass.l[r0 + r];
    bool finite;
    const float chunk_max = MaxOf(d_tokens, pr + (b - ja), e - b, &finite);
    pass.bad_score[r0 + r] |= !finite;
    if (chunk_max > m) {  // rescale what was accumulated under the old max
      const float correction = std::exp(m - chunk_max);
      l *= correction;
      float* o = pass.o + (r0 + r) * pass.ld;
      float* o_block = pass.o_block + (r0 + r) * pass.ld;
      for (size_t i = 0; i < dim; ++i) o[i] *= correction, o_block[i] *= correction;
      m = chunk_max;
    }
    l += ExpShiftedSum(d_tokens, pr + (b - ja), e - b, m);
    if (scales != nullptr) MultiplyByScales(pr + (b - ja), scales->v + (b - c0), e - b);
    std::fill(pr, pr + (b - ja), 0.0f);
    std::fill(pr + (e - ja), pr + (jb - ja), 0.0f);
  }
}

// Rows r0 .. r0 + kRows - 1 (one KV head) against chunk [c0, c1). scales:
// the chunk's int8 scales (nullptr for the float dtypes).
template <size_t kRows, class D, typename T>
HWY_INLINE void ProcessRowGroup(D d, const AttentionProblem& pb, Pass& pass, size_t r0,
                                const T* k_head, const T* v_head, const ChunkScales* scales,
                                bool sink_segment, size_t c0, size_t c1, PrefetchCursor<T>& cursor,
                                PrefetchDistance ahead) {
  Interval iv[kRows];
  size_t ja = c1, jb = c0;  // union of the rows' intervals
  for (size_t r = 0; r < kRows; ++r) {
    iv[r] = RowInterval(pb, pass, r0 + r, sink_segment, c0, c1);
    if (iv[r].begin < iv[r].end) {
      ja = std::min(ja, iv[r].begin);
      jb = std::max(jb, iv[r].end);
    }
  }
  if (ja >= jb) return;
  const size_t dim = pb.head_dim;
  // The group's weights: by row in p, or where ProcessChunk left every row's
  // in s_t (by token, 0 where a row does not see the token).
  const float* p = pass.p + r0 * kChunkTokens;
  size_t ldp = kChunkTokens, p_step = 1;
  if (pass.rows_in_lanes) {
    p = pass.s_t + (ja - pass.s_t_first) * kPassRows + r0;
    ldp = 1, p_step = kPassRows;
  } else {
    ScoreRowGroup<kRows>(d, pb, pass, r0, k_head + ja * pb.k_token_stride, ja, jb, iv, scales, c0,
                         cursor, ahead.k);
  }
  const T* v = v_head + ja * pb.v_token_stride;
  float* o_block = pass.o_block + r0 * pass.ld;
  if (ahead.v != 0) {
    AccumulateRows<kRows, true>(d, p, ldp, p_step, v, pb.v_token_stride, jb - ja, dim, o_block,
                                pass.ld, cursor, ahead.v);
  } else {
    AccumulateRows<kRows, false>(d, p, ldp, p_step, v, pb.v_token_stride, jb - ja, dim, o_block,
                                 pass.ld, cursor, 0);
  }
}

// A rows-in-lanes pass (one KV head) against chunk [c0, c1): the keys any
// row sees, as f32 (prefetching the next chunk's beside the loads), then
// every row's scores into s_t.
template <class D, typename T>
HWY_INLINE void ScoreChunkInLanes(D d, const AttentionProblem& pb, Pass& pass, size_t ja, size_t jb,
                                  size_t k_ahead) {
  const T* k = static_cast<const T*>(pb.k) + pass.tiles[0].kv_head * pb.k_head_stride +
               ja * pb.k_token_stride;
  if constexpr (std::is_same_v<T, float>) {
    (void)d;
    ScoreRowsInLanes(pass.a_t, pass.n_rows, k, pb.k_token_stride, jb - ja, pb.head_dim, k_ahead,
                     pass.s_t);
  } else {
    KeysAsF32(d, k, pb.k_token_stride, jb - ja, pb.head_dim, k_ahead, pass.k_f32);
    ScoreRowsInLanes(pass.a_t, pass.n_rows, pass.k_f32, pb.head_dim, jb - ja, pb.head_dim, 0,
                     pass.s_t);
  }
  pass.s_t_first = ja;
}

// The online-softmax update (MATH.md section 1) of every row of a
// rows-in-lanes pass, whose scores of tokens [ja, jb) are in s_t: the same
// steps as ScoreRowGroup's per row, for RowsTag's lanes of rows at a time.
// Leaves the weights in s_t, 0 where a row does not see the token.
HWY_INLINE void SoftmaxInLanes(const AttentionProblem& pb, Pass& pass, bool sink_segment, size_t c0,
                               size_t c1, size_t ja, size_t jb, const ChunkScales* scales) {
  const RowsTag d;
  const hn::RebindToSigned<decltype(d)> di;
  const size_t N = hn::Lanes(d);
  const size_t n = jb - ja, dim = pb.head_dim;
  // Each row's visible tokens, relative to ja; none for the padding rows.
  HWY_ALIGN int32_t begin[kPassRows], end[kPassRows];
  HWY_ALIGN float m[kPassRows], chunk_max[kPassRows], sums[kPassRows];
  HWY_ALIGN int32_t finite[kPassRows];
  for (size_t r = 0; r < kPassRows; ++r) {
    begin[r] = end[r] = 0;
    m[r] = kInitialMax;
    if (r >= pass.n_rows) continue;
    const Interval iv = RowInterval(pb, pass, r, sink_segment, c0, c1);
    if (iv.begin < iv.end) {
      begin[r] = static_cast<int32_t>(iv.begin - ja);
      end[r] = static_cast<int32_t>(iv.end - ja);
    }
    m[r] = pass.m[r];
  }
  // Vectors of rows that all see every token of [ja, jb) (all but the
  // diagonal chunks of causal prefill) need no interval masks, and once
  // their scores are known to be finite, no NaN guard on the exps: 8-10%
  // of f32 prefill 4096 x d 128 (docs/results.md, "Weights in place").
  bool unmasked[kPassRows];
  for (size_t r0 = 0; r0 < pass.n_rows; r0 += N) {
    bool all = true;
    for (size_t r = r0; r < r0 + N; ++r) all &= begin[r] == 0 && end[r] == static_cast<int32_t>(n);
    unmasked[r0 / N] = all;
  }
  // The scores of token j, rows [r0, r0 + N), times the int8 key scale.
  const auto score = [&](size_t j, size_t r0) {
    float* HWY_RESTRICT sj = pass.s_t + j * kPassRows + r0;
    auto x = hn::LoadU(d, sj);
    if (scales != nullptr) {
      x = hn::Mul(x, hn::Set(d, scales->k[ja - c0 + j]));
      hn::StoreU(x, d, sj);
    }
    return x;
  };
  for (size_t r0 = 0; r0 < pass.n_rows; r0 += N) {
    auto largest = hn::Set(d, kInitialMax);
    if (unmasked[r0 / N]) {
      auto ok = hn::IsFinite(largest);
      for (size_t j = 0; j < n; ++j) {
        const auto x = score(j, r0);
        largest = hn::Max(largest, x);
        ok = hn::And(ok, hn::IsFinite(x));
      }
      hn::Store(largest, d, chunk_max + r0);
      hn::Store(hn::VecFromMask(di, hn::RebindMask(di, ok)), di, finite + r0);
      unmasked[r0 / N] = hn::AllTrue(d, ok);
      continue;
    }
    const auto first = hn::Load(di, begin + r0), last = hn::Load(di, end + r0);
    auto ok = hn::Set(di, 1);
    for (size_t j = 0; j < n; ++j) {
      const auto x = score(j, r0);
      const auto at = hn::Set(di, static_cast<int32_t>(j));
      const auto after = hn::Set(di, static_cast<int32_t>(j + 1));
      const auto seen = hn::RebindMask(d, hn::And(hn::Lt(first, after), hn::Lt(at, last)));
      largest = hn::IfThenElse(seen, hn::Max(largest, x), largest);
      ok = hn::IfThenElseZero(hn::RebindMask(di, hn::Or(hn::Not(seen), hn::IsFinite(x))), ok);
    }
    hn::Store(largest, d, chunk_max + r0);
    hn::Store(ok, di, finite + r0);
  }
  for (size_t r = 0; r < pass.n_rows; ++r) {
    if (begin[r] == end[r]) continue;
    pass.bad_score[r] |= finite[r] == 0;
    if (chunk_max[r] > m[r]) {  // rescale what was accumulated under the old max
      const float correction = std::exp(m[r] - chunk_max[r]);
      pass.l[r] *= correction;
      float* o = pass.o + r * pass.ld;
      float* o_block = pass.o_block + r * pass.ld;
      for (size_t i = 0; i < dim; ++i) o[i] *= correction, o_block[i] *= correction;
      m[r] = pass.m[r] = chunk_max[r];
    }
  }
  for (size_t r0 = 0; r0 < pass.n_rows; r0 += N) {
    const auto shift = hn::Load(d, m + r0);
    auto sum = hn::Zero(d);
    if (unmasked[r0 / N]) {
      for (size_t j = 0; j < n; ++j) {
        float* HWY_RESTRICT sj = pass.s_t + j * kPassRows + r0;
        auto w = hn::Exp(d, hn::Sub(hn::LoadU(d, sj), shift));
        sum = hn::Add(sum, w);
        if (scales != nullptr) w = hn::Mul(w, hn::Set(d, scales->v[ja - c0 + j]));
        hn::StoreU(w, d, sj);
      }
      hn::Store(sum, d, sums + r0);
      continue;
    }
    const auto first = hn::Load(di, begin + r0), last = hn::Load(di, end + r0);
    for (size_t j = 0; j < n; ++j) {
      float* HWY_RESTRICT sj = pass.s_t + j * kPassRows + r0;
      const auto at = hn::Set(di, static_cast<int32_t>(j));
      const auto after = hn::Set(di, static_cast<int32_t>(j + 1));
      const auto seen = hn::RebindMask(d, hn::And(hn::Lt(first, after), hn::Lt(at, last)));
      // As ExpShiftedSum: NaN stays NaN and is never passed to Exp.
      const auto arg = hn::Sub(hn::LoadU(d, sj), shift);
      const auto number = hn::And(seen, hn::Eq(arg, arg));
      auto w = hn::IfThenElse(number, hn::Exp(d, hn::IfThenElseZero(number, arg)),
                              hn::IfThenElseZero(seen, arg));
      sum = hn::Add(sum, w);
      if (scales != nullptr) w = hn::Mul(w, hn::Set(d, scales->v[ja - c0 + j]));
      hn::StoreU(w, d, sj);
    }
    hn::Store(sum, d, sums + r0);
  }
  for (size_t r = 0; r < pass.n_rows; ++r) {
    if (begin[r] != end[r]) pass.l[r] += sums[r];
  }
}

// Every tile of the pass against chunk [c0, c1); beside_loads: the prefetch
// distance of a one-head pass's loads (0 where the cursor prefetches).
template <class D, typename T>
HWY_NOINLINE void ProcessChunk(D d, const AttentionProblem& pb, Pass& pass, bool sink_segment,
                               size_t c0, size_t c1, PrefetchCursor<T>& cursor,
                               PrefetchDistance beside_loads) {
  const T* k_all = static_cast<const T*>(pb.k);
  const T* v_all = static_cast<const T*>(pb.v);
  ChunkScales chunk_scales;
  const ChunkScales* scales = nullptr;
  const auto gather_scales = [&](size_t kv_head) {
    const covattn_int8_scales& s = *pb.int8_scales;
    for (size_t j = c0; j < c1; ++j) {
      chunk_scales.k[j - c0] = s.k_scale[j * s.k_token_stride + kv_head * s.k_head_stride];
      chunk_scales.v[j - c0] = s.v_scale[j * s.v_token_stride + kv_head * s.v_head_stride];
    }
    scales = &chunk_scales;
  };
  if (pass.rows_in_lanes) {  // scores and weights of every row here; the tiles only accumulate
    size_t ja = c1, jb = c0;
    for (size_t r = 0; r < pass.n_rows; ++r) {
      const Interval iv = RowInterval(pb, pass, r, sink_segment, c0, c1);
      if (iv.begin < iv.end) ja = std::min(ja, iv.begin), jb = std::max(jb, iv.end);
    }
    if (ja >= jb) return;
    if constexpr (std::is_same_v<T, int8_t>) gather_scales(pass.tiles[0].kv_head);
    ScoreChunkInLanes<D, T>(d, pb, pass, ja, jb, beside_loads.k);
    SoftmaxInLanes(pb, pass, sink_segment, c0, c1, ja, jb, scales);
  }
  for (size_t t = 0; t < pass.n_tiles; ++t) {
    const Pass::TileRows& tile = pass.tiles[t];
    const bool first_of_head = t == 0 || tile.kv_head != pass.tiles[t - 1].kv_head;
    // Beside the loads only a head's first row group prefetches: its others
    // load the same rows (prefill, wide GQA groups).
    PrefetchDistance ahead = first_of_head ? beside_loads : PrefetchDistance{0, 0};
    const T* k_head = k_all + tile.kv_head * pb.k_head_stride;
    const T* v_head = v_all + tile.kv_head * pb.v_head_stride;
    if constexpr (std::is_same_v<T, int8_t>) {
      if (first_of_head && !pass.rows_in_lanes) gather_scales(tile.kv_head);
    }
    size_t r = tile.first_row;
    const size_t end = tile.first_row + tile.n_rows;
    for (; r + 4 <= end; r += 4) {
      ProcessRowGroup<4>(d, pb, pass, r, k_head, v_head, scales, sink_segment, c0, c1, cursor,
                         ahead);
      ahead = {0, 0};
    }
    switch (end - r) {
      case 3:
        ProcessRowGroup<3>(d, pb, pass, r, k_head, v_head, scales, sink_segment, c0, c1, cursor,
                           ahead);
        break;
      case 2:
        ProcessRowGroup<2>(d, pb, pass, r, k_head, v_head, scales, sink_segment, c0, c1, cursor,
                           ahead);
        break;
      case 1:
        ProcessRowGroup<1>(d, pb, pass, r, k_head, v_head, scales, sink_segment, c0, c1, cursor,
                           ahead);
        break;
      default:
        break;
    }
  }
}

// Adds the current block's part of each row's output to the output.
HWY_INLINE void FinishBlock(const AttentionProblem& pb, Pass& pass) {
  for (size_t r = 0; r < pass.n_rows; ++r) {
    float* HWY_RESTRICT o = pass.o + r * pass.ld;
    float* HWY_RESTRICT o_block = pass.o_block + r * pass.ld;
    for (size_t i = 0; i < pb.head_dim; ++i) o[i] += o_block[i], o_block[i] = 0.0f;
  }
  pass.chunks_in_block = 0;
}

// Runs the chunks of [begin, end) in order, prefetching each next one.
template <class D, typename T>
HWY_INLINE void ProcessSegment(D d, const AttentionProblem& pb, Pass& pass, bool sink_segment,
                               size_t begin, size_t end) {
  PrefetchCursor<T> cursor;
  const size_t h0 = pass.tiles[0].kv_head, h1 = pass.tiles[pass.n_tiles - 1].kv_head + 1;
  const bool one_head = h1 - h0 == 1;
  const size_t chunk = detail::ChunkTokensFor(pb.head_dim * sizeof(T));
  const size_t chunks_per_block = kChunksPerBlock * (kChunkTokens / chunk);
  for (size_t c0 = begin; c0 < end; c0 += chunk) {
    const size_t c1 = std::min(end, c0 + chunk);
    // A pass over several heads prefetches through the cursor, one head's
    // beside its loads (PrefetchDistance).
    const size_t next_tokens = std::min(end - c1, chunk);
    PrefetchDistance beside_loads{0, 0};
    if (one_head && next_tokens != 0) {
      beside_loads = {chunk * pb.k_token_stride * sizeof(T), chunk * pb.v_token_stride * sizeof(T)};
    }
    cursor.Reset(pb, c1, one_head ? 0 : next_tokens, h0, h1);
    ProcessChunk<D, T>(d, pb, pass, sink_segment, c0, c1, cursor, beside_loads);
    if (++pass.chunks_in_block == chunks_per_block) FinishBlock(pb, pass);
  }
}

// Writes the pass's rows to the sink; records masked and non-finite rows.
// first_row: the pass's first row within the run (for run-indexed states).
HWY_INLINE void EmitPass(const AttentionProblem& pb, const Pass& pass,
                         const detail::AttentionRows& rows, size_t first_row,
                         const AttentionResultSink& sink, AttentionOutcome* outcome) {
  const size_t dim = pb.head_dim;
  for (size_t r = 0; r < pass.n_rows; ++r) {
    const float* o = pass.o + r * pass.ld;
    const size_t row = pass.q_token[r] * pb.n_q_heads + pass.q_head[r];
    const size_t state_row = rows.run_indexed ? first_row + r : row;
    if (sink.out == nullptr) {  // a partial state: the row as it stands
      sink.m[state_row] = pass.m[r];
      sink.l[state_row] = static_cast<float>(pass.l[r]);
      std::copy(o, o + dim, sink.o + state_row * dim);
      bool finite =
          !pass.bad_score[r] && std::isfinite(pass.m[r]) && std::isfinite(sink.l[state_row]);
      for (size_t i = 0; i < dim; ++i) finite &= std::isfinite(o[i]);
      outcome->nonfinite |= !finite;
      continue;
    }
    float* out =
        sink.out + pass.q_token[r] * sink.out_token_stride + pass.q_head[r] * sink.out_head_stride;
    float* log_z = sink.log_z != nullptr ? sink.log_z + row : nullptr;
    const detail::RowOutcome result = detail::FinalizeRow(pass.m[r], static_cast<float>(pass.l[r]),
                                                          o, dim, !pass.bad_score[r], out, log_z);
    outcome->fully_masked |= result == detail::RowOutcome::kMasked;
    outcome->nonfinite |= result == detail::RowOutcome::kNonfinite;
  }
}

// Fills the pass with rows [begin, end) (whole tiles, at most kPassRows
// rows; numbered as attention.h says, so a tile's rows share positions as far
// as possible).
HWY_INLINE void FillPass(const AttentionProblem& pb, Pass& pass, size_t begin, size_t end) {
  const size_t dim = pb.head_dim;
  const size_t per_kv_head = detail::RowsPerKvHead(pb);
  pass.n_rows = pass.n_tiles = pass.chunks_in_block = 0;
  for (size_t row = begin; row < end;) {
    const size_t kv_head = row / per_kv_head;
    const size_t n = std::min(kTileRows, per_kv_head - row % per_kv_head);
    pass.tiles[pass.n_tiles++] = Pass::TileRows{pass.n_rows, n, kv_head};
    for (size_t i = 0; i < n; ++i) {
      const size_t r = pass.n_rows + i;
      const detail::RowCoordinates at = detail::RowAt(pb, row + i);
      pass.q_token[r] = at.q_token;
      pass.q_head[r] = at.q_head;
      pass.pos[r] = pb.n_past + at.q_token;
      pass.m[r] = kInitialMax;
      pass.l[r] = 0.0f;
      pass.bad_score[r] = false;
      const float* q = pb.q + at.q_token * pb.q_token_stride + at.q_head * pb.q_head_stride;
      float* a = pass.a + r * pass.ld;
      for (size_t c = 0; c < dim; ++c) a[c] = pb.scale * q[c];
      std::fill(pass.o + r * pass.ld, pass.o + (r + 1) * pass.ld, 0.0f);
      std::fill(pass.o_block + r * pass.ld, pass.o_block + (r + 1) * pass.ld, 0.0f);
    }
    pass.n_rows += n;
    row += n;
  }
}

// Decides whether the pass scores with its rows in the lanes (many rows,
// one KV head) and if so fills a_t, zero beyond the rows up to the next
// two vectors.
HWY_INLINE void TransposeForLanes(const AttentionProblem& pb, Pass& pass) {
  pass.rows_in_lanes = false;
#if HWY_TARGET != HWY_SCALAR
  const size_t pair = 2 * hn::Lanes(RowsTag());
  if (pass.n_rows < kRowsInLanesMinRows || kPassRows % pair != 0 ||
      pass.tiles[0].kv_head != pass.tiles[pass.n_tiles - 1].kv_head) {
    return;
  }
  pass.rows_in_lanes = true;
  const size_t padded = (pass.n_rows + pair - 1) / pair * pair;
  for (size_t i = 0; i < pb.head_dim; ++i) {
    float* HWY_RESTRICT column = pass.a_t + i * kPassRows;
    for (size_t r = 0; r < pass.n_rows; ++r) column[r] = pass.a[r * pass.ld + i];
    std::fill(column + pass.n_rows, column + padded, 0.0f);
  }
#else
  (void)pb;
#endif
}

// Walks the tokens any row of the pass may see: the sinks, then from the
// lowest window start up to the highest position, clipped to the range
// (RowInterval gives each row its part).
template <class D, typename T>
HWY_INLINE void RunPass(D d, const AttentionProblem& pb, Pass& pass) {
  size_t pos_first = pass.pos[0], pos_last = pass.pos[0];
  for (size_t r = 1; r < pass.n_rows; ++r) {
    pos_first = std::min(pos_first, pass.pos[r]);
    pos_last = std::max(pos_last, pass.pos[r]);
  }
  const detail::VisibleTokens v = detail::VisibleTokensOf(pb, pos_first, pos_last);
  ProcessSegment<D, T>(d, pb, pass, /*sink_segment=*/true, v.sink_begin, v.sink_end);
  ProcessSegment<D, T>(d, pb, pass, /*sink_segment=*/false, v.window_begin, v.window_end);
  FinishBlock(pb, pass);
}

// The passes of one run over rows, with vectors of d along the head dimension.
template <class D, typename T>
HWY_NOINLINE void RunPasses(D d, const AttentionProblem& pb, const detail::AttentionRows& rows,
                            const AttentionResultSink& sink, void* scratch,
                            AttentionOutcome* outcome) {
  const detail::AttentionScratchLayout layout = detail::AttentionScratchFor(pb.head_dim);
  float* base = detail::AlignedAttentionScratch(scratch);
  Pass pass;
  pass.ld = layout.ld;
  pass.a = base + layout.a;
  pass.o = base + layout.o;
  pass.o_block = base + layout.o_block;
  pass.p = base + layout.p;
  pass.a_t = base + layout.a_t;
  pass.s_t = base + layout.s_t;
  pass.k_f32 = base + layout.k_f32;
  for (size_t begin = rows.begin; begin < rows.end;) {
    const size_t end = detail::PassEnd(pb, begin, rows.end);
    FillPass(pb, pass, begin, end);
    TransposeForLanes(pb, pass);
    RunPass<D, T>(d, pb, pass);
    EmitPass(pb, pass, rows, begin - rows.begin, sink, outcome);
    begin = end;
  }
}

// Which of the vector widths `lanes` (widest first) runs a head of dim
// elements: the widest that divides dim, else the widest that fits in it
// (the rest of each row is a scalar tail), else the narrowest. A head
// narrower than a full vector (d = 8 or 12 on AVX-512) would otherwise be
// all scalar tail.
HWY_INLINE size_t HeadVectorChoice(size_t dim, const size_t (&lanes)[3]) {
  for (size_t c = 0; c < 3; ++c) {
    if (dim % lanes[c] == 0) return c;
  }
  for (size_t c = 0; c < 3; ++c) {
    if (lanes[c] <= dim) return c;
  }
  return 2;
}

// One attention call over K/V of element type T. Where the capped tags equal
// the full one (4-lane targets), the three calls are one instantiation.
template <typename T>
void AttentionTyped(const AttentionProblem& pb, const detail::AttentionRows& rows,
                    const AttentionResultSink& sink, void* scratch, AttentionOutcome* outcome) {
  const hn::ScalableTag<float> d_full;
  const hn::CappedTag<float, 8> d8;
  const hn::CappedTag<float, 4> d4;
  const size_t lanes[3] = {hn::Lanes(d_full), hn::Lanes(d8), hn::Lanes(d4)};
  switch (HeadVectorChoice(pb.head_dim, lanes)) {
    case 0:
      RunPasses<decltype(d_full), T>(d_full, pb, rows, sink, scratch, outcome);
      break;
    case 1:
      RunPasses<decltype(d8), T>(d8, pb, rows, sink, scratch, outcome);
      break;
    default:
      RunPasses<decltype(d4), T>(d4, pb, rows, sink, scratch, outcome);
      break;
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn
HWY_AFTER_NAMESPACE();

#endif  // include guard
