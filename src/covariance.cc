// C entry points of the covariance state (include/covattn/covariance.h):
// memory layout and validation here, arithmetic in covariance_kernels.cc. Every
// call validates everything it will read before it writes anything, so a
// failed call leaves the state byte for byte as it was.

#include "covattn/covariance.h"

#include <cmath>
#include <cstring>
#include <new>

#include "bytes.h"
#include "covariance.h"
#include "object.h"
#include "validate.h"

namespace covattn {
namespace detail {
namespace {

static_assert(sizeof(covattn_cov_state) <= covattn_cov_state::kHeaderBytes, "header");

constexpr uint64_t kCovStateMagic = 0x4554415453564f43ull;  // "COVSTATE"

// A handle is a state made by init or create (and not destroyed since).
covattn_status CheckState(const covattn_cov_state* state) {
  return CheckObject(state, kCovStateMagic);
}

covattn_status CheckShape(size_t n_heads, size_t head_dim, float forgetting) {
  if (n_heads == 0) return COVATTN_ERR_INVALID_HEAD_COUNT;
  if (head_dim == 0 || head_dim > COVATTN_MAX_HEAD_DIM) return COVATTN_ERR_INVALID_HEAD_DIM;
  if (!(forgetting > 0.0f && forgetting <= 1.0f)) return COVATTN_ERR_INVALID_FORGETTING;
  return COVATTN_OK;
}

Extent StateExtent(const covattn_cov_state* state) {
  return Extent{state->memory_begin, state->memory_end};
}

bool SameShape(const covattn_cov_state* a, const covattn_cov_state* b) {
  return a->n_heads == b->n_heads && a->head_dim == b->head_dim && a->forgetting == b->forgetting &&
         a->flags == b->flags;
}

// An optional output (null: none, empty extent) of n_rows contiguous rows of
// row_elems elements of elem_size bytes.
covattn_status CheckOutput(const void* p, size_t elem_size, size_t n_rows, size_t row_elems,
                           Extent* extent) {
  if (p == nullptr) return COVATTN_OK;
  return CheckTensor(p, elem_size, n_rows, row_elems, 1, 0, row_elems, extent);
}

// True if any two of the non-empty extents overlap.
// The caller's scratch of an update or a merge: COVATTN_ERR_SCRATCH_TOO_SMALL
// when null or short of covattn_cov_state_scratch_size, else its extent.
covattn_status CheckWork(void* scratch, size_t bytes, size_t head_dim, Extent* extent) {
  if (scratch == nullptr || bytes < WorkspaceBytes(head_dim) + kAlign - 1) {
    return COVATTN_ERR_SCRATCH_TOO_SMALL;
  }
  return MemoryExtent(scratch, bytes, extent);
}
float* AlignedWork(void* scratch) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch) + kAlign - 1) &
                                  ~uintptr_t{kAlign - 1});
}

bool AnyOverlap(const Extent* extents, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i + 1; j < n; ++j) {
      if (extents[i].Overlaps(extents[j])) return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------------------
// Serialized form, all little-endian:
//
//   offset  0  magic "COVATTNS"
//           8  u32 format version (kFormatVersion)
//          12  u32 header bytes (64)
//          16  u64 n_heads
//          24  u64 head_dim
//          32  f32 forgetting factor, u32 flags (covattn_cov_state::flags)
//          40  u64 tokens absorbed
//          48  u64 payload elements: n_heads (1 + 2 head_dim + 2 head_dim^2)
//          56  u64 payload bytes
//          64  payload, per head: W (f64), mu_k, mu_v (f64 each), then the
//              co-moments [head_dim][2 head_dim] (f32), as in covariance_state.h
//         end  u64 FNV-1a (64-bit) of every byte before it
constexpr unsigned char kMagic[8] = {'C', 'O', 'V', 'A', 'T', 'T', 'N', 'S'};
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kFileHeaderBytes = 64;
constexpr size_t kChecksumBytes = 8;

size_t PayloadBytesPerHead(size_t dim) { return 8 * (1 + 2 * dim) + 4 * 2 * dim * dim; }

// The header fields that loading checks.
struct FileHeader {
  uint64_t n_heads, head_dim, n_tokens, payload_elements, payload_bytes;
  uint32_t version, header_bytes, flags;
  float forgetting;
};

FileHeader ParseHeader(const unsigned char* p) {
  FileHeader h;
  h.version = static_cast<uint32_t>(GetLE(p + 8, 4));
  h.header_bytes = static_cast<uint32_t>(GetLE(p + 12, 4));
  h.n_heads = GetLE(p + 16, 8);
  h.head_dim = GetLE(p + 24, 8);
  h.forgetting = F32FromLE(p + 32);
  h.flags = static_cast<uint32_t>(GetLE(p + 36, 4));
  h.n_tokens = GetLE(p + 40, 8);
  h.payload_elements = GetLE(p + 48, 8);
  h.payload_bytes = GetLE(p + 56, 8);
  return h;
}

// Whether one head's serialized payload is a state this library could have
// produced: finite; the weight equal to the first head's, at least 1 and at
// most the token count (0 when empty, with everything else 0); M_kk exactly
// symmetric (every update keeps it so) with a non-negative diagonal.
bool HeadPayloadValid(const unsigned char* p, size_t dim, uint64_t n_tokens, double first_weight,
                      bool independent_heads) {
  // Every head saw every token (one weight, none without tokens), or, with
  // independent heads, each head is empty or holds at least one token's weight.
  const double w = F64FromLE(p);
  if (!std::isfinite(w) || (!independent_heads && w != first_weight)) return false;
  const bool empty = w == 0.0;
  if (empty ? (!independent_heads && n_tokens != 0)
            : !(w >= 1.0 && w <= static_cast<double>(n_tokens) * (1.0 + 0x1p-20))) {
    return false;
  }
  for (size_t i = 0; i < 2 * dim; ++i) {
    const double mean = F64FromLE(p + 8 * (1 + i));
    if (!std::isfinite(mean) || (empty && mean != 0.0)) return false;
  }
  const unsigned char* m = p + 8 * (1 + 2 * dim);
  const size_t width = 2 * dim;
  for (size_t i = 0; i < dim; ++i) {
    for (size_t j = 0; j < width; ++j) {
      const float x = F32FromLE(m + 4 * (i * width + j));
      if (!std::isfinite(x) || (empty && x != 0.0f)) return false;
      if (j < dim && x != F32FromLE(m + 4 * (j * width + i))) return false;
      if (j == i && x < 0.0f) return false;
    }
  }
  return true;
}

// The header of a file that loading checks before anything else, in the
// order of covattn_cov_state_load's statuses: identity (what is there of
// the magic must match), version, the header's own consistency, the length
// and the checksum.
covattn_status CheckFileHeader(const unsigned char* p, size_t size, FileHeader* h) {
  if (std::memcmp(p, kMagic, size < sizeof(kMagic) ? size : sizeof(kMagic)) != 0) {
    return COVATTN_ERR_BAD_MAGIC;
  }
  if (size < 12) return COVATTN_ERR_TRUNCATED;
  if (GetLE(p + 8, 4) != kFormatVersion) return COVATTN_ERR_VERSION;
  if (size < kFileHeaderBytes) return COVATTN_ERR_TRUNCATED;
  *h = ParseHeader(p);
  if (h->header_bytes != kFileHeaderBytes || (h->flags & ~covattn_cov_state::kIndependentHeads) ||
      CheckShape(h->n_heads, h->head_dim, h->forgetting) != COVATTN_OK) {
    return COVATTN_ERR_CORRUPT;
  }
  const size_t dim = h->head_dim;
  size_t elements, payload, total;
  if (MulOverflows(h->n_heads, 1 + 2 * dim + 2 * dim * dim, &elements) ||
      MulOverflows(h->n_heads, PayloadBytesPerHead(dim), &payload) ||
      AddOverflows(payload, kFileHeaderBytes + kChecksumBytes, &total) ||
      h->payload_elements != elements || h->payload_bytes != payload) {
    return COVATTN_ERR_CORRUPT;
  }
  if (size < total) return COVATTN_ERR_TRUNCATED;
  if (size > total) return COVATTN_ERR_CORRUPT;
  if (Fnv1a(p, total - kChecksumBytes) != GetLE(p + total - kChecksumBytes, 8)) {
    return COVATTN_ERR_CHECKSUM;
  }
  return COVATTN_OK;
}

}  // namespace

covattn_status CovStateBytes(size_t n_heads, size_t head_dim, size_t* bytes) {
  size_t heads;
  if (MulOverflows(n_heads, HeadBytes(head_dim), &heads) ||
      AddOverflows(heads, kAlign - 1 + covattn_cov_state::kHeaderBytes, bytes)) {
    return COVATTN_ERR_SIZE_OVERFLOW;
  }
  return COVATTN_OK;
}

covattn_cov_state* CovStateInit(void* memory, size_t bytes, size_t n_heads, size_t head_dim,
                                float forgetting, uint32_t flags) {
  size_t needed = 0;
  CovStateBytes(n_heads, head_dim, &needed);
  const uintptr_t begin = reinterpret_cast<uintptr_t>(memory);
  const uintptr_t aligned = (begin + kAlign - 1) & ~uintptr_t{kAlign - 1};
  unsigned char* base = reinterpret_cast<unsigned char*>(aligned);
  std::memset(base, 0, needed - (kAlign - 1));
  auto* s = new (base) covattn_cov_state();
  s->magic = kCovStateMagic;
  s->allocation = nullptr;
  s->memory_begin = begin;
  s->memory_end = begin + bytes;
  s->n_heads = n_heads;
  s->head_dim = head_dim;
  s->forgetting = forgetting;
  s->n_tokens = 0;
  s->flags = flags;
  return s;
}

void CovStateReset(covattn_cov_state* state) {
  std::memset(state->HeadBase(0), 0, state->n_heads * HeadBytes(state->head_dim));
  state->n_tokens = 0;
}

void CovExport(const covattn_cov_state* state, size_t head, const CovExportOutputs& out) {
  const size_t dim = state->head_dim, width = 2 * dim;
  const double* doubles = state->Doubles(head);
  const double w = doubles[0];
  const float* m = state->Moments(head);
  if (out.weight != nullptr) *out.weight = w;
  for (size_t i = 0; i < dim; ++i) {
    if (out.mean_k != nullptr) out.mean_k[i] = static_cast<float>(doubles[1 + i]);
    if (out.mean_v != nullptr) out.mean_v[i] = static_cast<float>(doubles[1 + dim + i]);
    for (size_t j = 0; j < dim; ++j) {
      if (out.cov_kk != nullptr) out.cov_kk[i * dim + j] = static_cast<float>(m[i * width + j] / w);
      // Row j of M holds M_kv[j][*] = co-moments of k_j with v.
      if (out.cov_vk != nullptr) {
        out.cov_vk[i * dim + j] = static_cast<float>(m[j * width + dim + i] / w);
      }
    }
  }
}

size_t CovSerializedBytes(const covattn_cov_state* state) {
  // Cannot overflow: the state's memory holds more than this.
  return kFileHeaderBytes + state->n_heads * PayloadBytesPerHead(state->head_dim) + kChecksumBytes;
}

void CovSerialize(const covattn_cov_state* state, unsigned char* p) {
  const size_t dim = state->head_dim;
  std::memset(p, 0, kFileHeaderBytes);
  std::memcpy(p, kMagic, sizeof(kMagic));
  PutLE(p + 8, kFormatVersion, 4);
  PutLE(p + 12, kFileHeaderBytes, 4);
  PutLE(p + 16, state->n_heads, 8);
  PutLE(p + 24, dim, 8);
  PutF32LE(p + 32, state->forgetting);
  PutLE(p + 36, state->flags, 4);
  PutLE(p + 40, state->n_tokens, 8);
  PutLE(p + 48, state->n_heads * (1 + 2 * dim + 2 * dim * dim), 8);
  PutLE(p + 56, state->n_heads * PayloadBytesPerHead(dim), 8);
  unsigned char* q = p + kFileHeaderBytes;
  for (size_t h = 0; h < state->n_heads; ++h) {
    CopyLE(q, reinterpret_cast<const unsigned char*>(state->Doubles(h)), 1 + 2 * dim, 8);
    q += 8 * (1 + 2 * dim);
    CopyLE(q, reinterpret_cast<const unsigned char*>(state->Moments(h)), 2 * dim * dim, 4);
    q += 4 * 2 * dim * dim;
  }
  PutLE(q, Fnv1a(p, static_cast<size_t>(q - p)), 8);
}

covattn_status CovLoad(covattn_cov_state* state, const unsigned char* p, size_t size) {
  // The header, then the destination's shape, then the payload's values.
  FileHeader h;
  COVATTN_RETURN_IF_ERROR(CheckFileHeader(p, size, &h));
  if (h.n_heads != state->n_heads || h.head_dim != state->head_dim ||
      h.forgetting != state->forgetting || h.flags != state->flags) {
    return COVATTN_ERR_SHAPE_MISMATCH;
  }
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p);
  if (Extent{begin, begin + size}.Overlaps(StateExtent(state))) return COVATTN_ERR_ALIASING;
  const size_t dim = h.head_dim, head_payload = PayloadBytesPerHead(dim);
  const unsigned char* q = p + kFileHeaderBytes;
  for (size_t head = 0; head < h.n_heads; ++head) {
    if (!HeadPayloadValid(q + head * head_payload, dim, h.n_tokens, F64FromLE(q),
                          state->flags & covattn_cov_state::kIndependentHeads)) {
      return COVATTN_ERR_CORRUPT;
    }
  }
  for (size_t head = 0; head < h.n_heads; ++head) {
    CovHead dst = state->Head(head);
    CopyLE(reinterpret_cast<unsigned char*>(dst.weight), q, 1 + 2 * dim, 8);
    q += 8 * (1 + 2 * dim);
    CopyLE(reinterpret_cast<unsigned char*>(dst.m), q, 2 * dim * dim, 4);
    q += 4 * 2 * dim * dim;
  }
  state->n_tokens = h.n_tokens;
  return COVATTN_OK;
}

}  // namespace detail
}  // namespace covattn

using namespace covattn::detail;  // NOLINT(build/namespaces): C entry points only

extern "C" {

covattn_status covattn_cov_state_size(size_t n_heads, size_t head_dim, size_t* bytes) {
  if (bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  COVATTN_RETURN_IF_ERROR(CheckShape(n_heads, head_dim, 1.0f));
  return CovStateBytes(n_heads, head_dim, bytes);
}

covattn_status covattn_cov_state_init(void* memory, size_t bytes, size_t n_heads, size_t head_dim,
                                      float forgetting, covattn_cov_state** state) {
  if (memory == nullptr || state == nullptr) return COVATTN_ERR_NULL_POINTER;
  COVATTN_RETURN_IF_ERROR(CheckShape(n_heads, head_dim, forgetting));
  size_t needed;
  COVATTN_RETURN_IF_ERROR(CovStateBytes(n_heads, head_dim, &needed));
  if (bytes < needed) return COVATTN_ERR_BUFFER_TOO_SMALL;
  Extent extent;
  COVATTN_RETURN_IF_ERROR(MemoryExtent(memory, bytes, &extent));
  *state = CovStateInit(memory, bytes, n_heads, head_dim, forgetting, 0);
  return COVATTN_OK;
}

covattn_status covattn_cov_state_create(size_t n_heads, size_t head_dim, float forgetting,
                                        covattn_cov_state** state) {
  if (state == nullptr) return COVATTN_ERR_NULL_POINTER;
  COVATTN_RETURN_IF_ERROR(CheckShape(n_heads, head_dim, forgetting));
  size_t bytes;
  COVATTN_RETURN_IF_ERROR(CovStateBytes(n_heads, head_dim, &bytes));
  return CreateObject(
      bytes,
      [&](void* memory) { return CovStateInit(memory, bytes, n_heads, head_dim, forgetting, 0); },
      state);
}

void covattn_cov_state_destroy(covattn_cov_state* state) { DestroyObject(state, kCovStateMagic); }

covattn_status covattn_cov_state_reset(covattn_cov_state* state) {
  COVATTN_RETURN_IF_ERROR(CheckState(state));
  CovStateReset(state);
  return COVATTN_OK;
}

covattn_status covattn_cov_state_info(const covattn_cov_state* state, covattn_cov_info* info) {
  COVATTN_RETURN_IF_ERROR(CheckState(state));
  if (info == nullptr) return COVATTN_ERR_NULL_POINTER;
  *info = covattn_cov_info{state->n_heads, state->head_dim, state->forgetting, state->n_tokens};
  return COVATTN_OK;
}

covattn_status covattn_cov_state_scratch_size(size_t head_dim, size_t* bytes) {
  if (bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  COVATTN_RETURN_IF_ERROR(CheckShape(1, head_dim, 1.0f));
  *bytes = WorkspaceBytes(head_dim) + kAlign - 1;
  return COVATTN_OK;
}

covattn_status covattn_cov_state_update(covattn_cov_state* state, const covattn_kv_cache* block,
                                        void* scratch, size_t scratch_bytes) {
  COVATTN_RETURN_IF_ERROR(CheckState(state));
  KvExtents block_extents;
  COVATTN_RETURN_IF_ERROR(CheckKvBlock(block, state->n_heads, state->head_dim, StateExtent(state),
                                       &block_extents, /*int8_ok=*/true));
  Extent work;
  COVATTN_RETURN_IF_ERROR(CheckWork(scratch, scratch_bytes, state->head_dim, &work));
  if (work.Overlaps(StateExtent(state)) || block_extents.Overlaps(work)) {
    return COVATTN_ERR_ALIASING;
  }
  if (block->n_tokens > UINT64_MAX - state->n_tokens) return COVATTN_ERR_SIZE_OVERFLOW;
  if (block->n_tokens == 0) return COVATTN_OK;
  const CovBlock cov_block = CovBlockOf(*block);
  if (!CovBlockInRange(cov_block, state->n_heads, state->head_dim)) {
    return COVATTN_ERR_NONFINITE;
  }
  CovUpdate(state, cov_block, AlignedWork(scratch));
  state->n_tokens += block->n_tokens;
  return COVATTN_OK;
}

covattn_status covattn_cov_state_merge(covattn_cov_state* into, const covattn_cov_state* other,
                                       void* scratch, size_t scratch_bytes) {
  COVATTN_RETURN_IF_ERROR(CheckState(into));
  COVATTN_RETURN_IF_ERROR(CheckState(other));
  if (!SameShape(into, other)) return COVATTN_ERR_SHAPE_MISMATCH;
  Extent work;
  COVATTN_RETURN_IF_ERROR(CheckWork(scratch, scratch_bytes, into->head_dim, &work));
  if (work.Overlaps(StateExtent(into)) || work.Overlaps(StateExtent(other))) {
    return COVATTN_ERR_ALIASING;
  }
  const uint64_t other_tokens = other->n_tokens;  // `other` may be `into`
  if (other_tokens > UINT64_MAX - into->n_tokens) return COVATTN_ERR_SIZE_OVERFLOW;
  if (other_tokens == 0) return COVATTN_OK;
  CovMerge(into, other, AlignedWork(scratch));
  into->n_tokens += other_tokens;
  return COVATTN_OK;
}

covattn_status covattn_cov_readout(const covattn_cov_state* state, const float* q, size_t n_q_heads,
                                   float scale, float* out, float* log_z, float* ess) {
  COVATTN_RETURN_IF_ERROR(CheckState(state));
  if (q == nullptr || out == nullptr) return COVATTN_ERR_NULL_POINTER;
  if (n_q_heads == 0) return COVATTN_ERR_INVALID_HEAD_COUNT;
  if (n_q_heads % state->n_heads != 0) return COVATTN_ERR_HEAD_MISMATCH;
  if (!std::isfinite(scale)) return COVATTN_ERR_INVALID_SCALE;
  const size_t dim = state->head_dim;
  Extent extents[5];  // q, out, log_z, ess, state
  COVATTN_RETURN_IF_ERROR(CheckTensor(q, sizeof(float), 1, 0, n_q_heads, dim, dim, &extents[0]));
  COVATTN_RETURN_IF_ERROR(CheckOutput(out, sizeof(float), n_q_heads, dim, &extents[1]));
  COVATTN_RETURN_IF_ERROR(CheckOutput(log_z, sizeof(float), 1, n_q_heads, &extents[2]));
  COVATTN_RETURN_IF_ERROR(CheckOutput(ess, sizeof(float), 1, n_q_heads, &extents[3]));
  extents[4] = StateExtent(state);
  // Inputs (q, state) may overlap each other; no output may overlap anything.
  for (size_t o = 1; o <= 3; ++o) {
    for (size_t i = 0; i < 5; ++i) {
      if (i != o && extents[o].Overlaps(extents[i])) return COVATTN_ERR_ALIASING;
    }
  }
  if (state->n_tokens == 0) return COVATTN_ERR_EMPTY_STATE;
  const float scale_used = scale != 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(dim));
  const CovReadoutProblem problem{q,   n_q_heads, scale_used, out, log_z,
                                  ess, nullptr,   nullptr,    0,   state->n_heads};
  return CovReadout(state, problem) ? COVATTN_OK : COVATTN_ERR_NONFINITE;
}

covattn_status covattn_cov_state_export(const covattn_cov_state* state, size_t head, double* weight,
                                        float* mean_k, float* mean_v, float* cov_kk,
                                        float* cov_vk) {
  COVATTN_RETURN_IF_ERROR(CheckState(state));
  if (head >= state->n_heads) return COVATTN_ERR_INVALID_RANGE;
  const size_t dim = state->head_dim;
  Extent extents[6];  // weight, mean_k, mean_v, cov_kk, cov_vk, state
  COVATTN_RETURN_IF_ERROR(CheckOutput(weight, sizeof(double), 1, 1, &extents[0]));
  COVATTN_RETURN_IF_ERROR(CheckOutput(mean_k, sizeof(float), 1, dim, &extents[1]));
  COVATTN_RETURN_IF_ERROR(CheckOutput(mean_v, sizeof(float), 1, dim, &extents[2]));
  COVATTN_RETURN_IF_ERROR(CheckOutput(cov_kk, sizeof(float), dim, dim, &extents[3]));
  COVATTN_RETURN_IF_ERROR(CheckOutput(cov_vk, sizeof(float), dim, dim, &extents[4]));
  extents[5] = StateExtent(state);
  if (AnyOverlap(extents, 6)) return COVATTN_ERR_ALIASING;
  if (state->n_tokens == 0) return COVATTN_ERR_EMPTY_STATE;
  CovExport(state, head, CovExportOutputs{weight, mean_k, mean_v, cov_kk, cov_vk});
  return COVATTN_OK;
}

covattn_status covattn_cov_state_serialized_size(const covattn_cov_state* state, size_t* bytes) {
  COVATTN_RETURN_IF_ERROR(CheckState(state));
  if (bytes == nullptr) return COVATTN_ERR_NULL_POINTER;
  *bytes = CovSerializedBytes(state);
  return COVATTN_OK;
}

covattn_status covattn_cov_state_serialize(const covattn_cov_state* state, void* buffer,
                                           size_t capacity, size_t* written) {
  COVATTN_RETURN_IF_ERROR(CheckState(state));
  if (buffer == nullptr) return COVATTN_ERR_NULL_POINTER;
  const size_t total = CovSerializedBytes(state);
  if (capacity < total) return COVATTN_ERR_BUFFER_TOO_SMALL;
  Extent extent;
  COVATTN_RETURN_IF_ERROR(MemoryExtent(buffer, total, &extent));
  if (extent.Overlaps(StateExtent(state))) return COVATTN_ERR_ALIASING;
  CovSerialize(state, static_cast<unsigned char*>(buffer));
  if (written != nullptr) *written = total;
  return COVATTN_OK;
}

covattn_status covattn_cov_state_load(covattn_cov_state* state, const void* buffer, size_t size) {
  COVATTN_RETURN_IF_ERROR(CheckState(state));
  if (buffer == nullptr) return COVATTN_ERR_NULL_POINTER;
  return CovLoad(state, static_cast<const unsigned char*>(buffer), size);
}

}  // extern "C"
