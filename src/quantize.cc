// covattn_quantize_int8: f32 vectors to int8 with one scale each (MATH.md
// section 7). Scalar on purpose: an engine quantises one token's rows per
// decode step, a few hundred values against the millions the kernels read,
// and plain double arithmetic gives the same bits on every target and under
// any floating-point rounding mode the caller has set (CMakeLists.txt
// compiles this file without fused multiply-adds).
#include "quantize.h"

#include <cmath>
#include <cstdint>

#include "covattn/covattn.h"
#include "validate.h"

namespace covattn {
namespace detail {
namespace {

// x rounded to the nearest integer, ties to even, whatever the rounding mode.
double RoundHalfEven(double x) {
  const double r = std::floor(x + 0.5);
  return (r - x == 0.5 && std::fmod(r, 2.0) != 0.0) ? r - 1.0 : r;
}

}  // namespace

void QuantizeInt8Vector(const float* x, size_t dim, int8_t* q, float* scale) {
  float max_abs = 0.0f;
  for (size_t i = 0; i < dim; ++i) max_abs = std::fmax(max_abs, std::fabs(x[i]));
  if (max_abs == 0.0f) {
    for (size_t i = 0; i < dim; ++i) q[i] = 0;
    *scale = 0.0f;
    return;
  }
  // In double, 127 / max_abs cannot overflow even for a subnormal max_abs.
  const double inv = 127.0 / static_cast<double>(max_abs);
  for (size_t i = 0; i < dim; ++i) {
    const double r = RoundHalfEven(static_cast<double>(x[i]) * inv);
    q[i] = static_cast<int8_t>(std::fmin(127.0, std::fmax(-127.0, r)));
  }
  *scale = static_cast<float>(static_cast<double>(max_abs) / 127.0);
}

}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" covattn_status covattn_quantize_int8(const float* src, size_t n_vectors, size_t dim,
                                                size_t src_stride, int8_t* dst, size_t dst_stride,
                                                float* scales, size_t scale_stride) {
  if (dim == 0 || dim > COVATTN_MAX_HEAD_DIM) return COVATTN_ERR_INVALID_HEAD_DIM;
  if (n_vectors == 0) return COVATTN_OK;
  if (src == nullptr || dst == nullptr || scales == nullptr) return COVATTN_ERR_NULL_POINTER;
  Extent in, out, out_scales;
  COVATTN_RETURN_IF_ERROR(CheckTensor(src, sizeof(float), n_vectors, src_stride, 1, 0, dim, &in));
  COVATTN_RETURN_IF_ERROR(CheckTensor(dst, 1, n_vectors, dst_stride, 1, 0, dim, &out));
  COVATTN_RETURN_IF_ERROR(
      CheckTensor(scales, sizeof(float), n_vectors, scale_stride, 1, 0, 1, &out_scales));
  if (in.Overlaps(out) || in.Overlaps(out_scales) || out.Overlaps(out_scales)) {
    return COVATTN_ERR_ALIASING;
  }
  for (size_t r = 0; r < n_vectors; ++r) {
    const float* x = src + r * src_stride;
    for (size_t i = 0; i < dim; ++i) {
      if (!std::isfinite(x[i])) return COVATTN_ERR_NONFINITE;
    }
  }
  for (size_t r = 0; r < n_vectors; ++r) {
    QuantizeInt8Vector(src + r * src_stride, dim, dst + r * dst_stride, scales + r * scale_stride);
  }
  return COVATTN_OK;
}
