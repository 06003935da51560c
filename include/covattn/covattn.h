/* covattn: attention kernels for CPUs (exact streaming softmax attention).
 *
 * C ABI. Every entry point validates its arguments and returns a status; the
 * library never prints, never aborts and never throws across this boundary.
 * A call that fails validation writes nothing. Kernels never allocate: the
 * scratch memory they need is reported by a size function and passed in.
 *
 * The maths is in docs/MATH.md (a copy of the design notes); section numbers
 * below refer to it. */
#ifndef COVATTN_COVATTN_H_
#define COVATTN_COVATTN_H_

#include <stddef.h>
#include <stdint.h>

#include "covattn/export.h"

#define COVATTN_VERSION_MAJOR 0
#define COVATTN_VERSION_MINOR 1
#define COVATTN_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH */
#define COVATTN_VERSION_NUMBER \
  (COVATTN_VERSION_MAJOR * 10000 + COVATTN_VERSION_MINOR * 100 + COVATTN_VERSION_PATCH)

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------
 * Status codes. Zero is success, positive values are success with a note,
 * negative values are errors (nothing was written unless stated). */
typedef enum covattn_status {
  COVATTN_OK = 0,
  /* Success, but at least one query row saw no visible token: its output is
   * all zeros (and its log Z is -INFINITY when requested). */
  COVATTN_FULLY_MASKED = 1,

  COVATTN_ERR_NULL_POINTER = -1,       /* a required pointer is NULL */
  COVATTN_ERR_UNSUPPORTED_DTYPE = -2,  /* element type is not a covattn_dtype the call takes */
  COVATTN_ERR_INVALID_HEAD_DIM = -3,   /* head_dim is 0 or above COVATTN_MAX_HEAD_DIM */
  COVATTN_ERR_INVALID_HEAD_COUNT = -4, /* a head count is 0 */
  COVATTN_ERR_HEAD_MISMATCH = -5,      /* n_q_heads is not a multiple of n_kv_heads */
  COVATTN_ERR_INVALID_STRIDE = -6,     /* strides make two vectors of one tensor overlap */
  COVATTN_ERR_SIZE_OVERFLOW = -7,      /* the extent of a tensor does not fit in memory */
  COVATTN_ERR_MISALIGNED = -8,         /* a pointer is not aligned to its element size */
  COVATTN_ERR_ALIASING = -9,           /* an output overlaps an input or another output */
  COVATTN_ERR_INVALID_SCALE = -10,     /* scale is NaN or infinite */
  COVATTN_ERR_INVALID_POSITION = -11,  /* query positions lie beyond the cache */
  COVATTN_ERR_INVALID_RANGE = -12,     /* a token range is reversed or beyond the cache */
  COVATTN_ERR_SCRATCH_TOO_SMALL = -13, /* scratch is NULL or smaller than required */
  /* NaN or infinity: in an input the call reads (queries, the K/V of visible
   * tokens, partial states), in a score (|scale q.k| beyond FLT_MAX; int8
   * dots scale q with the int8 elements before the token's scale) or in a
   * result (sums of values beyond FLT_MAX). Decode and prefill outputs may
   * have been written and must not be used; partial_merge and
   * partial_finalize write nothing in this case. */
  COVATTN_ERR_NONFINITE = -14,
  COVATTN_ERR_UNKNOWN_TARGET = -15,     /* a target name is not one covattn knows */
  COVATTN_ERR_TARGET_UNAVAILABLE = -16, /* no named target is compiled in and supported here */

  /* Stateful objects (covariance state, bounded cache) and their files. */
  COVATTN_ERR_EMPTY_STATE = -17,        /* a readout of a state that has seen no token */
  COVATTN_ERR_SHAPE_MISMATCH = -18,     /* head count, head_dim or settings of two objects differ */
  COVATTN_ERR_INVALID_FORGETTING = -19, /* forgetting factor not in (0, 1] */
  COVATTN_ERR_OUT_OF_MEMORY = -20,      /* allocation at creation failed */
  COVATTN_ERR_BUFFER_TOO_SMALL = -21,   /* caller memory or output buffer too small */
  COVATTN_ERR_TRUNCATED = -22,          /* serialized data ends early */
  COVATTN_ERR_BAD_MAGIC = -23,          /* serialized data is not a covattn object of this kind */
  COVATTN_ERR_VERSION = -24,            /* serialized data has an unsupported format version */
  COVATTN_ERR_CHECKSUM = -25,           /* serialized payload does not match its checksum */
  COVATTN_ERR_CORRUPT = -26,        /* serialized fields are inconsistent, absurd or non-finite */
  COVATTN_ERR_INVALID_BUDGET = -27, /* a cache budget that cannot work (see covattn/cache.h) */
  /* A covattn_thread_pool with no parallel_for or n_threads 0; or, after the
   * call, a pool that skipped a task, ran one twice (its second run is
   * refused) or named a thread >= n_threads (outputs may then have been
   * written and must not be used). */
  COVATTN_ERR_INVALID_THREAD_POOL = -28
} covattn_status;

/* A static English description of a status; never NULL. */
COVATTN_API const char* covattn_status_string(covattn_status status);

/* Version of the library actually linked ("MAJOR.MINOR.PATCH"), and its
 * number in the form of COVATTN_VERSION_NUMBER. */
COVATTN_API const char* covattn_version(void);
COVATTN_API uint32_t covattn_version_number(void);

/* ---------------------------------------------------------------------------
 * Run-time CPU dispatch. Every kernel is compiled for several instruction
 * sets (x86: AVX3 = AVX-512, AVX2, SSE4, and a portable fallback; aarch64:
 * SVE2, SVE, SVE_256, SVE2_128, NEON, fallback) and the best one the CPU
 * supports is used. The choice is covattn's own: restricting it does not
 * affect other users of Highway in the same process.
 *
 * The environment variable COVATTN_TARGETS, read once at first use, restricts
 * the choice like covattn_restrict_targets(), except that names it cannot use
 * are skipped instead of failing: unknown names (covattn_unknown_env_targets()
 * lists them) and unavailable ones; if no name is left, nothing is
 * restricted. */

/* Name of the target kernels currently run on, e.g. "AVX3", "NEON". */
COVATTN_API const char* covattn_target_name(void);

/* Number of targets that are both compiled in and supported by this CPU, and
 * their names, best first. Returns NULL for index >= count. */
COVATTN_API size_t covattn_available_target_count(void);
COVATTN_API const char* covattn_available_target(size_t index);

/* Restricts dispatch to the targets named in a comma-separated,
 * case-insensitive list (e.g. "avx2,sse4"); the best available one is used.
 * NULL or "" lifts the restriction. COVATTN_ERR_UNKNOWN_TARGET if a name is
 * no target covattn knows (x86 and Arm names are known everywhere),
 * COVATTN_ERR_TARGET_UNAVAILABLE if none of the named targets is compiled in
 * and supported here; on error the previous choice stays. Not thread-safe with respect to kernels
 * running at the same time. */
COVATTN_API covattn_status covattn_restrict_targets(const char* names);

/* The names in COVATTN_TARGETS that are no target name covattn knows (a
 * typo, say), comma-separated as written; "" when there are none or the
 * variable is unset. The string lives as long as the process. */
COVATTN_API const char* covattn_unknown_env_targets(void);

/* ---------------------------------------------------------------------------
 * Tensors. */

typedef enum covattn_dtype {
  COVATTN_F32 = 0,
  COVATTN_F16 = 1,  /* IEEE binary16, passed as uint16_t bits */
  COVATTN_BF16 = 2, /* bfloat16, passed as uint16_t bits */
  /* int8_t with one f32 scale per (token, head) vector: element i of the
   * vector stands for scale * q[i] (covattn_int8_scales; MATH.md section 7).
   * Exact attention (decode, prefill, partial states) and the covariance
   * state's update read it; the bounded cache stores it (covattn/cache.h:
   * config.dtype, fed float blocks); covattn_convert refuses it with
   * COVATTN_ERR_UNSUPPORTED_DTYPE. */
  COVATTN_INT8 = 3
} covattn_dtype;

#define COVATTN_MAX_HEAD_DIM 512

/* The scales of an int8 cache: the (token t, head h) vector of K stands for
 * k_scale[t * k_token_stride + h * k_head_stride] times its int8 elements,
 * and likewise for V (strides in floats; no two (token, head) scales of one
 * tensor may share a float). covattn_quantize_int8 writes them. Any finite
 * value is accepted; a NaN or infinite scale of a visible token makes the
 * call fail with COVATTN_ERR_NONFINITE like any other non-finite input. */
typedef struct covattn_int8_scales {
  const float* k_scale;
  const float* v_scale;
  size_t k_token_stride;
  size_t k_head_stride;
  size_t v_token_stride;
  size_t v_head_stride;
} covattn_int8_scales;

/* A KV cache of one layer. Element (token t, head h, dim i) of K is at
 * k[t * k_token_stride + h * k_head_stride + i] (strides in elements), so both
 * [token][head][dim] and [head][token][dim] layouts, and views into larger
 * buffers, work without copies. The dims of one vector are contiguous. Within
 * each of K and V, no two (token, head) vectors may overlap. */
typedef struct covattn_kv_cache {
  uint32_t dtype; /* a covattn_dtype, for both K and V */
  const void* k;
  const void* v;
  size_t n_tokens; /* tokens in the cache; k and v may be NULL when 0 */
  size_t n_heads;  /* KV heads */
  size_t head_dim; /* 1 .. COVATTN_MAX_HEAD_DIM */
  size_t k_token_stride;
  size_t k_head_stride;
  size_t v_token_stride;
  size_t v_head_stride;
  /* COVATTN_INT8 only (required there when n_tokens > 0; ignored for the
   * other dtypes, so zero-initialised or NULL is right for them). */
  const covattn_int8_scales* int8_scales;
} covattn_kv_cache;

/* Queries, f32: element (position t, head h, dim i) at
 * data[t * token_stride + h * head_stride + i]. Head h reads KV head
 * h / (n_heads / kv.n_heads) (grouped-query attention; MHA when equal). */
typedef struct covattn_queries {
  const float* data;
  size_t n_tokens; /* query positions */
  size_t n_heads;  /* query heads, a multiple of the cache's n_heads */
  size_t token_stride;
  size_t head_stride;
} covattn_queries;

/* Outputs, f32, laid out like the queries (same n_tokens, n_heads, head_dim)
 * with their own strides. log_z is optional (NULL to skip): one float per
 * (position t, head h) at log_z[t * n_heads + h], the log of the softmax
 * normaliser sum_j exp(s_j) (MATH.md section 1). */
typedef struct covattn_outputs {
  float* data;
  size_t token_stride;
  size_t head_stride;
  float* log_z;
} covattn_outputs;

/* The caller's thread pool, for calls that split their work over threads
 * (covattn never creates threads). parallel_for runs task(task_context,
 * thread, i) once for every i in [0, n_tasks), on any threads in any order,
 * and returns when all have finished; `thread` < n_threads names the worker
 * running the task, and no two tasks run at the same time with the same
 * `thread` (covattn gives each worker its own scratch). The argument order
 * of covattn_task is pthreadpool's (pthreadpool_task_1d_with_thread_t), so
 * pthreadpool_parallelize_1d_with_thread can run it directly. The calling
 * thread may be one of the workers. */
typedef void (*covattn_task)(void* task_context, size_t thread, size_t task);
typedef struct covattn_thread_pool {
  void (*parallel_for)(void* pool_context, size_t n_tasks, covattn_task task, void* task_context);
  void* pool_context;
  size_t n_threads; /* workers, >= 1 */
} covattn_thread_pool;

/* Masking and scaling, shared by decode and prefill. A query at position p
 * sees token j when j <= p and (window == 0 or p - j < window or
 * j < n_sinks): a sliding window of the last `window` tokens plus the first
 * n_sinks tokens. Zero-initialised options mean: default scale, no window,
 * the calling thread only. */
typedef struct covattn_attention_options {
  float scale;    /* scores are scale * q.k; 0 selects 1/sqrt(head_dim) */
  size_t window;  /* 0: unlimited */
  size_t n_sinks; /* only meaningful with a window */
  /* NULL: run on the calling thread. Otherwise decode, prefill and
   * prefill_partial split their work over the pool's threads. A call with
   * fewer than 2 * n_threads passes (runs of up to 32 query rows that walk
   * the cache together: decode, short prefill) cuts each pass into ranges of
   * the cache (up to ceil(2 * n_threads / passes), at most one per 256
   * visible tokens), so each thread streams contiguous memory, and merges
   * their partial states in a fixed order (MATH.md section 1); other calls
   * share out runs of whole tiles of query rows (each of one KV head). The
   * split depends on the problem and n_threads only (a pool of more than
   * 1024 threads is split as if it had 1024), so results are the
   * same bits however the pool schedules the tasks; they differ from the
   * 1-thread results by rounding only. The call blocks until parallel_for
   * returns. The scratch must hold covattn_attention_scratch_size_threads
   * bytes. */
  const covattn_thread_pool* threads;
} covattn_attention_options;

/* Bytes of scratch memory the attention calls need for this head_dim,
 * without a thread pool. Any alignment is accepted. */
COVATTN_API covattn_status covattn_attention_scratch_size(size_t head_dim, size_t* bytes);

/* Bytes of scratch memory the attention calls need with a pool of n_threads
 * workers (n_threads >= 1, else COVATTN_ERR_INVALID_THREAD_POOL): one
 * 1-thread scratch per worker plus the partial states of the cache-range
 * split (at most 4 * n_threads states of up to 32 rows):
 *   bytes = 64 + n_threads * (4 * (192 * L + 4096) + 16 * R + 2)
 * with L = head_dim rounded up to a multiple of 16 and R = 32 * (head_dim +
 * 2); about n_threads * 177 KiB at head_dim 128. Any alignment is
 * accepted. */
COVATTN_API covattn_status covattn_attention_scratch_size_threads(size_t head_dim, size_t n_threads,
                                                                  size_t* bytes);

/* Decode: one query position per head (the newest token, position
 * kv->n_tokens - 1) against the whole cache. kv->n_tokens is the number of
 * tokens written so far, the current one included (append it before
 * decoding it), not the capacity of an engine's preallocated buffer: every
 * one of the n_tokens rows is attended to. (Prefill says the same position
 * with n_past: its first query is at n_past, and kv->n_tokens may run past
 * its last one.) q is [n_q_heads][head_dim] and
 * out the same, both contiguous. options may be NULL. On an empty cache
 * (n_tokens == 0) the arguments are checked as for any other call and out is
 * set to zeros with COVATTN_FULLY_MASKED. */
COVATTN_API covattn_status covattn_decode(const covattn_kv_cache* kv, const float* q,
                                          size_t n_q_heads,
                                          const covattn_attention_options* options, float* out,
                                          void* scratch, size_t scratch_bytes);

/* Prefill: queries at positions n_past .. n_past + q->n_tokens - 1, causal,
 * against a cache that already holds their own keys and values
 * (kv->n_tokens >= n_past + q->n_tokens; tokens after the last query
 * position are never seen). Tiled: memory use does not grow with the number
 * of tokens. Decode is the case q->n_tokens == 1, n_past = n_tokens - 1. */
COVATTN_API covattn_status covattn_prefill(const covattn_kv_cache* kv, const covattn_queries* q,
                                           size_t n_past, const covattn_attention_options* options,
                                           const covattn_outputs* out, void* scratch,
                                           size_t scratch_bytes);

/* ---------------------------------------------------------------------------
 * Partial softmax states (MATH.md section 1): for each query row the running
 * max m, normaliser l = sum exp(s_j - m) and un-normalised output
 * o = sum exp(s_j - m) v_j over a range of the cache. Rows are numbered
 * r = t * n_q_heads + h; o is [rows][head_dim] contiguous. A row that saw no
 * visible token has l = 0, o = 0 and a finite, very negative m. */
typedef struct covattn_partial {
  float* m;
  float* l;
  float* o;
} covattn_partial;

/* Like covattn_prefill but over cache tokens [token_begin, token_end) only,
 * writing a partial state of q->n_tokens * q->n_heads rows. Ranges that
 * split the cache can be computed independently (e.g. on several threads)
 * and merged. */
COVATTN_API covattn_status covattn_prefill_partial(const covattn_kv_cache* kv,
                                                   const covattn_queries* q, size_t n_past,
                                                   const covattn_attention_options* options,
                                                   size_t token_begin, size_t token_end,
                                                   const covattn_partial* state, void* scratch,
                                                   size_t scratch_bytes);

/* into <- merge(into, other), row by row; exact up to rounding and
 * associative. `other` may not overlap `into`. All or nothing: a state with
 * NaN or infinity, or a result that would overflow, gives
 * COVATTN_ERR_NONFINITE and leaves `into` as it was. */
COVATTN_API covattn_status covattn_partial_merge(size_t n_rows, size_t head_dim,
                                                 const covattn_partial* into,
                                                 const covattn_partial* other);

/* out[r][i] = o[r][i] / l[r] (zeros where l = 0, reported as
 * COVATTN_FULLY_MASKED); log_z[r] = m + log l when log_z is not NULL. A state
 * with NaN or infinity is refused (COVATTN_ERR_NONFINITE) before anything is
 * written. */
COVATTN_API covattn_status covattn_partial_finalize(size_t n_rows, size_t head_dim,
                                                    const covattn_partial* state, float* out,
                                                    float* log_z);

/* Converts n elements of src (src_dtype) into dst (dst_dtype), vectorised:
 * f32 to f16 or bf16, either back to f32, or f32 to f32 (a copy); other pairs
 * give COVATTN_ERR_UNSUPPORTED_DTYPE. What an engine does to store f32 K/V
 * rows in a 16-bit cache. To 16 bits: round to nearest even; magnitudes that
 * round beyond the largest finite value (f16: |x| >= 65520) become infinity;
 * f16 keeps subnormals; NaN stays NaN (quiet, sign kept). To f32: exact.
 * Identical bits on every target. dst and src must not overlap
 * (COVATTN_ERR_ALIASING) and be aligned to their element sizes
 * (COVATTN_ERR_MISALIGNED); n = 0 is a no-op that accepts NULL. */
COVATTN_API covattn_status covattn_convert(void* dst, uint32_t dst_dtype, const void* src,
                                           uint32_t src_dtype, size_t n);

/* Quantises n_vectors vectors of dim f32 values (vector r at src + r *
 * src_stride) to int8 with one scale each, as an engine stores a token's K or
 * V rows in an int8 cache: scale = max_i |x_i| / 127 (0 for an all-zero
 * vector), q_i = x_i * (127 / max_i |x_i|) rounded to nearest even, so |q_i|
 * <= 127 and the vector's largest element is exact up to its scale's
 * rounding (MATH.md section 7). Vector r goes to dst + r * dst_stride and its
 * scale to scales[r * scale_stride] (strides in elements). Identical bits on
 * every target. NaN or infinity in src gives COVATTN_ERR_NONFINITE and writes
 * nothing; outputs overlapping src, each other, or vectors overlapping
 * within one tensor give COVATTN_ERR_ALIASING / COVATTN_ERR_INVALID_STRIDE;
 * dim 0 or above COVATTN_MAX_HEAD_DIM is COVATTN_ERR_INVALID_HEAD_DIM;
 * n_vectors = 0 is a no-op that accepts NULL. */
COVATTN_API covattn_status covattn_quantize_int8(const float* src, size_t n_vectors, size_t dim,
                                                 size_t src_stride, int8_t* dst, size_t dst_stride,
                                                 float* scales, size_t scale_stride);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* COVATTN_COVATTN_H_ */
