/* Decode attention through the C API: a GQA layer (32 query heads over 8 KV
 * heads, head_dim 128) against a 4096-token f16 cache, checked against a
 * double-precision reference computed here on the same f16 values. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "covattn/covattn.h"

enum { kQHeads = 32, kKvHeads = 8, kDim = 128, kTokens = 4096 };

/* Uniform in [-1, 1) from a fixed-seed xorshift generator. */
static double next_uniform(uint64_t* state) {
  *state ^= *state << 13;
  *state ^= *state >> 7;
  *state ^= *state << 17;
  return (double)(*state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* The reference reads the f16 values back on its own (not through covattn). */
static double double_from_f16(uint16_t h) {
  const int exponent = (h >> 10) & 0x1F;
  const double mantissa = (double)(h & 0x3FF);
  const double magnitude =
      exponent == 0 ? ldexp(mantissa, -24) : ldexp(1024.0 + mantissa, exponent - 25);
  return (h & 0x8000u) ? -magnitude : magnitude;
}

int main(void) {
  const size_t cache_elems = (size_t)kTokens * kKvHeads * kDim;
  uint16_t* k = malloc(cache_elems * sizeof *k);
  uint16_t* v = malloc(cache_elems * sizeof *v);
  float* q = malloc((size_t)kQHeads * kDim * sizeof *q);
  float* out = malloc((size_t)kQHeads * kDim * sizeof *out);
  double* scores = malloc((size_t)kTokens * sizeof *scores);
  size_t scratch_bytes = 0;
  if (covattn_attention_scratch_size(kDim, &scratch_bytes) != COVATTN_OK) return 1;
  void* scratch = malloc(scratch_bytes);
  if (!k || !v || !q || !out || !scores || !scratch) return 1;

  /* An engine's f32 K/V rows, stored in f16 with covattn_convert. */
  float* k32 = malloc(cache_elems * sizeof *k32);
  float* v32 = malloc(cache_elems * sizeof *v32);
  if (!k32 || !v32) return 1;
  uint64_t rng = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < cache_elems; ++i) {
    k32[i] = (float)(2.0 * next_uniform(&rng));
    v32[i] = (float)next_uniform(&rng);
  }
  if (covattn_convert(k, COVATTN_F16, k32, COVATTN_F32, cache_elems) != COVATTN_OK ||
      covattn_convert(v, COVATTN_F16, v32, COVATTN_F32, cache_elems) != COVATTN_OK) {
    return 1;
  }
  free(k32), free(v32);
  for (size_t i = 0; i < (size_t)kQHeads * kDim; ++i) q[i] = (float)(2.0 * next_uniform(&rng));

  /* [token][head][dim] layout, strides in elements. */
  const covattn_kv_cache cache = {
      COVATTN_F16,     k,    v,   kTokens, kKvHeads, kDim, kKvHeads * kDim, kDim,
      kKvHeads * kDim, kDim, NULL};
  const covattn_status status =
      covattn_decode(&cache, q, kQHeads, NULL, out, scratch, scratch_bytes);
  if (status != COVATTN_OK) {
    fprintf(stderr, "covattn_decode: %s\n", covattn_status_string(status));
    return 1;
  }

  /* Reference in double on the same f16 values. */
  const double scale = (double)(1.0f / sqrtf((float)kDim));
  double max_abs_error = 0.0, max_abs_out = 0.0;
  for (int h = 0; h < kQHeads; ++h) {
    const int kv_head = h / (kQHeads / kKvHeads);
    double max_score = -INFINITY, norm = 0.0;
    for (int t = 0; t < kTokens; ++t) {
      const uint16_t* kt = k + ((size_t)t * kKvHeads + kv_head) * kDim;
      double s = 0.0;
      for (int i = 0; i < kDim; ++i) s += scale * q[h * kDim + i] * double_from_f16(kt[i]);
      scores[t] = s;
      if (s > max_score) max_score = s;
    }
    for (int t = 0; t < kTokens; ++t) norm += exp(scores[t] - max_score);
    for (int i = 0; i < kDim; ++i) {
      double acc = 0.0;
      for (int t = 0; t < kTokens; ++t) {
        acc += exp(scores[t] - max_score) *
               double_from_f16(v[((size_t)t * kKvHeads + kv_head) * kDim + i]);
      }
      const double ref = acc / norm;
      const double err = fabs(out[h * kDim + i] - ref);
      if (err > max_abs_error) max_abs_error = err;
      if (fabs(ref) > max_abs_out) max_abs_out = fabs(ref);
    }
  }
  printf("covattn %s, target %s\n", covattn_version(), covattn_target_name());
  printf("decode: %d query heads, %d KV heads, head_dim %d, %d f16 tokens\n", kQHeads, kKvHeads,
         kDim, kTokens);
  printf("out[0][0..3] = %.6f %.6f %.6f %.6f\n", out[0], out[1], out[2], out[3]);
  printf("max |error| against the double reference: %.3g (outputs up to %.3g)\n", max_abs_error,
         max_abs_out);
  free(k), free(v), free(q), free(out), free(scores), free(scratch);
  return max_abs_error < 1e-4 ? 0 : 1;
}
