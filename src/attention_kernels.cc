// Exact streaming softmax attention (MATH.md section 1), compiled once per
// Highway target. Queries are processed in tiles of up to kTileRows rows
// (query positions x query heads sharing one KV head), keys and values in
// chunks of kChunkTokens tokens, so every K/V element loaded serves all rows
// of a tile and no score matrix larger than a tile x a chunk ever exists.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "attention_kernels.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention.h"
#include "load-inl.h"

HWY_BEFORE_NAMESPACE();
namespace covattn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail::AttentionOutcome;
using detail::AttentionProblem;
using detail::AttentionResultSink;
using detail::kChunkTokens;
using detail::kInitialMax;
using detail::kTileRows;

// Scores s[r][j] = a_r . k_j for kRows rows and n_tokens tokens. Two
// accumulators per row hide the FMA latency.
template <size_t kRows, class D, typename T>
HWY_INLINE void ScoreRows(D d, const float* HWY_RESTRICT a, size_t lda,
                          const T* HWY_RESTRICT k, size_t k_stride, size_t n_tokens, size_t dim,
                          float* HWY_RESTRICT s, size_t lds) {
  const size_t N = hn::Lanes(d);
  const size_t dim_vec = dim - dim % N;
  const size_t dim_vec2 = dim - dim % (2 * N);
  const float* HWY_RESTRICT a0 = a;
  const float* HWY_RESTRICT a1 = a + (kRows > 1 ? lda : 0);
  const float* HWY_RESTRICT a2 = a + (kRows > 2 ? 2 * lda : 0);
  const float* HWY_RESTRICT a3 = a + (kRows > 3 ? 3 * lda : 0);
  for (size_t j = 0; j < n_tokens; ++j) {
    const T* HWY_RESTRICT kj = k + j * k_stride;
    auto x0 = hn::Zero(d), x1 = hn::Zero(d), x2 = hn::Zero(d), x3 = hn::Zero(d);
    auto y0 = hn::Zero(d), y1 = hn::Zero(d), y2 = hn::Zero(d), y3 = hn::Zero(d);
    size_t i = 0;
    for (; i < dim_vec2; i += 2 * N) {
      const auto kx = LoadAsF32(d, kj + i);
      const auto ky = LoadAsF32(d, kj + i + N);
      x0 = hn::MulAdd(hn::LoadU(d, a0 + i), kx, x0);
      y0 = hn::MulAdd(hn::LoadU(d, a0 + i + N), ky, y0);
      if (kRows > 1) {
        x1 = hn::MulAdd(hn::LoadU(d, a1 + i), kx, x1);
        y1 = hn::MulAdd(hn::LoadU(d, a1 + i + N), ky, y1);
      }
      if (kRows > 2) {
        x2 = hn::MulAdd(hn::LoadU(d, a2 + i), kx, x2);
        y2 = hn::MulAdd(hn::LoadU(d, a2 + i + N), ky, y2);
      }
      if (kRows > 3) {
        x3 = hn::MulAdd(hn::LoadU(d, a3 + i), kx, x3);
        y3 = hn::MulAdd(hn::LoadU(d, a3 + i + N), ky, y3);
      }
    }
    for (; i < dim_vec; i += N) {
      const auto kx = LoadAsF32(d, kj + i);
      x0 = hn::MulAdd(hn::LoadU(d, a0 + i), kx, x0);
      if (kRows > 1) x1 = hn::MulAdd(hn::LoadU(d, a1 + i), kx, x1);
      if (kRows > 2) x2 = hn::MulAdd(hn::LoadU(d, a2 + i), kx, x2);
      if (kRows > 3) x3 = hn::MulAdd(hn::LoadU(d, a3 + i), kx, x3);
    }
    float s0 = hn::GetLane(hn::SumOfLanes(d, hn::Add(x0, y0)));
    float s1 = kRows > 1 ? hn::GetLane(hn::SumOfLanes(d, hn::Add(x1, y1))) : 0.0f;
    float s2 = kRows > 2 ? hn::GetLane(hn::SumOfLanes(d, hn::Add(x2, y2))) : 0.0f;
    float s3 = kRows > 3 ? hn::GetLane(hn::SumOfLanes(d, hn::Add(x3, y3))) : 0.0f;
    for (; i < dim; ++i) {  // the dims after the last whole vector
      const float kf = ElementAsF32(kj + i);
      s0 += a0[i] * kf;
      if (kRows > 1) s1 += a1[i] * kf;
      if (kRows > 2) s2 += a2[i] * kf;
      if (kRows > 3) s3 += a3[i] * kf;
    }
    s[j] = s0;
    if (kRows > 1) s[lds + j] = s1;
    if (kRows > 2) s[2 * lds + j] = s2;
    if (kRows > 3) s[3 * lds + j] = s3;
  }
}

// o_r += sum_j p[r][j] * v_j for kRows rows. Each pass keeps two vectors of
// every row's output in registers while streaming the chunk's values.
template <size_t kRows, class D, typename T>
HWY_INLINE void AccumulateRows(D d, const float* HWY_RESTRICT p, size_t ldp,
                               const T* HWY_RESTRICT v, size_t v_stride, size_t n_tokens,
                               size_t dim, float* HWY_RESTRICT o, size_t ldo) {
  const size_t N = hn::Lanes(d);
  const size_t dim_vec = dim - dim % N;
  const size_t dim_vec2 = dim - dim % (2 * N);
  float* HWY_RESTRICT o0 = o;
  float* HWY_RESTRICT o1 = o + (kRows > 1 ? ldo : 0);
  float* HWY_RESTRICT o2 = o + (kRows > 2 ? 2 * ldo : 0);
  float* HWY_RESTRICT o3 = o + (kRows > 3 ? 3 * ldo : 0);
  const float* HWY_RESTRICT p0 = p;
  const float* HWY_RESTRICT p1 = p + (kRows > 1 ? ldp : 0);
  const float* HWY_RESTRICT p2 = p + (kRows > 2 ? 2 * ldp : 0);
  const float* HWY_RESTRICT p3 = p + (kRows > 3 ? 3 * ldp : 0);
  size_t i = 0;
  for (; i < dim_vec2; i += 2 * N) {
    auto x0 = hn::LoadU(d, o0 + i), y0 = hn::LoadU(d, o0 + i + N);
    auto x1 = hn::Zero(d), y1 = hn::Zero(d), x2 = hn::Zero(d), y2 = hn::Zero(d);
    auto x3 = hn::Zero(d), y3 = hn::Zero(d);
    if (kRows > 1) x1 = hn::LoadU(d, o1 + i), y1 = hn::LoadU(d, o1 + i + N);
    if (kRows > 2) x2 = hn::LoadU(d, o2 + i), y2 = hn::LoadU(d, o2 + i + N);
    if (kRows > 3) x3 = hn::LoadU(d, o3 + i), y3 = hn::LoadU(d, o3 + i + N);
    for (size_t j = 0; j < n_tokens; ++j) {
      const T* HWY_RESTRICT vj = v + j * v_stride + i;
      const auto vx = LoadAsF32(d, vj);
      const auto vy = LoadAsF32(d, vj + N);
      const auto w0 = hn::Set(d, p0[j]);
      x0 = hn::MulAdd(w0, vx, x0);
      y0 = hn::MulAdd(w0, vy, y0);
      if (kRows > 1) {
        const auto w1 = hn::Set(d, p1[j]);
        x1 = hn::MulAdd(w1, vx, x1);
        y1 = hn::MulAdd(w1, vy, y1);
      }
      if (kRows > 2) {
        const auto w2 = hn::Set(d, p2[j]);
        x2 = hn::MulAdd(w2, vx, x2);
        y2 = hn::MulAdd(w2, vy, y2);
      }
      if (kRows > 3) {
        const auto w3 = hn::Set(d, p3[j]);
        x3 = hn::MulAdd(w3, vx, x3);
        y3 = hn::MulAdd(w3, vy, y3);
      }
    }
    hn::StoreU(x0, d, o0 + i), hn::StoreU(y0, d, o0 + i + N);
    if (kRows > 1) hn::StoreU(x1, d, o1 + i), hn::StoreU(y1, d, o1 + i + N);
    if (kRows > 2) hn::StoreU(x2, d, o2 + i), hn::StoreU(y2, d, o2 + i + N);
    if (kRows > 3) hn::StoreU(x3, d, o3 + i), hn::StoreU(y3, d, o3 + i + N);
  }
  for (; i < dim_vec; i += N) {
    auto x0 = hn::LoadU(d, o0 + i), x1 = hn::Zero(d), x2 = hn::Zero(d), x3 = hn::Zero(d);
    if (kRows > 1) x1 = hn::LoadU(d, o1 + i);
    if (kRows > 2) x2 = hn::LoadU(d, o2 + i);
    if (kRows > 3) x3 = hn::LoadU(d, o3 + i);
    for (size_t j = 0; j < n_tokens; ++j) {
      const auto vx = LoadAsF32(d, v + j * v_stride + i);
      x0 = hn::MulAdd(hn::Set(d, p0[j]), vx, x0);
      if (kRows > 1) x1 = hn::MulAdd(hn::Set(d, p1[j]), vx, x1);
      if (kRows > 2) x2 = hn::MulAdd(hn::Set(d, p2[j]), vx, x2);
      if (kRows > 3) x3 = hn::MulAdd(hn::Set(d, p3[j]), vx, x3);
    }
    hn::StoreU(x0, d, o0 + i);
    if (kRows > 1) hn::StoreU(x1, d, o1 + i);
    if (kRows > 2) hn::StoreU(x2, d, o2 + i);
    if (kRows > 3) hn::StoreU(x3, d, o3 + i);
  }
  for (; i < dim; ++i) {  // the dims after the last whole vector
    for (size_t j = 0; j < n_tokens; ++j) {
      const float vf = ElementAsF32(v + j * v_stride + i);
      o0[i] += p0[j] * vf;
      if (kRows > 1) o1[i] += p1[j] * vf;
      if (kRows > 2) o2[i] += p2[j] * vf;
      if (kRows > 3) o3[i] += p3[j] * vf;
    }
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

// Scratch views for one tile; `ld` is the padded row length of a and o.
struct Tile {
  float* a;  // [kTileRows][ld] scaled queries
  float* o;  // [kTileRows][ld] un-normalised outputs
  float* p;  // [kTileRows][kChunkTokens] scores, then softmax weights
  float m[kTileRows];
  float l[kTileRows];
  // A score of the row was NaN or infinite: from non-finite input, or from
  // an overflow (every score -inf would otherwise look like a masked row).
  bool bad_score[kTileRows];
  size_t pos[kTileRows];     // query position of each row
  size_t q_token[kTileRows]; // query token index of each row
  size_t q_head[kTileRows];  // query head of each row
  size_t ld;
  size_t n_rows;
};

// The part of chunk [c0, c1) that row r sees; the chunk lies wholly in the
// sink segment (tokens < n_sinks, seen up to the row's position) or in the
// window segment (seen from lo to the row's position).
struct Interval {
  size_t begin, end;
};

HWY_INLINE Interval RowInterval(const AttentionProblem& pb, const Tile& tile, size_t r,
                                bool sink_segment, size_t c0, size_t c1) {
  const size_t pos = tile.pos[r];
  size_t lo = 0;
  if (!sink_segment && pb.window != 0 && pos + 1 > pb.window) lo = pos + 1 - pb.window;
  Interval iv{std::max(c0, lo), std::min(c1, pos + 1)};
  if (iv.end < iv.begin) iv.end = iv.begin;
  return iv;
}

template <size_t kRows, class D, typename T>
HWY_INLINE void ProcessRowGroup(D d, const AttentionProblem& pb, Tile& tile, size_t r0,
                                const T* k_head, const T* v_head, bool sink_segment, size_t c0,
                                size_t c1) {
  Interval iv[kRows];
  size_t ja = c1, jb = c0;  // union of the rows' intervals
  for (size_t r = 0; r < kRows; ++r) {
    iv[r] = RowInterval(pb, tile, r0 + r, sink_segment, c0, c1);
    if (iv[r].begin < iv[r].end) {
      ja = std::min(ja, iv[r].begin);
      jb = std::max(jb, iv[r].end);
    }
  }
  if (ja >= jb) return;
  const size_t dim = pb.head_dim;
  float* p = tile.p + r0 * kChunkTokens;
  ScoreRows<kRows>(d, tile.a + r0 * tile.ld, tile.ld, k_head + ja * pb.k_token_stride,
                   pb.k_token_stride, jb - ja, dim, p, kChunkTokens);
  for (size_t r = 0; r < kRows; ++r) {
    float* pr = p + r * kChunkTokens;  // index j - ja
    const size_t b = iv[r].begin, e = iv[r].end;
    if (b >= e) {
      std::fill(pr, pr + (jb - ja), 0.0f);
      continue;
    }
    float& m = tile.m[r0 + r];
    float& l = tile.l[r0 + r];
    bool finite;
    const float chunk_max = MaxOf(d, pr + (b - ja), e - b, &finite);
    tile.bad_score[r0 + r] |= !finite;
    if (chunk_max > m) {  // rescale what was accumulated under the old max
      const float correction = std::exp(m - chunk_max);
      l *= correction;
      float* o = tile.o + (r0 + r) * tile.ld;
      for (size_t i = 0; i < dim; ++i) o[i] *= correction;
      m = chunk_max;
    }
    l += ExpShiftedSum(d, pr + (b - ja), e - b, m);
    std::fill(pr, pr + (b - ja), 0.0f);
    std::fill(pr + (e - ja), pr + (jb - ja), 0.0f);
  }
  AccumulateRows<kRows>(d, p, kChunkTokens, v_head + ja * pb.v_token_stride, pb.v_token_stride,
                        jb - ja, dim, tile.o + r0 * tile.ld, tile.ld);
}

template <class D, typename T>
HWY_INLINE void ProcessChunk(D d, const AttentionProblem& pb, Tile& tile, const T* k_head,
                             const T* v_head, bool sink_segment, size_t c0, size_t c1) {
  size_t r = 0;
  for (; r + 4 <= tile.n_rows; r += 4) {
    ProcessRowGroup<4>(d, pb, tile, r, k_head, v_head, sink_segment, c0, c1);
  }
  switch (tile.n_rows - r) {
    case 3:
      ProcessRowGroup<3>(d, pb, tile, r, k_head, v_head, sink_segment, c0, c1);
      break;
    case 2:
      ProcessRowGroup<2>(d, pb, tile, r, k_head, v_head, sink_segment, c0, c1);
      break;
    case 1:
      ProcessRowGroup<1>(d, pb, tile, r, k_head, v_head, sink_segment, c0, c1);
      break;
    default:
      break;
  }
}

// Runs the chunks of [begin, end) in order.
template <class D, typename T>
HWY_INLINE void ProcessSegment(D d, const AttentionProblem& pb, Tile& tile, const T* k_head,
                               const T* v_head, bool sink_segment, size_t begin, size_t end) {
  for (size_t c0 = begin; c0 < end; c0 += kChunkTokens) {
    ProcessChunk(d, pb, tile, k_head, v_head, sink_segment, c0,
                 std::min(end, c0 + kChunkTokens));
  }
}

// Writes the tile's rows to the sink; records masked and non-finite rows.
HWY_INLINE void EmitTile(const AttentionProblem& pb, const Tile& tile,
                         const AttentionResultSink& sink, AttentionOutcome* outcome) {
  const size_t dim = pb.head_dim;
  for (size_t r = 0; r < tile.n_rows; ++r) {
    const float* o = tile.o + r * tile.ld;
    const size_t row = tile.q_token[r] * pb.n_q_heads + tile.q_head[r];
    bool finite = !tile.bad_score[r] && std::isfinite(tile.m[r]) && std::isfinite(tile.l[r]);
    if (sink.out == nullptr) {
      sink.m[row] = tile.m[r];
      sink.l[row] = tile.l[r];
      float* dst = sink.o + row * dim;
      for (size_t i = 0; i < dim; ++i) {
        dst[i] = o[i];
        finite &= std::isfinite(o[i]);
      }
      outcome->nonfinite |= !finite;
      continue;
    }
    float* dst =
        sink.out + tile.q_token[r] * sink.out_token_stride + tile.q_head[r] * sink.out_head_stride;
    if (tile.l[r] == 0.0f && finite) {
      std::fill(dst, dst + dim, 0.0f);
      if (sink.log_z != nullptr) sink.log_z[row] = -std::numeric_limits<float>::infinity();
      outcome->fully_masked = true;
      continue;
    }
    const float inv_l = 1.0f / tile.l[r];
    for (size_t i = 0; i < dim; ++i) {
      dst[i] = o[i] * inv_l;
      finite &= std::isfinite(dst[i]);
    }
    if (sink.log_z != nullptr) {
      sink.log_z[row] = tile.m[r] + std::log(tile.l[r]);
      finite &= std::isfinite(sink.log_z[row]);
    }
    outcome->nonfinite |= !finite;
  }
}

template <typename T>
void AttentionTyped(const AttentionProblem& pb, const AttentionResultSink& sink, void* scratch,
                    AttentionOutcome* outcome) {
  const hn::ScalableTag<float> d;
  const size_t dim = pb.head_dim;
  Tile tile;
  tile.ld = (dim + 15) & ~size_t{15};
  float* base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch) + 63) &
                                         ~uintptr_t{63});
  tile.a = base;
  tile.o = tile.a + kTileRows * tile.ld;
  tile.p = tile.o + kTileRows * tile.ld;

  const size_t group = pb.n_q_heads / pb.n_kv_heads;
  const size_t rows_per_kv_head = pb.n_q_tokens * group;
  const T* k_all = static_cast<const T*>(pb.k);
  const T* v_all = static_cast<const T*>(pb.v);
  for (size_t kv_head = 0; kv_head < pb.n_kv_heads; ++kv_head) {
    const T* k_head = k_all + kv_head * pb.k_head_stride;
    const T* v_head = v_all + kv_head * pb.v_head_stride;
    for (size_t first = 0; first < rows_per_kv_head; first += kTileRows) {
      tile.n_rows = std::min(kTileRows, rows_per_kv_head - first);
      for (size_t r = 0; r < tile.n_rows; ++r) {
        const size_t t = (first + r) / group;
        const size_t h = kv_head * group + (first + r) % group;
        tile.q_token[r] = t;
        tile.q_head[r] = h;
        tile.pos[r] = pb.n_past + t;
        tile.m[r] = kInitialMax;
        tile.l[r] = 0.0f;
        tile.bad_score[r] = false;
        const float* q = pb.q + t * pb.q_token_stride + h * pb.q_head_stride;
        float* a = tile.a + r * tile.ld;
        for (size_t i = 0; i < dim; ++i) a[i] = pb.scale * q[i];
        std::fill(tile.o + r * tile.ld, tile.o + (r + 1) * tile.ld, 0.0f);
      }
      // Tokens any row of the tile may see: the sinks, then from the lowest
      // window start up to the last row's position, clipped to the range.
      const size_t pos_first = tile.pos[0], pos_last = tile.pos[tile.n_rows - 1];
      size_t window_begin = 0, sink_end = 0;
      if (pb.window != 0) {
        sink_end = std::min(pb.n_sinks, pos_last + 1);
        window_begin = pos_first + 1 > pb.window ? pos_first + 1 - pb.window : 0;
        window_begin = std::max(window_begin, sink_end);
      }
      const size_t window_end = std::min(pos_last + 1, pb.token_end);
      ProcessSegment(d, pb, tile, k_head, v_head, /*sink_segment=*/true, pb.token_begin,
                     std::min(sink_end, pb.token_end));
      ProcessSegment(d, pb, tile, k_head, v_head, /*sink_segment=*/false,
                     std::max(window_begin, pb.token_begin), window_end);
      EmitTile(pb, tile, sink, outcome);
    }
  }
}

void Attention(const AttentionProblem& pb, const AttentionResultSink& sink, void* scratch,
               AttentionOutcome* outcome) {
  WithElementType(pb.dtype, [&](auto* tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    AttentionTyped<T>(pb, sink, scratch, outcome);
  });
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "dispatch.h"

namespace covattn {
HWY_EXPORT(Attention);

namespace detail {

size_t AttentionScratchBytes(size_t head_dim) {
  const size_t ld = (head_dim + 15) & ~size_t{15};
  return (2 * kTileRows * ld + kTileRows * kChunkTokens) * sizeof(float) + 64;
}

void RunAttention(const AttentionProblem& problem, const AttentionResultSink& sink,
                  void* scratch, AttentionOutcome* outcome) {
  COVATTN_DISPATCH(Attention)(problem, sink, scratch, outcome);
}

}  // namespace detail
}  // namespace covattn
#endif  // HWY_ONCE
