#include "onednn_peer.h"

#include <cmath>
#include <limits>
#include <oneapi/dnnl/dnnl.hpp>
#include <vector>

namespace covattn_tools {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

memory::dims Dims(size_t a, size_t b) {
  return {static_cast<memory::dim>(a), static_cast<memory::dim>(b)};
}

}  // namespace

struct OneDnnDecode::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  size_t n_kv_heads, group, dim, n_tokens, head_stride;
  const float* k;
  const float* v;
  float scale;
  std::vector<float> q_scaled, scores;
  dnnl::matmul scores_mm, out_mm;
  dnnl::softmax_forward softmax;
  memory::desc q_md, kt_md, s_md, v_md, o_md;
};

OneDnnDecode::OneDnnDecode(size_t n_kv_heads, size_t group, size_t dim, size_t n_tokens,
                           size_t token_stride, size_t head_stride, const float* k, const float* v)
    : impl_(new Impl) {
  Impl& m = *impl_;
  m.n_kv_heads = n_kv_heads, m.group = group, m.dim = dim, m.n_tokens = n_tokens;
  m.k = k, m.v = v, m.head_stride = head_stride;
  m.scale = 1.0f / std::sqrt(static_cast<float>(dim));
  m.q_scaled.resize(group * dim);
  m.scores.resize(group * n_tokens);
  const auto stride = static_cast<memory::dim>(token_stride);
  m.q_md = memory::desc(Dims(group, dim), dt::f32, tag::ab);
  // K^T of one head as a [dim][n_tokens] view of the token-major cache.
  m.kt_md = memory::desc(Dims(dim, n_tokens), dt::f32, memory::dims{1, stride});
  m.s_md = memory::desc(Dims(group, n_tokens), dt::f32, tag::ab);
  m.v_md = memory::desc(Dims(n_tokens, dim), dt::f32, memory::dims{stride, 1});
  m.o_md = memory::desc(Dims(group, dim), dt::f32, tag::ab);
  m.scores_mm = dnnl::matmul(
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(m.q_md, m.kt_md, m.s_md), m.engine));
  m.softmax = dnnl::softmax_forward(dnnl::softmax_forward::primitive_desc(
      dnnl::softmax_forward::desc(dnnl::prop_kind::forward_inference, m.s_md, 1), m.engine));
  m.out_mm = dnnl::matmul(
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(m.s_md, m.v_md, m.o_md), m.engine));
}

OneDnnDecode::~OneDnnDecode() = default;

void OneDnnDecode::Run(const float* q, float* out) {
  Impl& m = *impl_;
  for (size_t h = 0; h < m.n_kv_heads; ++h) {
    const float* qh = q + h * m.group * m.dim;
    for (size_t i = 0; i < m.group * m.dim; ++i) m.q_scaled[i] = m.scale * qh[i];
    memory q_mem(m.q_md, m.engine, m.q_scaled.data());
    memory k_mem(m.kt_md, m.engine, const_cast<float*>(m.k + h * m.head_stride));
    memory s_mem(m.s_md, m.engine, m.scores.data());
    memory v_mem(m.v_md, m.engine, const_cast<float*>(m.v + h * m.head_stride));
    memory o_mem(m.o_md, m.engine, out + h * m.group * m.dim);
    m.scores_mm.execute(m.stream,
                        {{DNNL_ARG_SRC, q_mem}, {DNNL_ARG_WEIGHTS, k_mem}, {DNNL_ARG_DST, s_mem}});
    m.softmax.execute(m.stream, {{DNNL_ARG_SRC, s_mem}, {DNNL_ARG_DST, s_mem}});
    m.out_mm.execute(m.stream,
                     {{DNNL_ARG_SRC, s_mem}, {DNNL_ARG_WEIGHTS, v_mem}, {DNNL_ARG_DST, o_mem}});
  }
  m.stream.wait();
}

struct OneDnnPrefill::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  size_t dim, n;
  const float* k;
  const float* v;
  float scale;
  std::vector<float> q_scaled, scores, mask;
  dnnl::matmul scores_mm, out_mm;
  dnnl::softmax_forward softmax;
  memory::desc q_md, kt_md, s_md, v_md, o_md;
};

OneDnnPrefill::OneDnnPrefill(size_t dim, size_t n, const float* k, const float* v)
    : impl_(new Impl) {
  Impl& m = *impl_;
  m.dim = dim, m.n = n, m.k = k, m.v = v;
  m.scale = 1.0f / std::sqrt(static_cast<float>(dim));
  m.q_scaled.resize(n * dim);
  m.scores.resize(n * n);
  m.mask.resize(n * n);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j)
      m.mask[i * n + j] = j <= i ? 0.0f : -std::numeric_limits<float>::infinity();
  m.q_md = memory::desc(Dims(n, dim), dt::f32, tag::ab);
  m.kt_md = memory::desc(Dims(dim, n), dt::f32, tag::ba);  // K [n][dim] read as K^T
  m.s_md = memory::desc(Dims(n, n), dt::f32, tag::ab);
  m.v_md = memory::desc(Dims(n, dim), dt::f32, tag::ab);
  m.o_md = memory::desc(Dims(n, dim), dt::f32, tag::ab);
  dnnl::post_ops causal;
  causal.append_binary(dnnl::algorithm::binary_add, m.s_md);
  dnnl::primitive_attr attr;
  attr.set_post_ops(causal);
  m.scores_mm = dnnl::matmul(
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(m.q_md, m.kt_md, m.s_md), attr, m.engine));
  m.softmax = dnnl::softmax_forward(dnnl::softmax_forward::primitive_desc(
      dnnl::softmax_forward::desc(dnnl::prop_kind::forward_inference, m.s_md, 1), m.engine));
  m.out_mm = dnnl::matmul(
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(m.s_md, m.v_md, m.o_md), m.engine));
}

OneDnnPrefill::~OneDnnPrefill() = default;

void OneDnnPrefill::Run(const float* q, float* out) {
  Impl& m = *impl_;
  for (size_t i = 0; i < m.n * m.dim; ++i) m.q_scaled[i] = m.scale * q[i];
  memory q_mem(m.q_md, m.engine, m.q_scaled.data());
  memory k_mem(m.kt_md, m.engine, const_cast<float*>(m.k));
  memory s_mem(m.s_md, m.engine, m.scores.data());
  memory mask_mem(m.s_md, m.engine, m.mask.data());
  memory v_mem(m.v_md, m.engine, const_cast<float*>(m.v));
  memory o_mem(m.o_md, m.engine, out);
  m.scores_mm.execute(m.stream, {{DNNL_ARG_SRC, q_mem},
                                 {DNNL_ARG_WEIGHTS, k_mem},
                                 {DNNL_ARG_DST, s_mem},
                                 {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, mask_mem}});
  m.softmax.execute(m.stream, {{DNNL_ARG_SRC, s_mem}, {DNNL_ARG_DST, s_mem}});
  m.out_mm.execute(m.stream,
                   {{DNNL_ARG_SRC, s_mem}, {DNNL_ARG_WEIGHTS, v_mem}, {DNNL_ARG_DST, o_mem}});
  m.stream.wait();
}

}  // namespace covattn_tools
