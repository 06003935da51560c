/* A C program against an installed covattn: decodes one query over two tokens
 * whose softmax weights are 1/4 and 3/4, and checks the result and that the
 * library linked is the one whose headers were compiled in. No libm of its
 * own: the static link must bring what covattn needs. */
#include <covattn/covattn.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  enum { kDim = 4, kTokens = 2 };
  /* Scale 1/sqrt(4) = 1/2: scores 0 and log 3, so weights 1/4 and 3/4. */
  const float k[kTokens * kDim] = {0, 0, 0, 0, 2.19722458f /* 2 log 3 */, 0, 0, 0};
  const float v[kTokens * kDim] = {0, 0, 0, 0, 1, 1, 1, 1};
  const float q[kDim] = {1, 0, 0, 0};
  float out[kDim];
  const covattn_kv_cache kv = {COVATTN_F32, k, v, kTokens, 1, kDim, kDim, kDim, kDim, kDim, NULL};
  size_t scratch_bytes = 0;
  if (covattn_attention_scratch_size(kDim, &scratch_bytes) != COVATTN_OK) return 1;
  void* scratch = malloc(scratch_bytes);
  if (!scratch) return 1;
  const covattn_status status = covattn_decode(&kv, q, 1, NULL, out, scratch, scratch_bytes);
  free(scratch);
  printf("covattn %s on %s: %s, out[0] = %g\n", covattn_version(), covattn_target_name(),
         covattn_status_string(status), out[0]);
  if (covattn_version_number() != COVATTN_VERSION_NUMBER) return 1;
  if (status != COVATTN_OK) return 1;
  for (int i = 0; i < kDim; ++i) {
    if (out[i] < 0.75f - 1e-6f || out[i] > 0.75f + 1e-6f) return 1;
  }
  return 0;
}
