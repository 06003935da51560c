// Shared test helpers: running a test on every target, random data with fixed
// seeds, 16-bit rounding independent of the library, KV caches in several
// layouts, and the double-precision attention reference with its error bound.
#ifndef COVATTN_TESTS_TEST_UTIL_H_
#define COVATTN_TESTS_TEST_UTIL_H_

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "covattn/covattn.h"
#include "float16.h"

namespace covattn_test {

// f32 unit roundoff.
constexpr double kU = 1.0 / (1 << 24);

// Whether the comma-separated environment variable COVATTN_TEST_TARGETS
// (unset: every target) names `target`. scripts/test sets it for the SVE runs
// under qemu, which need not repeat the NEON and fallback targets that the
// NEON-only run covers.
inline bool TestsTarget(const std::string& target) {
  const char* list = std::getenv("COVATTN_TEST_TARGETS");
  if (list == nullptr) return true;
  const std::string names = std::string(",") + list + ",";
  return names.find("," + target + ",") != std::string::npos;
}

// Runs body() once per target compiled into covattn and supported by this
// CPU (and named by COVATTN_TEST_TARGETS), with dispatch restricted to that
// target; failures name the target. Running none is a failure.
template <class Body>
void ForEachTarget(Body&& body) {
  const size_t count = covattn_available_target_count();
  REQUIRE(count >= 1);
  size_t tested = 0;
  for (size_t i = 0; i < count; ++i) {
    const std::string target = covattn_available_target(i);
    if (!TestsTarget(target)) continue;
    ++tested;
    REQUIRE(covattn_restrict_targets(target.c_str()) == COVATTN_OK);
    REQUIRE(target == covattn_target_name());  // the forced choice is the one that runs
    INFO("target " << target);
    body();
  }
  REQUIRE(covattn_restrict_targets(nullptr) == COVATTN_OK);
  REQUIRE_MESSAGE(tested != 0, "COVATTN_TEST_TARGETS names no target this CPU runs");
}

inline const char* DtypeName(uint32_t dtype) {
  return dtype == COVATTN_F32    ? "f32"
         : dtype == COVATTN_F16  ? "f16"
         : dtype == COVATTN_INT8 ? "int8"
                                 : "bf16";
}

// The int8 quantisation covattn_quantize_int8 documents, written apart from
// the library: scale = max |x| / 127, q = round-half-even(x * 127 / max |x|).
inline float QuantizeInt8Reference(const float* x, size_t dim, int8_t* q) {
  double max_abs = 0.0;
  for (size_t i = 0; i < dim; ++i) max_abs = std::max(max_abs, std::fabs(double(x[i])));
  for (size_t i = 0; i < dim; ++i) {
    const double y = max_abs == 0.0 ? 0.0 : double(x[i]) * (127.0 / max_abs);
    double r = std::floor(y);
    if (y - r > 0.5 || (y - r == 0.5 && std::fmod(r, 2.0) != 0.0)) r += 1.0;
    q[i] = static_cast<int8_t>(r);
  }
  return static_cast<float>(max_abs / 127.0);
}

// ---------------------------------------------------------------------------
// Random data.

struct Rng {
  explicit Rng(uint64_t seed) : engine(seed) {}
  double Normal() { return normal(engine); }
  double Uniform(double lo, double hi) { return lo + (hi - lo) * uniform(engine); }
  std::mt19937_64 engine;
  std::normal_distribution<double> normal{0.0, 1.0};
  std::uniform_real_distribution<double> uniform{0.0, 1.0};
};

// n floats drawn from N(0, std_dev^2), e.g. queries.
inline std::vector<float> NormalFloats(Rng& rng, size_t n, double std_dev) {
  std::vector<float> x(n);
  for (float& f : x) f = static_cast<float>(std_dev * rng.Normal());
  return x;
}

// Scratch for attention calls on the calling thread.
inline std::vector<uint8_t> AttentionScratch(size_t dim) {
  size_t bytes = 0;
  REQUIRE(covattn_attention_scratch_size(dim, &bytes) == COVATTN_OK);
  return std::vector<uint8_t>(bytes);
}

// ---------------------------------------------------------------------------
// KV caches in the layouts engines use.

enum class Layout {
  kTokenMajor,  // [token][head][dim]
  kHeadMajor,   // [head][token][dim]
  kPadded,      // [token][head][dim] inside a wider buffer, padded rows
};

inline const char* LayoutName(Layout layout) {
  return layout == Layout::kTokenMajor  ? "token-major"
         : layout == Layout::kHeadMajor ? "head-major"
                                        : "padded";
}

// Owns K and V storage of one dtype and layout, plus the exact values stored
// (after rounding to the dtype) in [token][head][dim] order for references.
// An INT8 cache also owns the scales (laid out [token][head], or [head][token]
// for kHeadMajor) and re-quantises a whole vector whenever one of its
// elements is set, so its exact values are the dequantised ones.
class TestCache {
 public:
  TestCache(uint32_t dtype, Layout layout, size_t n_tokens, size_t n_heads, size_t dim)
      : dtype_(dtype), n_tokens_(n_tokens), n_heads_(n_heads), dim_(dim) {
    size_t token_stride, head_stride, elems;
    switch (layout) {
      case Layout::kTokenMajor:
        token_stride = n_heads * dim, head_stride = dim, elems = n_tokens * n_heads * dim;
        break;
      case Layout::kHeadMajor:
        token_stride = dim, head_stride = n_tokens * dim, elems = n_tokens * n_heads * dim;
        break;
      default:  // kPadded: 3 spare elements per head vector, 5 per token
        head_stride = dim + 3, token_stride = n_heads * (dim + 3) + 5;
        elems = n_tokens * token_stride;
        break;
    }
    const size_t elem_size = dtype == COVATTN_F32 ? 4 : dtype == COVATTN_INT8 ? 1 : 2;
    k_storage_.assign(std::max<size_t>(elems, 1) * elem_size, 0xFF);  // NaN/garbage in gaps
    v_storage_.assign(std::max<size_t>(elems, 1) * elem_size, 0xFF);
    k_.assign(n_tokens * n_heads * dim, 0.0);
    v_.assign(n_tokens * n_heads * dim, 0.0);
    view_ = covattn_kv_cache{
        dtype,        k_storage_.data(), v_storage_.data(), n_tokens,    n_heads, dim,
        token_stride, head_stride,       token_stride,      head_stride, nullptr};
    if (dtype == COVATTN_INT8) {
      const bool head_major = layout == Layout::kHeadMajor;
      k_input_.assign(n_tokens * n_heads * dim, 0.0f);
      v_input_.assign(n_tokens * n_heads * dim, 0.0f);
      k_scale_.assign(std::max<size_t>(n_tokens * n_heads, 1), 0.0f);
      v_scale_.assign(std::max<size_t>(n_tokens * n_heads, 1), 0.0f);
      const size_t scale_token_stride = head_major ? 1 : n_heads;
      const size_t scale_head_stride = head_major ? n_tokens : 1;
      scales_ = std::make_unique<covattn_int8_scales>(
          covattn_int8_scales{k_scale_.data(), v_scale_.data(), scale_token_stride,
                              scale_head_stride, scale_token_stride, scale_head_stride});
      view_.int8_scales = scales_.get();
      input_view_ = covattn_kv_cache{COVATTN_F32,     k_input_.data(),
                                     v_input_.data(), n_tokens,
                                     n_heads,         dim,
                                     n_heads * dim,   dim,
                                     n_heads * dim,   dim,
                                     nullptr};
      std::fill(k_storage_.begin(), k_storage_.end(), 0);
      std::fill(v_storage_.begin(), v_storage_.end(), 0);
    }
  }

  // Stores x (rounded to the dtype) at (t, h, i) of K or V.
  void SetK(size_t t, size_t h, size_t i, double x) {
    if (dtype_ == COVATTN_INT8) return SetInt8(k_input_, k_storage_, k_scale_, k_, t, h, i, x);
    Set(k_storage_, k_, t, h, i, x);
  }
  void SetV(size_t t, size_t h, size_t i, double x) {
    if (dtype_ == COVATTN_INT8) return SetInt8(v_input_, v_storage_, v_scale_, v_, t, h, i, x);
    Set(v_storage_, v_, t, h, i, x);
  }
  // INT8: the scales of K or V at (t, h), writable (to test bad values).
  float& KScale(size_t t, size_t h) { return k_scale_[ScaleIndex(t, h)]; }
  float& VScale(size_t t, size_t h) { return v_scale_[ScaleIndex(t, h)]; }

  // Fills K with N(k_mean, k_std) and V with N(0, 1) entries.
  void FillRandom(Rng& rng, double k_std = 1.0, double k_mean = 0.0) {
    quantize_later_ = true;  // an INT8 vector is quantised once, when complete
    for (size_t t = 0; t < n_tokens_; ++t)
      for (size_t h = 0; h < n_heads_; ++h) {
        for (size_t i = 0; i < dim_; ++i) {
          SetK(t, h, i, k_mean + k_std * rng.Normal());
          SetV(t, h, i, rng.Normal());
        }
        if (dtype_ == COVATTN_INT8) {
          Quantize(k_input_, k_storage_, k_scale_, k_, t, h);
          Quantize(v_input_, v_storage_, v_scale_, v_, t, h);
        }
      }
    quantize_later_ = false;
  }

  double K(size_t t, size_t h, size_t i) const { return k_[(t * n_heads_ + h) * dim_ + i]; }
  double V(size_t t, size_t h, size_t i) const { return v_[(t * n_heads_ + h) * dim_ + i]; }
  const covattn_kv_cache& view() const { return view_; }
  // What an engine would hand covattn to store: for INT8 the f32 values set
  // before quantisation ([token][head][dim]), which the bounded cache
  // quantises as covattn_quantize_int8 and this class do; else view().
  const covattn_kv_cache& input_view() const {
    return dtype_ == COVATTN_INT8 ? input_view_ : view_;
  }
  size_t n_tokens() const { return n_tokens_; }
  size_t n_heads() const { return n_heads_; }
  size_t dim() const { return dim_; }

 private:
  void Set(std::vector<uint8_t>& storage, std::vector<double>& exact, size_t t, size_t h, size_t i,
           double x) {
    const size_t index = t * view_.k_token_stride + h * view_.k_head_stride + i;
    double stored;
    if (dtype_ == COVATTN_F32) {
      const float f = static_cast<float>(x);
      std::memcpy(storage.data() + 4 * index, &f, 4);
      stored = f;
    } else {
      const uint16_t bits =
          dtype_ == COVATTN_F16 ? F16FromDouble(x) : BF16FromFloat(static_cast<float>(x));
      std::memcpy(storage.data() + 2 * index, &bits, 2);
      stored = dtype_ == COVATTN_F16 ? DoubleFromF16(bits) : DoubleFromBF16(bits);
    }
    exact[(t * n_heads_ + h) * dim_ + i] = stored;
  }

  size_t ScaleIndex(size_t t, size_t h) const {
    return t * scales_->k_token_stride + h * scales_->k_head_stride;
  }
  void SetInt8(std::vector<float>& input, std::vector<uint8_t>& storage, std::vector<float>& scales,
               std::vector<double>& exact, size_t t, size_t h, size_t i, double x) {
    input[(t * n_heads_ + h) * dim_ + i] = static_cast<float>(x);
    if (!quantize_later_) Quantize(input, storage, scales, exact, t, h);
  }
  void Quantize(const std::vector<float>& input, std::vector<uint8_t>& storage,
                std::vector<float>& scales, std::vector<double>& exact, size_t t, size_t h) {
    const size_t at = (t * n_heads_ + h) * dim_;
    std::vector<int8_t> q(dim_);
    const float scale = QuantizeInt8Reference(input.data() + at, dim_, q.data());
    scales[ScaleIndex(t, h)] = scale;
    const size_t index = t * view_.k_token_stride + h * view_.k_head_stride;
    std::memcpy(storage.data() + index, q.data(), dim_);
    for (size_t i = 0; i < dim_; ++i) exact[at + i] = double(scale) * q[i];
  }

  uint32_t dtype_;
  size_t n_tokens_, n_heads_, dim_;
  std::vector<uint8_t> k_storage_, v_storage_;
  std::vector<double> k_, v_;
  covattn_kv_cache view_, input_view_{};
  // INT8 only: the values set, before quantisation, and the scales.
  std::vector<float> k_input_, v_input_, k_scale_, v_scale_;
  // On the heap, like the vectors' data, so the view survives a move (and
  // the cache cannot be copied, which would leave it pointing at the source).
  std::unique_ptr<covattn_int8_scales> scales_;
  bool quantize_later_ = false;

 public:
  uint32_t dtype() const { return dtype_; }
};

// ---------------------------------------------------------------------------
// Double-precision reference of softmax attention (MATH.md section 1) and
// the error bound of an f32 kernel against it.

inline bool Visible(size_t pos, size_t j, size_t window, size_t n_sinks) {
  return j <= pos && (window == 0 || pos - j < window || j < n_sinks);
}

struct ReferenceRow {
  std::vector<double> out;    // [dim]
  std::vector<double> bound;  // [dim]: allowed |f32 result - out|
  double log_z = 0.0;
  double log_z_bound = 0.0;
  size_t n_visible = 0;
};

// One query row: q (f32 values, the kernel's input) at position pos against
// KV head kv_head of the cache, keys in [begin, end) only.
//
// The bound follows the f32 computation step by step (u = 2^-24):
//  - a = fl(scale * q) and the score, a dot product of length d, are off by
//    at most e_j = (d + 2) u sum_i |a_i k_ji| (Higham, Thm 3.5);
//  - a weight exp(s_j - m) carries e_j, the rounding of s_j - m
//    (u |s_j - m|) and the exp error (Highway: 1 ulp, counted as 4 u);
//    first order, output i moves by sum_j w_j eps_j |v_ji - out_i|;
//  - the numerator and denominator are f32 sums over n tokens with
//    rescaling per chunk; their rounding errors behave like independent
//    random variables (Higham, section 2.8), so each is bounded by
//    4 u sqrt(n) sum_j w_j |v_ji| (4 standard deviations), plus 2 u |out_i|
//    for the final division.
inline ReferenceRow ReferenceAttention(const TestCache& cache, const float* q, float scale,
                                       size_t kv_head, size_t pos, size_t window, size_t n_sinks,
                                       size_t begin = 0, size_t end = SIZE_MAX) {
  const size_t dim = cache.dim();
  end = std::min(end, cache.n_tokens());
  std::vector<double> a(dim);
  for (size_t i = 0; i < dim; ++i) a[i] = static_cast<double>(scale) * q[i];
  std::vector<size_t> tokens;
  std::vector<double> s, abs_dot;
  for (size_t j = begin; j < end; ++j) {
    if (!Visible(pos, j, window, n_sinks)) continue;
    double dot = 0.0, abs_sum = 0.0;
    for (size_t i = 0; i < dim; ++i) {
      dot += a[i] * cache.K(j, kv_head, i);
      abs_sum += std::fabs(a[i] * cache.K(j, kv_head, i));
    }
    tokens.push_back(j);
    s.push_back(dot);
    abs_dot.push_back(abs_sum);
  }
  ReferenceRow row;
  row.out.assign(dim, 0.0);
  row.bound.assign(dim, 0.0);
  row.n_visible = tokens.size();
  if (tokens.empty()) {
    row.log_z = -std::numeric_limits<double>::infinity();
    return row;
  }
  const size_t int8 = cache.dtype() == COVATTN_INT8 ? 1 : 0;
  const double m = *std::max_element(s.begin(), s.end());
  std::vector<double> w(tokens.size()), eps(tokens.size());
  double norm = 0.0;
  for (size_t n = 0; n < tokens.size(); ++n) {
    w[n] = std::exp(s[n] - m);
    norm += w[n];
    // INT8: the K scale multiplies the rounded dot product (one more u).
    eps[n] = (dim + 2 + int8) * kU * abs_dot[n] + kU * std::fabs(s[n] - m) + 4 * kU;
  }
  double eps_z = 0.0;
  for (size_t n = 0; n < tokens.size(); ++n) {
    w[n] /= norm;
    eps_z += w[n] * eps[n];
  }
  row.log_z = m + std::log(norm);
  const double sqrt_n = std::sqrt(static_cast<double>(tokens.size()));
  // log Z: the weighted score error, the sum's rounding, and fl(m + log l).
  row.log_z_bound = eps_z + 4 * kU * sqrt_n + 2 * kU * (std::fabs(row.log_z) + 1.0);
  for (size_t i = 0; i < dim; ++i) {
    double out = 0.0, abs_mean = 0.0;
    for (size_t n = 0; n < tokens.size(); ++n) {
      const double vi = cache.V(tokens[n], kv_head, i);
      out += w[n] * vi;
      abs_mean += w[n] * std::fabs(vi);
    }
    double spread = 0.0;
    for (size_t n = 0; n < tokens.size(); ++n) {
      spread += w[n] * eps[n] * std::fabs(cache.V(tokens[n], kv_head, i) - out);
    }
    row.out[i] = out;
    // INT8: each weight is rounded once more by its V scale.
    row.bound[i] =
        spread + (2 * 4 * sqrt_n + int8) * kU * abs_mean + 2 * kU * std::fabs(out) + 1e-30;
  }
  return row;
}

// Checks f32 results against a reference row; reports the worst element.
inline void CheckRow(const float* got, const ReferenceRow& ref, size_t dim) {
  double worst_ratio = 0.0;
  size_t worst = 0;
  for (size_t i = 0; i < dim; ++i) {
    const double ratio = std::fabs(got[i] - ref.out[i]) / ref.bound[i];
    if (!(ratio <= worst_ratio)) worst_ratio = ratio, worst = i;  // NaN counts as worst
  }
  INFO("dim " << worst << ": got " << got[worst] << ", reference " << ref.out[worst] << ", bound "
              << ref.bound[worst]);
  CHECK(worst_ratio <= 1.0);
}

}  // namespace covattn_test

#endif  // COVATTN_TESTS_TEST_UTIL_H_
