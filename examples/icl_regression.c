/* In-context linear regression with the covariance readout.
 *
 * Tokens z_i = [x_i; y_i] (x in R^15, y = w.x + noise) serve as keys and
 * values of one attention head with identity projections, and the query is
 * [x_q; 0] with scale eta. The covariance readout's last component is
 *
 *   y_bar + x_q . w_1,   w_1 = eta (1/n) sum_i (y_i - y_bar)(x_i - x_bar),
 *
 * exactly one step of gradient descent (learning rate eta, from w = 0) on
 * the centred least-squares loss (docs/MATH.md section 2). The program
 * checks that identity to rounding, and shows exact softmax attention over
 * the same tokens landing close to it (it converges to the readout as the
 * context grows) and the step's large-n limit y_bar + eta x_q.w. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "covattn/covariance.h"

enum { kDx = 15, kDim = kDx + 1, kTokens = 4096, kQueries = 4 };

/* Standard normal from a fixed-seed xorshift generator (Box-Muller). */
static double next_uniform(uint64_t* s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return ((double)(*s >> 11) + 0.5) / 9007199254740992.0;
}
static double next_normal(uint64_t* s) {
  const double u = next_uniform(s), v = next_uniform(s);
  return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

int main(void) {
  const float eta = 0.25f;
  float* z = malloc(sizeof(float) * kTokens * kDim);
  float q[kQueries * kDim], out[kQueries * kDim], exact[kQueries * kDim];
  double w[kDx];
  /* One scratch buffer serves the exact decode and the state's update. */
  size_t scratch_bytes = 0, update_bytes = 0;
  if (z == NULL || covattn_attention_scratch_size(kDim, &scratch_bytes) != COVATTN_OK ||
      covattn_cov_state_scratch_size(kDim, &update_bytes) != COVATTN_OK) {
    return 1;
  }
  if (update_bytes > scratch_bytes) scratch_bytes = update_bytes;
  void* scratch = malloc(scratch_bytes);
  if (scratch == NULL) return 1;

  uint64_t rng = 0x853C49E6748FEA9Bull;
  for (int i = 0; i < kDx; ++i) w[i] = next_normal(&rng) / sqrt((double)kDx);
  for (int t = 0; t < kTokens; ++t) {
    double y = 0.5 + 0.1 * next_normal(&rng);
    for (int i = 0; i < kDx; ++i) {
      z[t * kDim + i] = (float)next_normal(&rng);
      y += w[i] * z[t * kDim + i];
    }
    z[t * kDim + kDx] = (float)y;
  }
  for (int h = 0; h < kQueries; ++h) {
    for (int i = 0; i < kDx; ++i) q[h * kDim + i] = (float)next_normal(&rng);
    q[h * kDim + kDx] = 0.0f;
  }

  /* One KV head; keys and values are the same [token][dim] array. */
  const covattn_kv_cache tokens = {COVATTN_F32, z,    z,    kTokens, 1,   kDim,
                                   kDim,        kDim, kDim, kDim,    NULL};
  covattn_cov_state* state = NULL;
  covattn_status status = covattn_cov_state_create(1, kDim, 1.0f, &state);
  if (status == COVATTN_OK)
    status = covattn_cov_state_update(state, &tokens, scratch, scratch_bytes);
  if (status == COVATTN_OK) status = covattn_cov_readout(state, q, kQueries, eta, out, NULL, NULL);
  const covattn_attention_options options = {eta, 0, 0, NULL};
  if (status == COVATTN_OK) {
    status = covattn_decode(&tokens, q, kQueries, &options, exact, scratch, scratch_bytes);
  }
  if (status != COVATTN_OK) {
    fprintf(stderr, "covattn: %s\n", covattn_status_string(status));
    return 1;
  }

  /* The gradient step, explicitly, in double. */
  double mean[kDim] = {0}, w1[kDx] = {0};
  for (int t = 0; t < kTokens; ++t)
    for (int i = 0; i < kDim; ++i) mean[i] += z[t * kDim + i] / (double)kTokens;
  for (int t = 0; t < kTokens; ++t) {
    const double dy = z[t * kDim + kDx] - mean[kDx];
    for (int i = 0; i < kDx; ++i) w1[i] += eta * dy * (z[t * kDim + i] - mean[i]) / kTokens;
  }

  printf("covattn %s, target %s: %d tokens z = [x; y], x in R^%d, learning rate %.2f\n",
         covattn_version(), covattn_target_name(), kTokens, kDx, eta);
  /* As n grows, w_1 -> eta Cov(x, y) = eta w (x has identity covariance). */
  printf("%8s %14s %14s %14s %18s\n", "query", "GD step", "readout", "softmax attn",
         "limit y_bar+eta x.w");
  double worst = 0.0;
  for (int h = 0; h < kQueries; ++h) {
    double gd = mean[kDx], truth = 0.0;
    for (int i = 0; i < kDx; ++i) gd += q[h * kDim + i] * w1[i], truth += q[h * kDim + i] * w[i];
    const double err = fabs(out[h * kDim + kDx] - gd);
    if (err > worst) worst = err;
    printf("%8d %14.6f %14.6f %14.6f %18.6f\n", h, gd, out[h * kDim + kDx], exact[h * kDim + kDx],
           mean[kDx] + eta * truth);
  }
  printf("readout vs GD step: max |difference| %.2g (f32 rounding)\n", worst);
  covattn_cov_state_destroy(state);
  free(z), free(scratch);
  return worst < 1e-4 ? 0 : 1;
}
