// The bounded cache's file format (include/covattn/cache.h): serialize, and
// a load that checks everything, the summary's own file last, before it
// writes anything.
//
// Serialized form, all little-endian:
//
//   offset  0  magic "COVATTNC"
//           8  u32 format version, u32 header bytes (128)
//          16  u64 n_kv_heads, u64 head_dim, u32 dtype, u32 flags,
//              u64 n_sinks, u64 window, u64 n_outliers, f32 forgetting,
//              u32 reserved (0), u64 n_tokens, u64 n_summarized,
//              u64 n_dropped, u64 payload bytes,
//         104  format 2: u64 n_retained, u32 retention, f32 retention_decay,
//              u32 summary, u32 rope; format 1: 24 reserved bytes (0)
//         128  payload (a "row" is a stored (token, head) vector: head_dim
//              elements of the dtype; for int8 head_dim bytes, zeros to a
//              multiple of 4, then its f32 scale):
//              sink K then V rows (min(n_tokens, n_sinks) tokens, all heads),
//              window K then V slots 0 .. window count - 1,
//              u32 outlier count per head, then per head: scores (f32),
//              K rows, V rows of its resident outliers,
//              with retained slots (format 2): u32 retained count per head,
//              then per head: scores (f32), token numbers (u64), K rows,
//              V rows of its residents; then per head the window slots'
//              scores (f32, window count of them),
//              per head: u64 tokens folded, u64 folded at the last
//              whitening, then with outlier slots mu_k (f32) and W^T
//              (d x d bf16),
//              with a summary: u64 bytes, then the summary's section: the
//              covariance state's own serialized form
//              (covattn_cov_state_serialize), or per head the compact
//              summary's 1 + 3d f64 (W, mu_k, mu_v, m2)
//         end  u64 FNV-1a of every byte before it
//
// A cache whose configuration format 1 (covattn 0.1) describes (no retained
// slots, a covariance summary or none, COVATTN_ROPE_NONE, not int8) writes format 1,
// byte for byte what 0.1 wrote; every other cache writes format 2.

#include <algorithm>
#include <cmath>
#include <cstring>

#include "bytes.h"
#include "cache.h"
#include "summary.h"

namespace covattn {
namespace detail {
namespace {

constexpr unsigned char kCacheFileMagic[8] = {'C', 'O', 'V', 'A', 'T', 'T', 'N', 'C'};
constexpr uint32_t kFormat1 = 1, kFormat2 = 2;
constexpr size_t kCacheFileHeaderBytes = 128;
constexpr size_t kChecksumBytes = 8;

// The format a configuration writes (see above).
uint32_t FormatOf(const covattn_cache_config& c) {
  const bool v1 = c.n_retained == 0 && c.rope == COVATTN_ROPE_NONE &&
                  c.summary != COVATTN_SUMMARY_COMPACT && c.dtype != COVATTN_INT8;
  return v1 ? kFormat1 : kFormat2;
}

// Serialized payload bytes for a cache in this state.
size_t PayloadBytes(const covattn_cache* cache) {
  const size_t d = cache->Dim(), vec = cache->vec_bytes;
  size_t bytes = 2 * (cache->SinkCount() + cache->WindowCount()) * cache->RowBytes();
  bytes += 4 * cache->Heads();
  for (size_t h = 0; h < cache->Heads(); ++h) {
    bytes += *Head(cache, h).count * (4 + 2 * vec);
    if (cache->HasRetained()) {
      bytes += 4 + *Head(cache, h).retained_count * (12 + 2 * vec);
      bytes += 4 * cache->WindowCount();
    }
  }
  bytes += cache->Heads() * 16;  // folded counts
  if (cache->HasOutliers()) bytes += cache->Heads() * (4 * d + 2 * d * d);
  if (cache->Summarizes()) bytes += 8 + SummarySerializedBytes(cache);
  return bytes;
}

size_t SerializedBytes(const covattn_cache* cache) {
  return kCacheFileHeaderBytes + PayloadBytes(cache) + kChecksumBytes;
}

// Writes n elements of `elem` bytes from memory in host order.
unsigned char* PutElements(unsigned char* p, const void* src, size_t n, size_t elem) {
  CopyLE(p, static_cast<const unsigned char*>(src), n, elem);
  return p + n * elem;
}

// Copies n stored vectors (vec_bytes each) between the cache and a file,
// either way: elements in little-endian order, an int8 vector as its bytes
// (padding included) and its scale.
void CopyVectorsLE(const covattn_cache* cache, unsigned char* dst, const unsigned char* src,
                   size_t n) {
  if (cache->config.dtype != COVATTN_INT8) return CopyLE(dst, src, n * cache->Dim(), cache->elem);
  const size_t at = Int8ScaleOffset(cache->Dim()), vec = cache->vec_bytes;
  for (size_t i = 0; i < n; ++i, dst += vec, src += vec) {
    std::memcpy(dst, src, at);
    CopyLE(dst + at, src + at, 1, sizeof(float));
  }
}
unsigned char* PutVectors(const covattn_cache* cache, unsigned char* p, const unsigned char* src,
                          size_t n) {
  CopyVectorsLE(cache, p, src, n);
  return p + n * cache->vec_bytes;
}

void PutHeader(const covattn_cache* cache, unsigned char* p) {
  const covattn_cache_config& c = cache->config;
  std::memset(p, 0, kCacheFileHeaderBytes);
  std::memcpy(p, kCacheFileMagic, 8);
  const uint32_t version = FormatOf(c);
  PutLE(p + 8, version, 4);
  PutLE(p + 12, kCacheFileHeaderBytes, 4);
  PutLE(p + 16, c.n_kv_heads, 8);
  PutLE(p + 24, c.head_dim, 8);
  PutLE(p + 32, c.dtype, 4);
  PutLE(p + 36, c.flags, 4);
  PutLE(p + 40, c.n_sinks, 8);
  PutLE(p + 48, c.window, 8);
  PutLE(p + 56, c.n_outliers, 8);
  PutF32LE(p + 64, c.forgetting);
  PutLE(p + 72, cache->n_tokens, 8);
  PutLE(p + 80, cache->n_summarized, 8);
  PutLE(p + 88, cache->n_dropped, 8);
  PutLE(p + 96, PayloadBytes(cache), 8);
  if (version == kFormat1) return;
  PutLE(p + 104, c.n_retained, 8);
  PutLE(p + 112, c.retention, 4);
  PutF32LE(p + 116, c.retention_decay);
  PutLE(p + 120, c.summary, 4);
  PutLE(p + 124, c.rope, 4);
}

// The retained slots' section (format 2, cache.h's retained slots only).
unsigned char* PutRetained(const covattn_cache* cache, unsigned char* at) {
  at = PutElements(at, Head(cache, 0).retained_count, cache->Heads(), 4);  // every head's
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const HeadRegions<const covattn_cache> head = Head(cache, h);
    const size_t n = *head.retained_count;
    at = PutElements(at, head.retained_scores, n, 4);
    at = PutElements(at, head.retained_stamps, n, 8);
    at = PutVectors(cache, at, Retained(cache, h, 0).k, n);
    at = PutVectors(cache, at, Retained(cache, h, 0).v, n);
  }
  for (size_t h = 0; h < cache->Heads(); ++h) {
    at = PutElements(at, Head(cache, h).window_scores, cache->WindowCount(), 4);
  }
  return at;
}

// Writes the payload at p; returns its end.
unsigned char* PutPayload(const covattn_cache* cache, unsigned char* at) {
  const size_t d = cache->Dim(), heads = cache->Heads();
  const size_t sinks = cache->SinkCount() * heads, window = cache->WindowCount() * heads;
  at = PutVectors(cache, at, Sinks(cache).k, sinks);
  at = PutVectors(cache, at, Sinks(cache).v, sinks);
  at = PutVectors(cache, at, Window(cache).k, window);
  at = PutVectors(cache, at, Window(cache).v, window);
  at = PutElements(at, Head(cache, 0).count, cache->Heads(), 4);  // every head's
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const size_t n = *Head(cache, h).count;
    if (n == 0) continue;
    at = PutElements(at, Head(cache, h).scores, n, 4);
    at = PutVectors(cache, at, Outliers(cache, h, 0).k, n);
    at = PutVectors(cache, at, Outliers(cache, h, 0).v, n);
  }
  if (cache->HasRetained()) at = PutRetained(cache, at);
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const HeadRegions<const covattn_cache> head = Head(cache, h);
    PutLE(at, head.refresh->folded, 8);
    PutLE(at + 8, head.refresh->folded_at_refresh, 8);
    at += 16;
    if (!cache->HasOutliers()) continue;
    at = PutElements(at, head.whitening_mean, d, 4);
    at = PutElements(at, head.whitening, d * d, 2);
  }
  if (cache->Summarizes()) {
    const size_t blob = SummarySerializedBytes(cache);
    PutLE(at, blob, 8);
    SummarySerialize(cache, at + 8);
    at += 8 + blob;
  }
  return at;
}

// Whether n stored elements of a dtype (little-endian bytes) are all finite.
bool ElementsFinite(const unsigned char* p, size_t n, uint32_t dtype) {
  for (size_t i = 0; i < n; ++i) {
    if (dtype == COVATTN_F32) {
      if (!std::isfinite(F32FromLE(p + 4 * i))) return false;
    } else {
      const uint16_t bits = static_cast<uint16_t>(GetLE(p + 2 * i, 2));
      const uint16_t exponent_mask = dtype == COVATTN_F16 ? 0x7C00 : 0x7F80;
      if ((bits & exponent_mask) == exponent_mask) return false;
    }
  }
  return true;
}

// Whether n stored vectors of the cache (little-endian bytes) hold values it
// could have stored: finite elements; for int8, elements in -127 .. 127,
// zero padding and a scale in [0, 2^33] (so |x| <= 2^40, the append's limit).
bool VectorsValid(const covattn_cache* cache, const unsigned char* p, size_t n) {
  const size_t d = cache->Dim();
  if (cache->config.dtype != COVATTN_INT8) return ElementsFinite(p, n * d, cache->config.dtype);
  const size_t at = Int8ScaleOffset(d);
  for (size_t i = 0; i < n; ++i, p += cache->vec_bytes) {
    for (size_t j = 0; j < d; ++j) {
      if (p[j] == 0x80) return false;  // -128
    }
    for (size_t j = d; j < at; ++j) {
      if (p[j] != 0) return false;
    }
    const float scale = F32FromLE(p + at);
    if (!(scale >= 0.0f && scale <= 0x1p33f)) return false;
  }
  return true;
}

// The counts of a file's header.
struct FileCounts {
  uint64_t n_tokens, n_summarized, n_dropped;
};

// The header, in the order of covattn_cache_load's statuses: identity,
// length, version, the destination's configuration, reserved bytes, the
// payload length and the checksum.
covattn_status CheckHeader(const covattn_cache_config& c, const unsigned char* p, size_t size,
                           FileCounts* counts) {
  if (size < 8) return COVATTN_ERR_TRUNCATED;
  if (std::memcmp(p, kCacheFileMagic, 8) != 0) return COVATTN_ERR_BAD_MAGIC;
  if (size < kCacheFileHeaderBytes + kChecksumBytes) return COVATTN_ERR_TRUNCATED;
  const uint64_t version = GetLE(p + 8, 4);
  if (version != kFormat1 && version != kFormat2) return COVATTN_ERR_VERSION;
  if (GetLE(p + 12, 4) != kCacheFileHeaderBytes) return COVATTN_ERR_CORRUPT;
  uint32_t forgetting_bits;
  std::memcpy(&forgetting_bits, &c.forgetting, 4);
  if (GetLE(p + 16, 8) != c.n_kv_heads || GetLE(p + 24, 8) != c.head_dim ||
      GetLE(p + 32, 4) != c.dtype || GetLE(p + 36, 4) != c.flags || GetLE(p + 40, 8) != c.n_sinks ||
      GetLE(p + 48, 8) != c.window || GetLE(p + 56, 8) != c.n_outliers ||
      GetLE(p + 64, 4) != forgetting_bits) {
    return COVATTN_ERR_SHAPE_MISMATCH;
  }
  // Format 1 knew no retained slots, compact summary or RoPE: it loads into
  // the caches that have none (retention and its decay mean nothing there).
  if (version == kFormat1 && FormatOf(c) != kFormat1) return COVATTN_ERR_SHAPE_MISMATCH;
  uint32_t decay_bits;
  std::memcpy(&decay_bits, &c.retention_decay, 4);
  if (version == kFormat2 && (GetLE(p + 104, 8) != c.n_retained ||
                              GetLE(p + 112, 4) != c.retention || GetLE(p + 116, 4) != decay_bits ||
                              GetLE(p + 120, 4) != c.summary || GetLE(p + 124, 4) != c.rope)) {
    return COVATTN_ERR_SHAPE_MISMATCH;
  }
  for (size_t i = 68; i < 72; ++i) {
    if (p[i] != 0) return COVATTN_ERR_CORRUPT;
  }
  for (size_t i = 104; i < kCacheFileHeaderBytes && version == kFormat1; ++i) {
    if (p[i] != 0) return COVATTN_ERR_CORRUPT;
  }
  *counts = FileCounts{GetLE(p + 72, 8), GetLE(p + 80, 8), GetLE(p + 88, 8)};
  const uint64_t payload = GetLE(p + 96, 8);
  if (payload > size - kCacheFileHeaderBytes - kChecksumBytes) return COVATTN_ERR_TRUNCATED;
  if (payload != size - kCacheFileHeaderBytes - kChecksumBytes) return COVATTN_ERR_CORRUPT;
  if (GetLE(p + size - 8, 8) != Fnv1a(p, size - 8)) return COVATTN_ERR_CHECKSUM;
  return COVATTN_OK;
}

// Where the sections of a checked payload are.
struct Payload {
  size_t sinks, window;  // tokens held
  const unsigned char *exact_rows, *counts, *outliers, *whitening, *blob;
  const unsigned char *retained_counts, *retained, *window_scores;  // with retained slots
  size_t blob_bytes;
};

// Takes consecutive sections of the payload; null past its end.
struct PayloadReader {
  const unsigned char* at;
  const unsigned char* end;
  const unsigned char* Take(size_t bytes) {
    if (bytes > static_cast<size_t>(end - at)) return nullptr;
    const unsigned char* here = at;
    at += bytes;
    return here;
  }
};

// The exact rows and the outlier slots: present, finite, within the budget.
// Adds the rows they hold to *rows_held.
bool ReadExactRows(const covattn_cache* cache, PayloadReader* in, Payload* out,
                   uint64_t* rows_held) {
  const covattn_cache_config& c = cache->config;
  const size_t vec = cache->vec_bytes;
  const size_t exact = out->sinks + out->window;
  out->exact_rows = in->Take(2 * exact * cache->RowBytes());
  out->counts = in->Take(4 * c.n_kv_heads);
  if (out->exact_rows == nullptr || out->counts == nullptr) return false;
  if (!VectorsValid(cache, out->exact_rows, 2 * exact * c.n_kv_heads)) return false;
  *rows_held += exact * uint64_t{c.n_kv_heads};
  out->outliers = in->at;
  for (size_t h = 0; h < c.n_kv_heads; ++h) {
    const uint64_t n = GetLE(out->counts + 4 * h, 4);
    if (n > c.n_outliers) return false;
    const unsigned char* scores = in->Take(4 * n);
    const unsigned char* rows = in->Take(2 * n * vec);
    if (scores == nullptr || rows == nullptr) return false;
    for (size_t i = 0; i < n; ++i) {
      const float score = F32FromLE(scores + 4 * i);
      if (!(score >= 0.0f) || !std::isfinite(score)) return false;
    }
    if (!VectorsValid(cache, rows, 2 * n)) return false;
    *rows_held += n;
  }
  return true;
}

// A retention score: finite and not negative (weights are not).
bool ScoresValid(const unsigned char* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float score = F32FromLE(p + 4 * i);
    if (!(score >= 0.0f) || !std::isfinite(score)) return false;
  }
  return true;
}

// The retained slots: within the budget, finite rows, valid scores, token
// numbers of tokens that have left the window. Adds their rows to *rows_held.
bool ReadRetained(const covattn_cache* cache, uint64_t n_tokens, PayloadReader* in, Payload* out,
                  uint64_t* rows_held) {
  out->retained_counts = out->retained = out->window_scores = nullptr;
  if (!cache->HasRetained()) return true;
  const covattn_cache_config& c = cache->config;
  out->retained_counts = in->Take(4 * c.n_kv_heads);
  if (out->retained_counts == nullptr) return false;
  out->retained = in->at;
  const uint64_t left_window = n_tokens - out->window;  // tokens numbered below this left it
  for (size_t h = 0; h < c.n_kv_heads; ++h) {
    const uint64_t n = GetLE(out->retained_counts + 4 * h, 4);
    if (n > c.n_retained) return false;
    const unsigned char* scores = in->Take(4 * n);
    const unsigned char* stamps = in->Take(8 * n);
    const unsigned char* rows = in->Take(2 * n * cache->vec_bytes);
    if (scores == nullptr || stamps == nullptr || rows == nullptr) return false;
    if (!ScoresValid(scores, n) || !VectorsValid(cache, rows, 2 * n)) return false;
    for (size_t i = 0; i < n; ++i) {
      const uint64_t stamp = GetLE(stamps + 8 * i, 8);
      if (stamp < c.n_sinks || stamp >= left_window) return false;
    }
    *rows_held += n;
  }
  out->window_scores = in->Take(4 * c.n_kv_heads * out->window);
  return out->window_scores != nullptr &&
         ScoresValid(out->window_scores, c.n_kv_heads * out->window);
}

// The per-head fold counts and whitenings, then the summary's blob.
bool ReadSummaryState(const covattn_cache* cache, const FileCounts& counts, PayloadReader* in,
                      Payload* out) {
  const size_t d = cache->Dim();
  const size_t whitening_bytes = cache->HasOutliers() ? 4 * d + 2 * d * d : 0;
  out->whitening = in->at;
  uint64_t folded_total = 0;
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const unsigned char* w = in->Take(16 + whitening_bytes);
    if (w == nullptr) return false;
    const uint64_t folded = GetLE(w, 8), at_refresh = GetLE(w + 8, 8);
    if (at_refresh > folded || folded > counts.n_summarized) return false;
    folded_total += folded;
    if (whitening_bytes != 0 && (!ElementsFinite(w + 16, d, COVATTN_F32) ||
                                 !ElementsFinite(w + 16 + 4 * d, d * d, COVATTN_BF16))) {
      return false;
    }
  }
  if (folded_total != counts.n_summarized) return false;
  out->blob = nullptr;
  out->blob_bytes = 0;
  if (!cache->Summarizes()) return true;
  const unsigned char* length = in->Take(8);
  if (length == nullptr) return false;
  out->blob_bytes = static_cast<size_t>(std::min<uint64_t>(GetLE(length, 8), SIZE_MAX));
  out->blob = in->Take(out->blob_bytes);
  return out->blob != nullptr;
}

// The payload's sections, every value and every count checked (the
// summary's blob aside): false for a file this cache could not have written.
bool ReadPayload(const covattn_cache* cache, const FileCounts& counts, const unsigned char* p,
                 size_t size, Payload* out) {
  const uint64_t half = UINT64_MAX / 2;
  if (counts.n_tokens > half || counts.n_summarized > half || counts.n_dropped > half) {
    return false;
  }
  out->sinks = SinkCount(cache->config, counts.n_tokens);
  out->window = WindowCount(cache->config, counts.n_tokens);
  PayloadReader in{p + kCacheFileHeaderBytes, p + size - kChecksumBytes};
  uint64_t rows_held = 0;
  if (!ReadExactRows(cache, &in, out, &rows_held) ||
      !ReadRetained(cache, counts.n_tokens, &in, out, &rows_held) ||
      !ReadSummaryState(cache, counts, &in, out) || in.at != in.end) {
    return false;
  }
  // Every appended token row is in exactly one place.
  return rows_held + counts.n_summarized + counts.n_dropped == counts.n_tokens * cache->Heads() &&
         (cache->Summarizes() || counts.n_summarized == 0) &&
         (!cache->Summarizes() || counts.n_dropped == 0);
}

// Copies a checked retained section into the cache.
void CopyRetained(covattn_cache* cache, const Payload& in) {
  const size_t vec = cache->vec_bytes;
  const unsigned char* at = in.retained;
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const HeadRegions<covattn_cache> head = Head(cache, h);
    const size_t n = static_cast<size_t>(GetLE(in.retained_counts + 4 * h, 4));
    *head.retained_count = static_cast<uint32_t>(n);
    CopyLE(reinterpret_cast<unsigned char*>(head.retained_scores), at, n, 4);
    CopyLE(reinterpret_cast<unsigned char*>(head.retained_stamps), at + 4 * n, n, 8);
    CopyVectorsLE(cache, Retained(cache, h, 0).k, at + 12 * n, n);
    CopyVectorsLE(cache, Retained(cache, h, 0).v, at + 12 * n + n * vec, n);
    at += 12 * n + 2 * n * vec;
    CopyLE(reinterpret_cast<unsigned char*>(head.window_scores),
           in.window_scores + 4 * h * in.window, in.window, 4);
  }
}

// Copies a checked payload into the cache.
void CopyPayload(covattn_cache* cache, const Payload& in) {
  const size_t d = cache->Dim(), vec = cache->vec_bytes, heads = cache->Heads();
  const unsigned char* at = in.exact_rows;
  const size_t sink_bytes = in.sinks * heads * vec, window_bytes = in.window * heads * vec;
  CopyVectorsLE(cache, Sinks(cache).k, at, in.sinks * heads);
  CopyVectorsLE(cache, Sinks(cache).v, at + sink_bytes, in.sinks * heads);
  at += 2 * sink_bytes;
  CopyVectorsLE(cache, Window(cache).k, at, in.window * heads);
  CopyVectorsLE(cache, Window(cache).v, at + window_bytes, in.window * heads);
  at = in.outliers;
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const HeadRegions<covattn_cache> head = Head(cache, h);
    const size_t n = static_cast<size_t>(GetLE(in.counts + 4 * h, 4));
    *head.count = static_cast<uint32_t>(n);
    if (n == 0) continue;
    CopyLE(reinterpret_cast<unsigned char*>(head.scores), at, n, 4);
    CopyVectorsLE(cache, Outliers(cache, h, 0).k, at + 4 * n, n);
    CopyVectorsLE(cache, Outliers(cache, h, 0).v, at + 4 * n + n * vec, n);
    at += 4 * n + 2 * n * vec;
  }
  if (cache->HasRetained()) CopyRetained(cache, in);
  at = in.whitening;
  for (size_t h = 0; h < cache->Heads(); ++h) {
    const HeadRegions<covattn_cache> head = Head(cache, h);
    *head.refresh = RefreshState{GetLE(at, 8), GetLE(at + 8, 8)};
    at += 16;
    if (!cache->HasOutliers()) continue;
    CopyLE(reinterpret_cast<unsigned char*>(head.whitening_mean), at, d, 4);
    CopyLE(reinterpret_cast<unsigned char*>(head.whitening), at + 4 * d, d * d, 2);
    at += 4 * d + 2 * d * d;
  }
}

}  // namespace
}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" {

covattn_status covattn_cache_serialized_size(const covattn_cache* cache, size_t* bytes) {
  COVATTN_RETURN_IF_ERROR(CheckCache(cache));
  if (bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  *bytes = SerializedBytes(cache);
  return COVATTN_OK;
}

covattn_status covattn_cache_serialize(const covattn_cache* cache, void* buffer, size_t capacity,
                                       size_t* written) {
  COVATTN_RETURN_IF_ERROR(CheckCache(cache));
  const size_t bytes = SerializedBytes(cache);
  if (buffer == nullptr || written == nullptr) return COVATTN_ERR_NULL_POINTER;
  if (capacity < bytes) return COVATTN_ERR_BUFFER_TOO_SMALL;
  Extent extent;
  COVATTN_RETURN_IF_ERROR(MemoryExtent(buffer, capacity, &extent));
  extent.end = extent.begin + bytes;  // what is written
  if (extent.Overlaps(CacheExtent(cache))) return COVATTN_ERR_ALIASING;
  auto* p = static_cast<unsigned char*>(buffer);
  PutHeader(cache, p);
  unsigned char* end = PutPayload(cache, p + kCacheFileHeaderBytes);
  PutLE(end, Fnv1a(p, static_cast<size_t>(end - p)), 8);
  *written = bytes;
  return COVATTN_OK;
}

covattn_status covattn_cache_load(covattn_cache* cache, const void* buffer, size_t size) {
  COVATTN_RETURN_IF_ERROR(CheckCache(cache));
  if (buffer == nullptr) return COVATTN_ERR_NULL_POINTER;
  Extent extent;
  COVATTN_RETURN_IF_ERROR(MemoryExtent(buffer, size, &extent));
  if (extent.Overlaps(CacheExtent(cache))) return COVATTN_ERR_ALIASING;
  const auto* p = static_cast<const unsigned char*>(buffer);
  FileCounts counts;
  COVATTN_RETURN_IF_ERROR(CheckHeader(cache->config, p, size, &counts));
  // The checksum matches: now the contents must make sense, all of them,
  // before anything is written.
  Payload payload;
  if (!ReadPayload(cache, counts, p, size, &payload)) return COVATTN_ERR_CORRUPT;
  // The summary checks its own blob and is written first: if it refuses,
  // nothing has changed.
  if (payload.blob != nullptr) {
    const size_t d = cache->Dim();
    const size_t whitening_stride = 16 + (cache->HasOutliers() ? 4 * d + 2 * d * d : 0);
    COVATTN_RETURN_IF_ERROR(
        SummaryLoad(cache, payload.blob, payload.blob_bytes, payload.whitening, whitening_stride));
  }
  cache->n_tokens = counts.n_tokens;
  cache->n_summarized = counts.n_summarized;
  cache->n_dropped = counts.n_dropped;
  CopyPayload(cache, payload);
  return COVATTN_OK;
}

}  // extern "C"
