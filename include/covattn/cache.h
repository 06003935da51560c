/* covattn: a bounded-memory attention cache.
 *
 * What an engine keeps per layer instead of an ever-growing KV cache: a fixed
 * budget of exact tokens plus a summary of every other token. Decode merges
 * the exact part and the summary exactly in log-sum-exp space (MATH.md
 * section 4). Memory is fixed at creation however long the context; until
 * the first token is evicted, decode is exact attention.
 *
 * Exact tokens, per KV head:
 *   n_sinks     the first tokens, always kept;
 *   window      the most recent tokens (a ring);
 *   n_retained  query-aware slots: the tokens that drew the most softmax
 *               weight (the `retention` policy: EMA, H2O or TOVA; scores
 *               come from covattn_cache_observe);
 *   n_outliers  the keys a Gaussian summary would misrepresent most (their
 *               squared Mahalanobis distance under the summary's keys).
 * A token leaving the window is offered to the retained slots; whatever they
 * do not keep (the newcomer or the resident it displaces) is offered to the
 * outlier slots; what those do not keep is folded into the summary, or
 * dropped when there is none. Each set of slots keeps the highest scores.
 *
 * Summaries (`summary`, docs/cache.md, MATH.md sections 2 and 6):
 *   COVATTN_SUMMARY_COVARIANCE  the covariance state (covattn/covariance.h):
 *                               readout mu_v + C_vk a, O(d^2) per head;
 *   COVATTN_SUMMARY_COMPACT     weight, means and per-dimension variances of
 *                               the keys, O(d) per head; readout mu_v;
 *   COVATTN_SUMMARY_NONE        evicted tokens are dropped (the same as the
 *                               flag COVATTN_CACHE_DROP_EVICTED).
 * Keys are appended post-RoPE, as the engine attends to them. `rope` says how
 * they were rotated; with rotated keys the summaries replace the Gaussian
 * normaliser of each rotation plane by that of a ring (MATH.md section 6),
 * which never claims more mass than the Gaussian and stays finite for every
 * finite input. COVATTN_ROPE_NONE keeps the Gaussian (the right choice for
 * keys without RoPE, and what caches did before 0.2).
 *
 * Retention scores (n_retained > 0): decode reads a const cache and changes
 * nothing. covattn_cache_observe(cache, q, ..., log_z) afterwards folds the
 * softmax weights that decode gave the exact tokens (summed over the query
 * heads of each KV head, normalised by decode's log Z, so the summary's share
 * counts) into the scores of the window and retained tokens:
 *   COVATTN_RETENTION_EMA   s <- lambda s + w  (lambda = retention_decay)
 *   COVATTN_RETENTION_H2O   s <- s + w         (heavy hitters)
 *   COVATTN_RETENTION_TOVA  s <- w             (the last query's weight)
 * A token entering the window starts at 0 and carries its score when it
 * leaves; a newcomer displaces the lowest-scored resident when its score is
 * at least as high (the oldest of equal scores leaves first), so a cache that
 * is never observed keeps the most recently evicted tokens (FIFO). Observe
 * costs about one score pass over the scored tokens (less than a decode).
 *
 * An engine's step, per layer: append the current token's K and V, decode
 * its queries, then (with retained slots) observe with decode's log Z. A
 * prompt (or a chunk of one) goes through covattn_cache_prefill instead,
 * which gives its positions' outputs and appends it.
 *
 * Zero means the default: a zero-initialised config with n_kv_heads,
 * head_dim and dtype set is the covariance summary of every token (no exact
 * slots), forgetting 1, no RoPE; retention EMA with decay 0.9.
 *
 * Budget rules (covattn_cache_config_error() names the rule a config breaks):
 *  - dtype a covattn_dtype (COVATTN_ERR_UNSUPPORTED_DTYPE), head_dim in
 *    1 .. COVATTN_MAX_HEAD_DIM and even with RoPE (COVATTN_ERR_INVALID_HEAD_DIM),
 *    n_kv_heads > 0 (COVATTN_ERR_INVALID_HEAD_COUNT);
 *  - forgetting in (0, 1] (0: 1; ignored without a summary) and
 *    retention_decay in (0, 1] (0: 0.9) (COVATTN_ERR_INVALID_FORGETTING);
 *  - known flags, summary, rope and retention values; the flag
 *    COVATTN_CACHE_DROP_EVICTED only with summary COVARIANCE (the default)
 *    or NONE; without a summary no outlier slots (their score needs the
 *    summary's key statistics) and at least one exact slot (n_sinks + window
 *    + n_retained > 0) (COVATTN_ERR_INVALID_BUDGET);
 *  - sizes that overflow (COVATTN_ERR_SIZE_OVERFLOW).
 *
 * Conventions are those of covattn.h. Concurrency: decode and serialize take
 * a const cache and may run at the same time on one cache (each thread with
 * its own scratch); append, prefill, observe, reset and load need exclusive
 * access. One scratch buffer serves every cache of a configuration, so an
 * engine keeps one per thread, not one per layer. Results are deterministic
 * on a target, not bit-identical across targets (the kernels' sums round
 * differently, and outlier and retention choices may differ on ties). */
#ifndef COVATTN_CACHE_H_
#define COVATTN_CACHE_H_

#include "covattn/covariance.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct covattn_cache covattn_cache;

/* Flags of covattn_cache_config. */
#define COVATTN_CACHE_DROP_EVICTED 1u /* no summary: the same as COVATTN_SUMMARY_NONE */

typedef enum covattn_cache_summary {
  COVATTN_SUMMARY_COVARIANCE = 0,
  COVATTN_SUMMARY_COMPACT = 1,
  COVATTN_SUMMARY_NONE = 2
} covattn_cache_summary;

/* How keys were rotated before they were appended: RoPE acts on planes of
 * two dimensions. */
typedef enum covattn_rope {
  COVATTN_ROPE_NONE = 0,
  COVATTN_ROPE_INTERLEAVED = 1, /* planes (2i, 2i+1): llama2.c, llama.cpp's "normal" rope */
  COVATTN_ROPE_HALF_SPLIT = 2   /* planes (i, i + d/2): GPT-NeoX, Hugging Face Llama */
} covattn_rope;

typedef enum covattn_retention {
  COVATTN_RETENTION_EMA = 0,
  COVATTN_RETENTION_H2O = 1,
  COVATTN_RETENTION_TOVA = 2
} covattn_retention;

/* New fields come last, so positional initialisers of the first eight keep
 * their meaning (C++ compilers warn of the missing ones with
 * -Wmissing-field-initializers; designated or zero initialisers do not). */
typedef struct covattn_cache_config {
  size_t n_kv_heads;
  size_t head_dim;   /* 1 .. COVATTN_MAX_HEAD_DIM */
  uint32_t dtype;    /* covattn_dtype of the stored exact K and V; COVATTN_INT8
                      * quantises each stored (token, head) vector as
                      * covattn_quantize_int8 does, its scale beside it */
  size_t n_sinks;    /* first tokens, always kept exact */
  size_t window;     /* most recent tokens kept exact */
  size_t n_outliers; /* outlier key slots per KV head */
  float forgetting;  /* summary forgetting factor, (0, 1]; 0 means 1 */
  uint32_t flags;
  size_t n_retained;     /* query-aware slots per KV head */
  uint32_t retention;    /* covattn_retention: how observe scores tokens */
  float retention_decay; /* lambda of COVATTN_RETENTION_EMA, (0, 1]; 0 means 0.9 */
  uint32_t summary;      /* covattn_cache_summary */
  uint32_t rope;         /* covattn_rope of the appended keys */
} covattn_cache_config;

/* NULL when covattn_cache_create would accept the config; otherwise a static
 * English description of the first budget rule above that it breaks. */
COVATTN_API const char* covattn_cache_config_error(const covattn_cache_config* config);

/* Persistent bytes of a cache with this configuration: everything it keeps
 * between calls, nothing else (work memory is the caller's scratch). With v
 * the bytes of a stored vector (d e for a dtype of e bytes; int8: d rounded up
 * to a multiple of 4, plus 4 for its f32 scale), H = n_kv_heads, d =
 * head_dim, R(x) = x rounded up to a multiple of 64, S, W, N, O = n_sinks,
 * window, n_retained, n_outliers:
 *
 *   576                                          header and alignment slack
 *   + 2 R(S H v) + 2 R(W H v)                    sinks, window (K and V)
 *   + 2 R(N H v) + R(4 N H) + R(8 N H) + R(4 H) + R(4 W H)
 *                                                retained slots: rows, scores,
 *                                                token numbers, counts, window
 *                                                scores (all 0 when N = 0)
 *   + 2 R(O H v) + R(4 O H) + R(4 H)             outlier slots, scores, counts
 *   + R(2 H d^2) + R(4 H d)                      whitening (0 when O = 0)
 *   + R(16 H)                                    per-head fold counts
 *   + summary: COVARIANCE  R(191 + H (R(8 (1 + 2d)) + R(8 d^2 + 256)))
 *              COMPACT     H R(8 (1 + 3d))
 *              NONE        0
 *
 * At d = 64 in f32 a token costs 512 bytes per head (int8: 136), the
 * covariance summary 34112 bytes per head (67 f32 tokens), the compact one
 * 1600 (3). */
COVATTN_API covattn_status covattn_cache_size(const covattn_cache_config* config, size_t* bytes);

/* Bytes of scratch that serve append, prefill, decode and observe on every
 * cache of this configuration, for up to n_q_heads query heads (a multiple of
 * n_kv_heads): one buffer per thread, shared by all layers of that
 * configuration (for several configurations, the largest). Prefill's part
 * does not depend on the block's length: two partial states of one tile of
 * query positions, 8 (head_dim + 2) bytes per query row of the tile (at least
 * 64 rows, at least 8 per KV head), then the append's workspace in the same
 * bytes. Each call checks the scratch it is given against what it needs:
 * NULL or too small gives COVATTN_ERR_SCRATCH_TOO_SMALL, scratch overlapping
 * the cache or another argument COVATTN_ERR_ALIASING. Its contents do not
 * matter between calls. */
COVATTN_API covattn_status covattn_cache_scratch_size(const covattn_cache_config* config,
                                                      size_t n_q_heads, size_t* bytes);

/* Creates a cache in caller memory (any alignment) or allocating once. */
COVATTN_API covattn_status covattn_cache_init(void* memory, size_t bytes,
                                              const covattn_cache_config* config,
                                              covattn_cache** cache);
COVATTN_API covattn_status covattn_cache_create(const covattn_cache_config* config,
                                                covattn_cache** cache);
/* Frees a created cache; does nothing for one made with init. NULL is fine. */
COVATTN_API void covattn_cache_destroy(covattn_cache* cache);

/* Empties the cache, keeping its configuration. */
COVATTN_API covattn_status covattn_cache_reset(covattn_cache* cache);

typedef struct covattn_cache_info {
  covattn_cache_config config; /* as the cache uses it: defaults filled in, and
                                  flags and summary agreeing */
  uint64_t n_tokens;           /* tokens appended since creation or reset */
  uint64_t n_summarized;       /* token rows folded into the summary, summed over KV heads */
  uint64_t n_dropped;          /* token rows dropped (no summary), summed over KV heads */
  size_t n_exact;              /* exact tokens held now, summed over KV heads */
  size_t bytes;                /* the memory the cache occupies */
} covattn_cache_info;

COVATTN_API covattn_status covattn_cache_info_get(const covattn_cache* cache,
                                                  covattn_cache_info* info);

/* Appends block->n_tokens tokens (K and V of every KV head, post-RoPE, f32,
 * f16 or bf16 in any strides, whatever the cache stores: an int8 block gives
 * COVATTN_ERR_UNSUPPORTED_DTYPE; n_heads and head_dim must match). Append the
 * current token before decoding its queries. Never fails for lack of room:
 * tokens beyond the budget are evicted (see above). Long blocks (prefill) are
 * processed in batches of 64 tokens: eviction, slot selection and the
 * summary update each run once per batch and KV head, not once per token. A
 * block containing NaN or infinity, a magnitude above 2^40, or, for a cache
 * storing f16, a value that f16 cannot hold (|x| >= 65520) is refused with
 * COVATTN_ERR_NONFINITE before anything changes. */
COVATTN_API covattn_status covattn_cache_append(covattn_cache* cache, const covattn_kv_cache* block,
                                                void* scratch, size_t scratch_bytes);

/* Prefill through the cache: the attention outputs of a block of n =
 * block->n_tokens new tokens (a prompt, or a chunk of one), then the block
 * appended. block is as for covattn_cache_append; q holds the queries of the
 * same n positions (q->n_tokens == n, q->n_heads a multiple of n_kv_heads,
 * any strides) and out receives their outputs (any strides; out->log_z
 * optional, [n][q->n_heads]), as covattn_prefill's covattn_queries and
 * covattn_outputs; scale 0 for 1/sqrt(head_dim).
 *
 * Semantics: position t of the block attends to everything the cache holds
 * before the block, exactly as covattn_cache_decode sees it (exact tokens and
 * summary), plus the block's own tokens 0 .. t exactly (causal, read from
 * the block as given, in its dtype), merged exactly in log-sum-exp space
 * (MATH.md section 4). Then the block is appended: the cache ends exactly as
 * covattn_cache_append of the same block leaves it. So a prompt into an
 * empty cache gives covattn_prefill over the prompt (to rounding), and while
 * the append evicts nothing (tokens appended so far + n <= n_sinks + window)
 * the outputs are those of appending and decoding one token at a time (for
 * a block in the cache's dtype; later decodes see the block's tokens as the
 * cache stores them). Once it
 * evicts (a block longer than the window's room, as a long prompt is), the
 * two differ: token by token, position t would see the tokens evicted by the
 * block's first t tokens (older tokens, and once the block overflows the
 * window, the block's own) only through the summary or the slots, while
 * prefill attends to the cache as it was and to the whole causal block
 * exactly.
 *
 * Cost: about an append plus exact attention over the block. Positions run
 * in tiles (at least 64 query rows, at least 8 rows per KV head): per tile,
 * one multi-query attention call per stored segment, one causal call over
 * the block, and the summary's readout per position. The scratch is
 * covattn_cache_scratch_size's for q->n_heads query heads (it covers
 * prefill, append, decode and observe; it does not depend on n).
 *
 * Statuses: every argument is checked before anything is written or
 * appended: the cache, NULL pointers, the block's dtype and shape
 * (COVATTN_ERR_SHAPE_MISMATCH also when q->n_tokens != n), the head counts,
 * the scale, the strides of block, queries and outputs, the scratch, and
 * aliasing (outputs and scratch overlapping each other, the queries, the
 * block or the cache). A block refused by append's rule (NaN, infinity,
 * |x| > 2^40, f16 overflow) or a query that is not finite gives
 * COVATTN_ERR_NONFINITE before anything is written. A failed call leaves the
 * cache untouched. Outputs are written only by a successful call, with one
 * exception: scores or sums that overflow during the computation (finite
 * inputs of huge magnitude) give COVATTN_ERR_NONFINITE after some outputs
 * were written (do not use them); the cache is untouched then too. n = 0
 * checks the arguments and does nothing. Never COVATTN_FULLY_MASKED: every
 * position sees at least its own token. */
COVATTN_API covattn_status covattn_cache_prefill(covattn_cache* cache,
                                                 const covattn_kv_cache* block,
                                                 const covattn_queries* q, float scale,
                                                 const covattn_outputs* out, void* scratch,
                                                 size_t scratch_bytes);

/* Optional per-query diagnostics of covattn_cache_decode, [n_q_heads] each.
 *
 * summary_share is the share of the softmax mass the summary carries:
 * e^(log Z_S) / Z. summary_ess is the summary's effective sample size,
 * (sum w)^2 / sum w^2 of the weights its model gives its tokens (W e^(-a^T C_kk a)
 * for the Gaussian): how many tokens the summary's share rests on. A share
 * near 0 means the exact tokens carry the query; a large share resting on a
 * small ESS (a few tokens' worth) means the summary is asked for detail it
 * does not keep: give the cache a larger window or retained slots. */
typedef struct covattn_cache_diagnostics {
  float* summary_share;
  float* summary_ess;
  float* log_z; /* log of the total softmax normaliser; what observe needs */
} covattn_cache_diagnostics;

/* Decode for n_q_heads queries (a multiple of n_kv_heads), q and out
 * [n_q_heads][head_dim] contiguous, scale 0 for 1/sqrt(head_dim). The
 * queries attend to every token appended so far: the exact part (sinks,
 * window, retained and outlier slots) through the exact attention kernel,
 * the summary through its readout and log-normaliser; the two merge exactly.
 * diagnostics may be NULL, as may any of its arrays. An empty cache gives
 * zeros and COVATTN_FULLY_MASKED. */
COVATTN_API covattn_status covattn_cache_decode(const covattn_cache* cache, const float* q,
                                                size_t n_q_heads, float scale, float* out,
                                                const covattn_cache_diagnostics* diagnostics,
                                                void* scratch, size_t scratch_bytes);

/* covattn_cache_decode over the caller's thread pool (covattn.h's
 * covattn_thread_pool); threads NULL is covattn_cache_decode itself, with its
 * scratch. With H = n_kv_heads, P = min(n_threads, 1024) and W = 2 P tasks
 * wanted, the work is split one of two ways, by the cache's counts and
 * n_threads only, never by how the pool schedules the tasks:
 *  - by KV head, when P = 1, H >= W, or N below is 1 (E < 512): task
 *    k of n_tasks = min(H, W) reads KV heads [k H / n_tasks, (k + 1) H /
 *    n_tasks) with all their query heads (exact part, summary readout and
 *    merge). A query head's result is computed by the same code whatever the
 *    split, so the results are the same bits as covattn_cache_decode's;
 *  - by KV range otherwise (split-KV): with E the exact tokens (sinks,
 *    window, retained and outlier slots) of the fullest head, each head's
 *    exact tokens are cut into N = min(ceil(W / H), floor(E / 256)) near-equal
 *    ranges (at 64-token boundaries), one task each, into partial states;
 *    one more task per KV head reads its summary, if the cache has folded
 *    any (n_tasks = H N, or H N + H). The calling thread then merges each
 *    head's ranges in range order, then the summary (MATH.md section 4). The
 *    results are the same bits for every schedule and every pool of the same
 *    n_threads, and differ from covattn_cache_decode's by float rounding
 *    only: the exact part's sums are grouped by range, each range rescaled to
 *    its own running max, as in exact attention's split-KV (covattn.h). The
 *    summary's readout, and so summary_ess, is the same bits.
 * Each task runs on the scratch of the worker running it. Outputs and
 * diagnostics reach the caller only once every task has run. The scratch
 * must hold covattn_cache_scratch_size_threads bytes (enough for every other
 * call on the cache too). Statuses as for covattn_cache_decode, plus
 * COVATTN_ERR_INVALID_THREAD_POOL for a pool with no parallel_for or
 * n_threads 0 (checked with the other arguments), or one found after
 * parallel_for returns to have skipped a task, run one twice or named a
 * thread >= n_threads; out and diagnostics are untouched then too. */
COVATTN_API covattn_status covattn_cache_decode_threads(
    const covattn_cache* cache, const float* q, size_t n_q_heads, float scale,
    const covattn_thread_pool* threads, float* out, const covattn_cache_diagnostics* diagnostics,
    void* scratch, size_t scratch_bytes);

/* Bytes of scratch for covattn_cache_decode_threads over n_threads workers
 * (n_threads >= 1, else COVATTN_ERR_INVALID_THREAD_POOL), for up to
 * n_q_heads query heads; other statuses as covattn_cache_scratch_size. With
 * S = covattn_cache_scratch_size's bytes for the same config and n_q_heads,
 * R(x) = x rounded up to a multiple of 64, H = n_kv_heads, g = n_q_heads / H
 * and N_max the ranges per head of covattn_cache_decode_threads with E = the
 * most exact tokens a head can hold (n_sinks + window + n_retained +
 * n_outliers):
 *   bytes = 64 + R(4 n_q_heads (head_dim + 3)) + n_threads R(S)
 *           + (N_max > 1 ? H N_max R(4 g (head_dim + 2))
 *                          + R(4 n_q_heads (head_dim + 2)) : 0)
 * (the staged outputs and diagnostics, one S per worker, then for a config
 * that may split by KV range one partial state per range and the summary's
 * readouts). It serves every decode on caches of the config, whatever they
 * hold. Any alignment is accepted. */
COVATTN_API covattn_status covattn_cache_scratch_size_threads(const covattn_cache_config* config,
                                                              size_t n_q_heads, size_t n_threads,
                                                              size_t* bytes);

/* Folds the weights the exact tokens drew from one decode into their
 * retention scores (see above). q, n_q_heads and scale as given to
 * covattn_cache_decode, log_z [n_q_heads] as it reported (diagnostics.log_z),
 * with nothing appended in between. A row whose log Z is -infinity (it saw no
 * token) adds nothing. Queries that are not finite, or a log Z that is NaN
 * or +infinity, give COVATTN_ERR_NONFINITE and change nothing. A cache
 * without retained slots checks its arguments and changes nothing. */
COVATTN_API covattn_status covattn_cache_observe(covattn_cache* cache, const float* q,
                                                 size_t n_q_heads, float scale, const float* log_z,
                                                 void* scratch, size_t scratch_bytes);

/* Serialization of the whole cache (format 2), with the header, checksum and
 * refuse-before-write rules of covattn_cov_state_load. The destination must
 * have the same configuration (as covattn_cache_info reports it). Files of
 * format 1 (covattn 0.1) load into caches without retained slots, with a
 * covariance summary or none, and COVATTN_ROPE_NONE; such caches also write
 * format 1, byte for byte what covattn 0.1 wrote, so 0.1 reads them. */
COVATTN_API covattn_status covattn_cache_serialized_size(const covattn_cache* cache, size_t* bytes);
COVATTN_API covattn_status covattn_cache_serialize(const covattn_cache* cache, void* buffer,
                                                   size_t capacity, size_t* written);
COVATTN_API covattn_status covattn_cache_load(covattn_cache* cache, const void* buffer,
                                              size_t size);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* COVATTN_CACHE_H_ */
