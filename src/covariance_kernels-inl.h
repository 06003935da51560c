// The covariance state's block update (MATH.md section 3), the per-target
// bodies that depend on the element type of K/V: compiled once per target and
// element type by the thin covariance_kernels_{f32,f16,bf16,int8}.cc, so they
// build in parallel. The element-type independent rest (the GEMM, merge,
// readout) is covariance_kernels.cc; see there for the design.
#if defined(COVATTN_SRC_COVARIANCE_KERNELS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef COVATTN_SRC_COVARIANCE_KERNELS_INL_H_
#undef COVATTN_SRC_COVARIANCE_KERNELS_INL_H_
#else
#define COVATTN_SRC_COVARIANCE_KERNELS_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "covariance_kernels.h"
#include "covariance_state.h"
#include "load-inl.h"

HWY_BEFORE_NAMESPACE();
namespace covattn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail::CovBlock;
using detail::CovHead;
using detail::CovShape;
using detail::kMaxLanesF32;
using detail::kSubBlockTokens;

// Register tiles: the GEMM keeps kGemmRows x kGemmVecs accumulators (rows of
// k broadcast from memory, kGemmVecs vectors of columns loaded per token); the
// readout keeps kReadHeads x kReadVecs. Sized to the register file: 32
// vectors on x86 from AVX-512 on (every Highway target better than AVX3 has
// them too) and on 64-bit Arm, 16 elsewhere. kGemmRows divides the panel
// width kGemmVecs * Lanes so that a row tile never straddles two panels.
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
constexpr size_t kGemmRows = 2, kGemmVecs = 4, kReadHeads = 4, kReadVecs = 2;
#elif HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr size_t kGemmRows = 4, kGemmVecs = 4, kReadHeads = 8, kReadVecs = 2;
#elif HWY_ARCH_ARM_A64  // NEON and SVE: at least 4 lanes (2 * Lanes is a multiple of 8)
constexpr size_t kGemmRows = 8, kGemmVecs = 2, kReadHeads = 8, kReadVecs = 2;
#else                   // 16 registers of at least 4 lanes: x86 below AVX-512, 32-bit Arm, others
constexpr size_t kGemmRows = 4, kGemmVecs = 3, kReadHeads = 4, kReadVecs = 2;
#endif

// ---------------------------------------------------------------------------
// Shared pieces.

// m[0, valid) <- u_row * u_cols + (decay * m + acc): the Chan merge of one
// vector of co-moments (acc = the block's, the other state's, or zero). Lanes
// from `valid` on are left alone; a partial vector goes through a buffer so
// that it gets exactly the arithmetic of a full one.
template <class D, class V>
HWY_INLINE void CombineVec(D d, float* HWY_RESTRICT m, size_t valid, V acc, V u_row,
                           const float* HWY_RESTRICT u_cols, V decay) {
  const size_t N = hn::Lanes(d);
  if (valid >= N) {
    const V old = hn::LoadU(d, m);
    hn::StoreU(hn::MulAdd(u_row, hn::LoadU(d, u_cols), hn::MulAdd(decay, old, acc)), d, m);
    return;
  }
  HWY_ALIGN float buf[kMaxLanesF32] = {};
  std::copy(m, m + valid, buf);
  const V old = hn::Load(d, buf);
  hn::Store(hn::MulAdd(u_row, hn::LoadU(d, u_cols), hn::MulAdd(decay, old, acc)), d, buf);
  std::copy(buf, buf + valid, m);
}

// For every row i < n_rows of m ([n_rows][width]):
// m_i <- u_i u + (decay m_i + src_i), src = nullptr meaning zero.
template <class D>
HWY_INLINE void CombineRows(D d, float* m, size_t n_rows, size_t width, const float* src,
                            const float* HWY_RESTRICT u, float decay) {
  const size_t N = hn::Lanes(d);
  const auto vdecay = hn::Set(d, decay);
  for (size_t i = 0; i < n_rows; ++i) {
    const auto ui = hn::Set(d, u[i]);
    float* mi = m + i * width;
    for (size_t c = 0; c < width; c += N) {
      auto acc = hn::Zero(d);
      if (src != nullptr) acc = hn::LoadU(d, src + i * width + c);  // may read the slack
      CombineVec(d, mi + c, width - c, acc, ui, u + c, vdecay);
    }
  }
}

// Chan merge of weights and means in f64 (MATH.md section 3): the state's
// already-decayed weight wa, then a part of weight wb > 0 and mean mean_b(c).
// Writes u = sqrt(wa wb / w) (mu_b - mu_a) as f32, zero-padded to `padded`,
// so that the co-moment correction delta delta^T wa wb / w is u u^T.
template <class MeanB>
HWY_INLINE void MergeMeans(size_t width, size_t padded, double wa, double wb, MeanB mean_b,
                           double* HWY_RESTRICT weight, double* mean, float* HWY_RESTRICT u) {
  const double w = wa + wb;
  const double root = std::sqrt(wa * wb / w);
  const double frac = wb / w;
  for (size_t c = 0; c < width; ++c) {
    const double mb = mean_b(c);  // read before mean[c] changes (self-merge)
    const double delta = mb - mean[c];
    u[c] = static_cast<float>(root * delta);
    mean[c] = wa == 0.0 ? mb : mean[c] + delta * frac;
  }
  std::fill(u + width, u + padded, 0.0f);
  *weight = w;
}

// The int8 scales of one head of a block (MATH.md section 7): the token at
// t stands for k_scale[t * k_stride] (K) and v_scale[t * v_stride] (V)
// times its elements. All ones for the float types, which never read them.
struct HeadScales {
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;
  size_t k_stride = 0, v_stride = 0;
  float K(size_t t) const { return k_scale[t * k_stride]; }
  float V(size_t t) const { return v_scale[t * v_stride]; }
  HeadScales From(size_t t0) const {
    return k_scale == nullptr
               ? *this
               : HeadScales{k_scale + t0 * k_stride, v_scale + t0 * v_stride, k_stride, v_stride};
  }
};

// x, times scale for int8 elements (the float types are used as they are).
template <typename T, class D, class V>
HWY_INLINE V Scaled(D d, V x, float scale) {
  if constexpr (std::is_same_v<T, int8_t>) return hn::Mul(x, hn::Set(d, scale));
  (void)d, (void)scale;
  return x;
}
template <typename T>
HWY_INLINE float Scaled(float x, float scale) {
  if constexpr (std::is_same_v<T, int8_t>) return x * scale;
  (void)scale;
  return x;
}

// One vector's worth of K or V as f32 (int8: times its scale), the tail
// element by element (never reading past the vector's end).
template <class D, typename T>
HWY_INLINE void LoadRow(D d, const T* HWY_RESTRICT src, size_t dim, float scale,
                        float* HWY_RESTRICT dst) {
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= dim; i += N) hn::StoreU(Scaled<T>(d, LoadAsF32(d, src + i), scale), d, dst + i);
  for (; i < dim; ++i) dst[i] = Scaled<T>(ElementAsF32(src + i), scale);
}

// The workspace of a block update (covariance_state.h, WorkspaceBytes).
struct Workspace {
  explicit Workspace(float* base, size_t dim) {
    const size_t row = detail::WorkspaceRowFloats(dim);
    pack = base;
    token = pack + kSubBlockTokens * row;
    shift = token + row;
    sqrt_weights = shift + row;
    u = sqrt_weights + row;
    mean = u + row;
    weights = mean + row;
  }
  float* pack;          // the centred sub-block in column panels
  float* token;         // one token's [k | v] as f32
  float* shift;         // the sub-block's first token, subtracted before summing
  float* sqrt_weights;  // per token: sqrt(w_t) (kSubBlockTokens <= 2d + padding)
  float* u;             // the merge vector
  float* mean;          // the sub-block's mean, relative to shift
  float* weights;       // per token: w_t
};

// Defined once per target in covariance_kernels.cc (element type
// independent).
void MergePackedBlock(size_t dim, float* m, size_t b, float decay_f, const Workspace& ws);
void MirrorSkipped(float* HWY_RESTRICT m, size_t dim);

// Lanes [c, c + N) of the row [k | v | 0] of one token, as f32: straight
// from K or V when the vector lies wholly in one of them (always, when N
// divides d), element by element where it straddles their border or the end.
// int8: each part times its scale.
template <class D, typename T>
HWY_INLINE hn::Vec<D> LoadColumns(D d, const T* HWY_RESTRICT k, const T* HWY_RESTRICT v, size_t dim,
                                  size_t c, float k_scale, float v_scale) {
  const size_t N = hn::Lanes(d);
  if (c + N <= dim) return Scaled<T>(d, LoadAsF32(d, k + c), k_scale);
  if (c >= dim && c + N <= 2 * dim) return Scaled<T>(d, LoadAsF32(d, v + (c - dim)), v_scale);
  HWY_ALIGN float buf[kMaxLanesF32];
  for (size_t i = 0; i < N; ++i) {
    const size_t col = c + i;
    buf[i] = col < dim       ? Scaled<T>(ElementAsF32(k + col), k_scale)
             : col < 2 * dim ? Scaled<T>(ElementAsF32(v + col - dim), v_scale)
                             : 0.0f;
  }
  return hn::Load(d, buf);
}

// Packs b tokens of one head, centred on their weighted mean and scaled by
// sqrt(w_t), into column panels of P = kGemmVecs * Lanes floats: element
// (t, c) of the packed [k | v | 0] row sits at pack[(c / P) P b + t W + c % P]
// with W the panel's width (the last panel may be narrower). One column
// vector at a time, all tokens: y_t = x_t - x_0 (a shift near the data keeps
// the f32 sums accurate when |mean| >> sigma), their weighted mean, then
// c_t = sqrt(w_t) (y_t - mean) in place while the column is in L1. An error e
// in the mean changes the co-moments only by total * e e^T (second order).
// Sets ws.shift and ws.mean (the mean relative to the shift) and returns the
// total weight.
template <class D, typename T>
HWY_INLINE double PackCentred(D d, size_t dim, const T* HWY_RESTRICT k, size_t k_stride,
                              const T* HWY_RESTRICT v, size_t v_stride, const HeadScales& scales,
                              size_t b, double lambda, const Workspace& ws) {
  const size_t N = hn::Lanes(d), P = kGemmVecs * N;
  const size_t padded = detail::RoundUp(2 * dim, N);
  // w_t = lambda^(b - 1 - t): the newest token of the sub-block weighs 1.
  double w = 1.0, total = 0.0;
  for (size_t t = b; t-- > 0;) {
    ws.weights[t] = static_cast<float>(w);
    ws.sqrt_weights[t] = std::sqrt(ws.weights[t]);
    total += ws.weights[t];
    w *= lambda;
  }
  const auto inv_total = hn::Set(d, static_cast<float>(1.0 / total));
  for (size_t c = 0; c < padded; c += N) {
    const size_t p0 = c - c % P, stride = HWY_MIN(P, padded - p0);
    float* HWY_RESTRICT p = ws.pack + p0 * b + c % P;
    const bool int8 = std::is_same_v<T, int8_t>;
    const auto shift =
        LoadColumns(d, k, v, dim, c, int8 ? scales.K(0) : 1.0f, int8 ? scales.V(0) : 1.0f);
    auto sum = hn::Zero(d);
    for (size_t t = 0; t < b; ++t) {
      const auto x = LoadColumns(d, k + t * k_stride, v + t * v_stride, dim, c,
                                 int8 ? scales.K(t) : 1.0f, int8 ? scales.V(t) : 1.0f);
      const auto y = hn::Sub(x, shift);
      hn::StoreU(y, d, p + t * stride);
      sum = hn::MulAdd(hn::Set(d, ws.weights[t]), y, sum);
    }
    const auto mean = hn::Mul(sum, inv_total);
    hn::StoreU(shift, d, ws.shift + c);
    hn::StoreU(mean, d, ws.mean + c);
    if (lambda == 1.0) {
      for (size_t t = 0; t < b; ++t) {
        hn::StoreU(hn::Sub(hn::LoadU(d, p + t * stride), mean), d, p + t * stride);
      }
    } else {
      for (size_t t = 0; t < b; ++t) {
        const auto sw = hn::Set(d, ws.sqrt_weights[t]);
        hn::StoreU(hn::Mul(hn::Sub(hn::LoadU(d, p + t * stride), mean), sw), d, p + t * stride);
      }
    }
  }
  return total;
}

// Absorbs b >= 2 tokens of one head: pack, merge the means, then the GEMM
// with the co-moment merge in its epilogue (MergePackedBlock).
template <class D, typename T>
HWY_INLINE void UpdateHeadBlock(D d, const CovShape& shape, const CovHead& head,
                                const T* HWY_RESTRICT k, size_t k_stride, const T* HWY_RESTRICT v,
                                size_t v_stride, const HeadScales& scales, size_t b,
                                const Workspace& ws) {
  const size_t dim = shape.dim, width = 2 * dim;
  const size_t padded = detail::RoundUp(width, hn::Lanes(d));
  const double lambda = shape.forgetting;
  const double total = PackCentred(d, dim, k, k_stride, v, v_stride, scales, b, lambda, ws);
  const double decay = lambda == 1.0 ? 1.0 : std::pow(lambda, static_cast<double>(b));
  MergeMeans(
      width, padded, *head.weight * decay, total,
      [&](size_t c) { return double{ws.shift[c]} + double{ws.mean[c]}; }, head.weight, head.mean,
      ws.u);
  MergePackedBlock(dim, head.m, b, static_cast<float>(decay), ws);
}

// One token (decode): the weighted Welford step of MATH.md section 3,
// W <- lambda W + 1, mu <- mu + delta / W, M <- lambda M + delta (z - mu)^T,
// written as the merge with a one-token block (delta (z - mu)^T = u u^T).
template <class D, typename T>
HWY_INLINE void UpdateHeadToken(D d, const CovShape& shape, const CovHead& head,
                                const T* HWY_RESTRICT k, const T* HWY_RESTRICT v,
                                const HeadScales& scales, const Workspace& ws) {
  const size_t dim = shape.dim, width = 2 * dim;
  const size_t padded = detail::RoundUp(width, hn::Lanes(d));
  const bool int8 = std::is_same_v<T, int8_t>;
  LoadRow(d, k, dim, int8 ? scales.K(0) : 1.0f, ws.token);
  LoadRow(d, v, dim, int8 ? scales.V(0) : 1.0f, ws.token + dim);
  const double lambda = shape.forgetting;
  MergeMeans(
      width, padded, *head.weight * lambda, 1.0, [&](size_t c) { return double{ws.token[c]}; },
      head.weight, head.mean, ws.u);
  CombineRows(d, head.m, dim, width, nullptr, ws.u, static_cast<float>(lambda));
}

// Heads [first_head, first_head + n_heads) absorb the block, whose head 0
// is the state's head first_head.
template <typename T>
void UpdateTyped(covattn_cov_state* state, const CovBlock& block, size_t first_head, size_t n_heads,
                 float* work) {
  const hn::ScalableTag<float> d;
  const CovShape shape = state->Shape();
  const Workspace ws(work, shape.dim);
  const size_t n = block.n_tokens;
  const size_t n_sub = (n + kSubBlockTokens - 1) / kSubBlockTokens;
  for (size_t h = 0; h < n_heads; ++h) {
    const T* k = static_cast<const T*>(block.k) + h * block.k_head_stride;
    const T* v = static_cast<const T*>(block.v) + h * block.v_head_stride;
    const CovHead head = state->Head(first_head + h);
    HeadScales scales;
    if (const covattn_int8_scales* s = block.int8_scales) {
      scales = HeadScales{s->k_scale + h * s->k_head_stride, s->v_scale + h * s->v_head_stride,
                          s->k_token_stride, s->v_token_stride};
    }
    // Sub-blocks of near-equal size, in token order (n = 1 alone takes the
    // rank-1 path: a sub-block of one token only arises then).
    for (size_t s = 0, t0 = 0; s < n_sub; ++s) {
      const size_t b = (n - t0 + (n_sub - s) - 1) / (n_sub - s);
      const T* ks = k + t0 * block.k_token_stride;
      const T* vs = v + t0 * block.v_token_stride;
      if (b == 1) {
        UpdateHeadToken(d, shape, head, ks, vs, scales.From(t0), ws);
      } else {
        UpdateHeadBlock(d, shape, head, ks, block.k_token_stride, vs, block.v_token_stride,
                        scales.From(t0), b, ws);
      }
      t0 += b;
    }
    if (n > 1) MirrorSkipped(head.m, shape.dim);
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace covattn
HWY_AFTER_NAMESPACE();

#endif  // include guard
