/* An engine's attention loop on covattn's bounded cache, in C with threads.
 *
 * A toy transformer (random projections instead of trained weights: the
 * loop, not the model, is the point) with kLayers layers of kKvHeads KV
 * heads x kGroup query heads, head_dim kDim, keys and queries rotated by
 * RoPE in interleaved pairs (llama2.c's run.c). What an engine does:
 *  - per layer, one bounded cache per KV head (n_kv_heads = 1), so that a
 *    layer's KV heads are independent and split over threads;
 *  - one scratch buffer per thread, sized once for the largest call and
 *    shared by every layer's caches (covattn_cache_scratch_size);
 *  - the prompt: every layer passes the prompt's K/V block and queries to
 *    covattn_cache_prefill, which computes the prompt positions' outputs
 *    against what the cache held before (nothing here) and the block itself
 *    causally, exactly, then appends the block. The prompt is longer than
 *    the cache's exact slots: tokens leave them during the block, yet every
 *    prompt position still attends to the whole prompt exactly;
 *  - then token by token: append the token's K and V, decode its queries,
 *    observe the decode (the retained slots' scores).
 * Every step is checked against exact attention over a full KV buffer kept
 * on the side (the reference only; the loop itself keeps no such buffer):
 * every prompt position identical to f32 rounding, then the bounded cache's
 * error on the decoded tokens is printed. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "covattn/cache.h"
#include "covattn/covattn.h"

enum {
  kLayers = 2,
  kKvHeads = 2,
  kGroup = 4, /* query heads per KV head */
  kDim = 64,
  kModel = 128,  /* width of the toy residual stream */
  kPrompt = 160, /* longer than the cache's 100 exact slots */
  kSteps = 240,
  kThreads = 2
};
enum { kQHeads = kKvHeads * kGroup, kTokens = kPrompt + kSteps };

static double next_uniform(uint64_t* state) { /* in [-1, 1) */
  *state ^= *state << 13;
  *state ^= *state >> 7;
  *state ^= *state << 17;
  return (double)(*state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* Rotates x[0..kDim) at position pos in interleaved pairs (2i, 2i+1). */
static void rope(float* x, size_t pos) {
  for (int i = 0; i < kDim; i += 2) {
    const double angle = (double)pos * pow(10000.0, -(double)i / kDim);
    const float c = (float)cos(angle), s = (float)sin(angle);
    const float a = x[i], b = x[i + 1];
    x[i] = a * c - b * s;
    x[i + 1] = a * s + b * c;
  }
}

typedef struct Layer {
  float wq[kQHeads * kDim][kModel], wk[kKvHeads * kDim][kModel], wv[kKvHeads * kDim][kModel];
  covattn_cache* cache[kKvHeads];
  float* k_all; /* the exact reference's full buffers, [token][kv head][dim] */
  float* v_all;
} Layer;

static void project(const float* w, size_t rows, const float* x, float* out) {
  for (size_t r = 0; r < rows; ++r) {
    double s = 0.0;
    for (int i = 0; i < kModel; ++i) s += (double)w[r * kModel + i] * x[i];
    out[r] = (float)s;
  }
}

/* One layer's work for the tokens [first, first + n) of one KV head: what a
 * thread does. */
typedef struct Task {
  Layer* layer;
  int kv_head;
  size_t first, n; /* n > 1: the prompt (prefill); n == 1: one decode step */
  const float* q;  /* [n][kQHeads][kDim] */
  float* out;      /* [n][kQHeads][kDim] */
  void* scratch;   /* the thread's own */
  size_t scratch_bytes;
  covattn_status status;
} Task;

static void* run_task(void* arg) {
  Task* t = (Task*)arg;
  Layer* L = t->layer;
  const int h = t->kv_head;
  /* This head's K/V of the new tokens: a strided view into the full buffer. */
  const covattn_kv_cache block = {COVATTN_F32,
                                  L->k_all + (t->first * kKvHeads + h) * kDim,
                                  L->v_all + (t->first * kKvHeads + h) * kDim,
                                  t->n,
                                  1,
                                  kDim,
                                  kKvHeads * kDim,
                                  kDim,
                                  kKvHeads * kDim,
                                  kDim,
                                  NULL};
  const float* q = t->q + (size_t)h * kGroup * kDim;
  float* out = t->out + (size_t)h * kGroup * kDim;
  if (t->n > 1) { /* the prompt: its outputs, then the block appended */
    const covattn_queries queries = {q, t->n, kGroup, kQHeads * kDim, kDim};
    const covattn_outputs outputs = {out, kQHeads * kDim, kDim, NULL};
    t->status = covattn_cache_prefill(L->cache[h], &block, &queries, 0.0f, &outputs, t->scratch,
                                      t->scratch_bytes);
    return NULL;
  }
  t->status = covattn_cache_append(L->cache[h], &block, t->scratch, t->scratch_bytes);
  if (t->status != COVATTN_OK) return NULL;
  float log_z[kGroup];
  const covattn_cache_diagnostics diagnostics = {NULL, NULL, log_z};
  t->status = covattn_cache_decode(L->cache[h], q, kGroup, 0.0f, out, &diagnostics, t->scratch,
                                   t->scratch_bytes);
  if (t->status < 0) return NULL;
  t->status =
      covattn_cache_observe(L->cache[h], q, kGroup, 0.0f, log_z, t->scratch, t->scratch_bytes);
  return NULL;
}

/* Runs a layer's KV heads on kThreads threads, head h on thread h % kThreads
 * (a fixed split: the result does not depend on the scheduling). */
static int run_layer(Layer* L, size_t first, size_t n, const float* q, float* out, void** scratch,
                     size_t scratch_bytes) {
  Task tasks[kKvHeads];
  for (int h = 0; h < kKvHeads; ++h) {
    tasks[h] = (Task){L, h, first, n, q, out, scratch[h % kThreads], scratch_bytes, COVATTN_OK};
  }
  for (int h0 = 0; h0 < kKvHeads; h0 += kThreads) {
    pthread_t threads[kThreads];
    int started = 0;
    for (int i = 0; i < kThreads && h0 + i < kKvHeads; ++i, ++started) {
      if (pthread_create(&threads[i], NULL, run_task, &tasks[h0 + i]) != 0) return 0;
    }
    for (int i = 0; i < started; ++i) pthread_join(threads[i], NULL);
  }
  for (int h = 0; h < kKvHeads; ++h) {
    if (tasks[h].status < 0) {
      fprintf(stderr, "layer head %d: %s\n", h, covattn_status_string(tasks[h].status));
      return 0;
    }
  }
  return 1;
}

int main(void) {
  covattn_cache_config config;
  memset(&config, 0, sizeof config); /* zero fields are the defaults */
  config.n_kv_heads = 1;
  config.head_dim = kDim;
  config.dtype = COVATTN_F32;
  config.n_sinks = 4;
  config.window = 48;
  config.n_retained = 48;
  config.retention = COVATTN_RETENTION_EMA;
  config.summary = COVATTN_SUMMARY_COMPACT;
  config.rope = COVATTN_ROPE_INTERLEAVED;
  const char* why = covattn_cache_config_error(&config);
  if (why) {
    fprintf(stderr, "config: %s\n", why);
    return 1;
  }
  /* One scratch per thread for every call of every layer: the cache's calls
   * for kGroup query heads (prefill included), and the exact reference. */
  size_t cache_scratch = 0, attention_scratch = 0, cache_bytes = 0;
  if (covattn_cache_scratch_size(&config, kGroup, &cache_scratch) != COVATTN_OK ||
      covattn_attention_scratch_size(kDim, &attention_scratch) != COVATTN_OK ||
      covattn_cache_size(&config, &cache_bytes) != COVATTN_OK) {
    return 1;
  }
  const size_t scratch_bytes =
      cache_scratch > attention_scratch ? cache_scratch : attention_scratch;
  void* scratch[kThreads];
  for (int i = 0; i < kThreads; ++i) {
    if (!(scratch[i] = malloc(scratch_bytes))) return 1;
  }

  uint64_t rng = 0x2545F4914F6CDD1Dull;
  Layer* layers = calloc(kLayers, sizeof *layers);
  float* x = malloc((size_t)kTokens * kModel * sizeof *x); /* each position's input */
  float* q = malloc((size_t)kTokens * kQHeads * kDim * sizeof *q);
  float* out = malloc((size_t)kTokens * kQHeads * kDim * sizeof *out);
  float* exact = malloc((size_t)kPrompt * kQHeads * kDim * sizeof *exact);
  if (!layers || !x || !q || !out || !exact) return 1;
  for (int l = 0; l < kLayers; ++l) {
    Layer* L = &layers[l];
    const double w = 1.5 / sqrt((double)kModel); /* scores of std ~2: sharp-ish attention */
    for (int r = 0; r < kQHeads * kDim; ++r)
      for (int i = 0; i < kModel; ++i) L->wq[r][i] = (float)(w * next_uniform(&rng));
    for (int r = 0; r < kKvHeads * kDim; ++r)
      for (int i = 0; i < kModel; ++i) {
        L->wk[r][i] = (float)(w * next_uniform(&rng));
        L->wv[r][i] = (float)(w * next_uniform(&rng));
      }
    for (int h = 0; h < kKvHeads; ++h) {
      if (covattn_cache_create(&config, &L->cache[h]) != COVATTN_OK) return 1;
    }
    L->k_all = malloc((size_t)kTokens * kKvHeads * kDim * sizeof(float));
    L->v_all = malloc((size_t)kTokens * kKvHeads * kDim * sizeof(float));
    if (!L->k_all || !L->v_all) return 1;
  }
  for (size_t i = 0; i < (size_t)kTokens * kModel; ++i) x[i] = (float)next_uniform(&rng);

  /* The prompt in one block, then one token per step; per layer, q, k, v of
   * the new positions from that layer's input (the position's x plus what
   * the layers below added). */
  double worst_prompt = 0.0, sum_decoded = 0.0;
  size_t n_decoded = 0;
  for (size_t first = 0; first < kTokens; first += first == 0 ? kPrompt : 1) {
    const size_t n = first == 0 ? kPrompt : 1;
    for (int l = 0; l < kLayers; ++l) {
      Layer* L = &layers[l];
      for (size_t t = first; t < first + n; ++t) {
        float* qt = q + t * kQHeads * kDim;
        project(&L->wq[0][0], kQHeads * kDim, x + t * kModel, qt);
        project(&L->wk[0][0], kKvHeads * kDim, x + t * kModel, L->k_all + t * kKvHeads * kDim);
        project(&L->wv[0][0], kKvHeads * kDim, x + t * kModel, L->v_all + t * kKvHeads * kDim);
        for (int h = 0; h < kQHeads; ++h) rope(qt + h * kDim, t);
        for (int h = 0; h < kKvHeads; ++h) rope(L->k_all + (t * kKvHeads + h) * kDim, t);
      }
      if (!run_layer(L, first, n, q + first * kQHeads * kDim, out + first * kQHeads * kDim, scratch,
                     scratch_bytes)) {
        return 1;
      }
      /* Check the new positions against exact attention over every token. */
      const covattn_kv_cache full = {
          COVATTN_F32,     L->k_all, L->v_all,        first + n, kKvHeads, kDim,
          kKvHeads * kDim, kDim,     kKvHeads * kDim, kDim,      NULL};
      const covattn_queries queries = {q + first * kQHeads * kDim, n, kQHeads, kQHeads * kDim,
                                       kDim};
      const covattn_outputs outputs = {exact, kQHeads * kDim, kDim, NULL};
      if (covattn_prefill(&full, &queries, first, NULL, &outputs, scratch[0], scratch_bytes) !=
          COVATTN_OK) {
        return 1;
      }
      for (size_t t = 0; t < n; ++t) {
        double err = 0.0, norm = 0.0;
        const float* got = out + (first + t) * kQHeads * kDim;
        const float* want = exact + t * kQHeads * kDim;
        for (int i = 0; i < kQHeads * kDim; ++i) {
          err += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
          norm += (double)want[i] * want[i];
        }
        const double rel = sqrt(err / norm);
        if (first == 0) {
          if (rel > worst_prompt) worst_prompt = rel;
        } else {
          sum_decoded += rel, ++n_decoded;
        }
      }
      /* The next layer's input: the residual stream plus this layer's
       * output, mixed back to the model width (a fixed fold of the heads). */
      for (size_t t = first; t < first + n; ++t) {
        for (int i = 0; i < kModel; ++i) {
          x[t * kModel + i] += 0.5f * out[t * kQHeads * kDim + (i * 5) % (kQHeads * kDim)];
        }
      }
    }
  }

  covattn_cache_info info;
  if (covattn_cache_info_get(layers[0].cache[0], &info) != COVATTN_OK) return 1;
  printf(
      "engine loop: %d layers x %d KV heads x %d query heads, head_dim %d, %d prompt + %d "
      "decoded tokens, %d threads\n",
      kLayers, kKvHeads, kGroup, kDim, kPrompt, kSteps, kThreads);
  printf(
      "cache per KV head: %zu sinks + %zu window + %zu retained (EMA) + compact ring summary, "
      "%zu persistent bytes (exact f32 K/V of %d tokens: %zu); scratch %zu bytes per thread\n",
      config.n_sinks, config.window, config.n_retained, cache_bytes, kTokens,
      (size_t)kTokens * 2 * kDim * sizeof(float), scratch_bytes);
  printf("layer 0, head 0: %llu tokens appended, %llu summarised, %zu exact\n",
         (unsigned long long)info.n_tokens, (unsigned long long)info.n_summarized, info.n_exact);
  printf(
      "rel L2 against exact attention: %.2e at most over the prompt's positions (prefill), "
      "%.2e on average over the decoded tokens\n",
      worst_prompt, n_decoded ? sum_decoded / (double)n_decoded : 0.0);
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kKvHeads; ++h) covattn_cache_destroy(layers[l].cache[h]);
    free(layers[l].k_all), free(layers[l].v_all);
  }
  for (int i = 0; i < kThreads; ++i) free(scratch[i]);
  free(layers), free(x), free(q), free(out), free(exact);
  /* Prefill into an empty cache is exact attention over the prompt. */
  if (!(worst_prompt < 1e-5) || !(sum_decoded / (double)(n_decoded ? n_decoded : 1) < 0.5)) {
    fprintf(stderr, "engine loop: the bounded cache strayed from exact attention\n");
    return 1;
  }
  return 0;
}
