// Fuzz target for one attention entry point, chosen at build time by
// COVATTN_FUZZ_ENTRY: 0 covattn_decode, 1 covattn_prefill, 2
// covattn_prefill_partial. Every argument comes from the input: shapes,
// strides, element type, options, pointers (exact blocks, NULL, misaligned,
// wild, aliasing another buffer), scratch size, the target to run on, and
// values with planted NaN, infinities, huge and subnormal numbers.
//
// Checked on every input: the status is one the argument rules allow (an
// independent model of covattn.h, fuzz_util.h); inputs never change; a
// failed call writes nothing; a successful one writes only the vectors of
// its outputs, reports NaN/Inf inputs and overflow as COVATTN_ERR_NONFINITE
// (and nothing else as such), and its results are what softmax attention
// allows: each output a convex combination of the visible values, log Z
// between the largest score and that plus log(visible tokens), zeros exactly
// for rows that see nothing.
#include "fuzz_util.h"

using namespace covattn_fuzz;

namespace {

enum Entry { kDecode = 0, kPrefill = 1, kPartial = 2 };
constexpr Entry kEntry = static_cast<Entry>(COVATTN_FUZZ_ENTRY);

// Query rows x tokens x head_dim above which a valid call is not run (it is
// turned into one that must fail), to keep executions fast.
constexpr u128 kMaxWork = u128{1} << 18;

constexpr double kU = 1.0 / (1 << 24);          // f32 unit roundoff
constexpr double kBig = 1.7014118346046923e38;  // half of FLT_MAX

// Everything one call passes, and the memory behind it.
struct Call {
  covattn_kv_cache kv{};
  covattn_queries q{};  // decode: data and n_heads only
  size_t n_past = 0;
  covattn_attention_options options{};
  covattn_outputs out{};
  size_t token_begin = 0, token_end = 0;
  covattn_partial state{};
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
  bool kv_null = false, q_null = false, options_null = false, out_null = false, state_null = false;

  TensorBuffer k, v, qb, ob, log_z, m, l, o;
  // COVATTN_INT8: the scales (f32, one per (token, head)), and whether the
  // cache's int8_scales pointer is NULL.
  covattn_int8_scales scales{};
  TensorBuffer ks, vs;
  bool scales_null = false;
  bool fused_kv = false;  // V lives in K's block
  Block scratch_block;
  bool scratch_backed = false;

  size_t n_rows() const { return q.n_tokens * q.n_heads; }
};

size_t ScratchRequired(size_t head_dim) {
  size_t bytes = 0;
  if (covattn_attention_scratch_size(head_dim, &bytes) != COVATTN_OK) return 0;
  return bytes;
}

// ---------------------------------------------------------------------------
// Building a call from the input.

void ReadKvLayout(ByteReader& in, Call* c) {
  covattn_kv_cache& kv = c->kv;
  const uint8_t layout = in.U8() % 5;
  const size_t t = kv.n_tokens, h = kv.n_heads, d = kv.head_dim;
  switch (layout) {
    case 0:  // [token][head][dim]
      kv.k_token_stride = kv.v_token_stride = h * d;
      kv.k_head_stride = kv.v_head_stride = d;
      break;
    case 1:  // [head][token][dim]
      kv.k_token_stride = kv.v_token_stride = d;
      kv.k_head_stride = kv.v_head_stride = t * d;
      break;
    case 2: {  // padded rows
      const size_t pad_head = in.U8() % 8, pad_token = in.U8() % 8;
      kv.k_head_stride = kv.v_head_stride = d + pad_head;
      kv.k_token_stride = kv.v_token_stride = h * (d + pad_head) + pad_token;
      break;
    }
    case 3:  // K and V interleaved per head: [token][head][k | v]
      kv.k_token_stride = kv.v_token_stride = 2 * h * d;
      kv.k_head_stride = kv.v_head_stride = 2 * d;
      c->fused_kv = true;
      break;
    default:
      kv.k_token_stride = in.Size(4096);
      kv.k_head_stride = in.Size(4096);
      kv.v_token_stride = in.Size(4096);
      kv.v_head_stride = in.Size(4096);
      break;
  }
}

// Strides of an f32 [token][head][dim] tensor of the queries' shape.
void ReadRowLayout(ByteReader& in, const Call& c, size_t* token_stride, size_t* head_stride) {
  const size_t t = c.q.n_tokens, h = c.q.n_heads, d = c.kv.head_dim;
  switch (in.U8() % 4) {
    case 0:
      *token_stride = h * d, *head_stride = d;
      break;
    case 1:
      *token_stride = d, *head_stride = t * d;
      break;
    case 2: {
      const size_t pad_head = in.U8() % 8;
      *head_stride = d + pad_head;
      *token_stride = h * (d + pad_head) + in.U8() % 8;
      break;
    }
    default:
      *token_stride = in.Size(4096);
      *head_stride = in.Size(4096);
      break;
  }
}

size_t Misalignment(ByteReader& in) {
  const uint8_t b = in.U8();
  return b < 0xE0 ? 0 : b % 8;
}

void PlaceFrom(ByteReader& in, TensorBuffer* buf) {
  const Placement placement = PlacementFrom(in.U8());
  const size_t misalign = Misalignment(in);
  Place(buf, placement, misalign, placement == Placement::kWild ? in.U64() : 0);
}

// K and V interleaved in one block (layout 3), when both are exact: V starts
// head_dim elements after K, the block ends where the last V vector does.
void PlaceFused(ByteReader& in, Call* c) {
  const size_t misalign = Misalignment(in);
  const bool fits =
      !c->k.t.Empty() && c->k.t.Nested() && c->v.t.Nested() &&
      c->v.t.SpanBytes() + u128(c->kv.head_dim) * c->k.t.elem + misalign <= kMaxBlockBytes;
  if (!fits) {
    Place(&c->k, Placement::kExact, misalign, 0);
    Place(&c->v, Placement::kExact, misalign, 0);
    return;
  }
  const size_t offset = c->kv.head_dim * c->k.t.elem;
  c->k.block = Block(static_cast<size_t>(c->v.t.SpanBytes()) + offset + misalign);
  c->k.t.base = c->k.block.data() + misalign;
  c->k.backed = true;
  c->v.t.base = c->k.data() + offset;
  c->v.backed = true;
  c->v.shares_block = true;
}

// Points one buffer into another to provoke aliasing: the pointer is not
// backed on its own, so a call the model finds valid will be made to fail.
void MaybeAlias(ByteReader& in, Call* c) {
  const uint8_t mode = in.U8();
  if (mode < 0xD0) return;
  TensorBuffer* hosts[] = {&c->k, &c->v, &c->qb, &c->ob, &c->log_z,
                           &c->m, &c->l, &c->o,  &c->ks, &c->vs};
  TensorBuffer* guests[] = {&c->ob, &c->log_z, &c->m, &c->l, &c->o};
  TensorBuffer* host = hosts[in.U8() % 10];
  const size_t offset = in.U8() % 64;
  if (mode < 0xF0) {
    TensorBuffer* guest = guests[in.U8() % 5];
    if (guest == host || !guest->used || host->t.base == nullptr) return;
    guest->block = Block();
    guest->backed = false;
    guest->t.base =
        reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(host->t.base) + 4 * offset);
  } else if (host->t.base != nullptr) {  // the scratch inside another buffer
    c->scratch_block = Block();
    c->scratch_backed = false;
    c->scratch = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(host->t.base) + offset);
  }
}

void Build(ByteReader& in, Call* c) {
  covattn_kv_cache& kv = c->kv;
  const uint8_t dtype_byte = in.U8();
  kv.dtype = dtype_byte < 0xF0 ? dtype_byte % 4 : in.U32();
  kv.n_tokens = in.Size(2048);
  kv.n_heads = in.Size(8);
  kv.head_dim = in.Size(520);
  ReadKvLayout(in, c);

  const uint8_t heads_byte = in.U8();
  c->q.n_heads = heads_byte < 0xC0 ? kv.n_heads * (1 + heads_byte % 4) : in.Size(64);
  if (kEntry == kDecode) {
    c->q.n_tokens = 1;
    c->q.token_stride = c->q.n_heads * kv.head_dim;  // as covattn_decode describes q
    c->q.head_stride = kv.head_dim;
    c->n_past = kv.n_tokens == 0 ? 0 : kv.n_tokens - 1;
  } else {
    c->q.n_tokens = in.Size(256);
    ReadRowLayout(in, *c, &c->q.token_stride, &c->q.head_stride);
    const uint8_t past = in.U8();
    c->n_past = past < 0xC0 ? (kv.n_tokens >= c->q.n_tokens ? kv.n_tokens - c->q.n_tokens : 0)
                            : in.Size(4096);
  }

  const uint8_t options = in.U8();
  c->options_null = options % 2 == 0;
  if (!c->options_null) {
    c->options.scale = (options & 2) ? in.Float() : 0.0f;
    c->options.window = (options & 4) ? in.Size(4096) : 0;
    c->options.n_sinks = (options & 8) ? in.Size(64) : 0;
  }
  const uint8_t nulls = in.U8();
  if (nulls >= 0xF0) {
    c->kv_null = nulls % 4 == 0;
    c->q_null = nulls % 4 == 1;
    c->out_null = nulls % 4 == 2;
    c->state_null = nulls % 4 == 3;
  }

  if (kEntry == kPrefill) {
    ReadRowLayout(in, *c, &c->out.token_stride, &c->out.head_stride);
  } else if (kEntry == kDecode) {
    c->out.token_stride = c->q.token_stride;
    c->out.head_stride = c->q.head_stride;
  }
  if (kEntry == kPartial) {
    const uint8_t range = in.U8();
    if (range < 0x80) {
      c->token_begin = 0, c->token_end = kv.n_tokens;
    } else if (range < 0xE0) {
      const u128 range_end = u128(kv.n_tokens) + 1;
      const size_t a = static_cast<size_t>(in.U32() % range_end);
      const size_t b = static_cast<size_t>(in.U32() % range_end);
      c->token_begin = std::min(a, b), c->token_end = std::max(a, b);
    } else {
      c->token_begin = in.Size(4096), c->token_end = in.Size(4096);
    }
  }

  // Tensors as the library will see them.
  const size_t elem = ElemSize(kv.dtype) ? ElemSize(kv.dtype) : 4;
  c->k.t = Shape(elem, kv.n_tokens, kv.k_token_stride, kv.n_heads, kv.k_head_stride, kv.head_dim);
  c->v.t = Shape(elem, kv.n_tokens, kv.v_token_stride, kv.n_heads, kv.v_head_stride, kv.head_dim);
  c->qb.t = Shape(4, c->q.n_tokens, c->q.token_stride, c->q.n_heads, c->q.head_stride, kv.head_dim);
  const bool int8 = kv.dtype == COVATTN_INT8;
  if (int8) {
    covattn_int8_scales& s = c->scales;
    const uint8_t scale_layout = in.U8();
    c->scales_null = scale_layout >= 0xF8;
    switch (scale_layout % 3) {
      case 0:  // [token][head]
        s.k_token_stride = s.v_token_stride = kv.n_heads, s.k_head_stride = s.v_head_stride = 1;
        break;
      case 1:  // [head][token]
        s.k_token_stride = s.v_token_stride = 1;
        s.k_head_stride = s.v_head_stride = kv.n_tokens;
        break;
      default:
        s.k_token_stride = in.Size(64), s.k_head_stride = in.Size(64);
        s.v_token_stride = in.Size(64), s.v_head_stride = in.Size(64);
        break;
    }
    c->ks.t = Shape(4, kv.n_tokens, s.k_token_stride, kv.n_heads, s.k_head_stride, 1);
    c->vs.t = Shape(4, kv.n_tokens, s.v_token_stride, kv.n_heads, s.v_head_stride, 1);
  }
  c->ks.used = c->vs.used = int8 && !c->scales_null;
  if (kEntry != kPartial) {
    c->ob.t =
        Shape(4, c->q.n_tokens, c->out.token_stride, c->q.n_heads, c->out.head_stride, kv.head_dim);
  }
  const bool with_log_z = kEntry == kPrefill && in.U8() % 2 == 1;
  if (with_log_z) {
    c->log_z.t = Shape(4, c->q.n_tokens, c->q.n_heads, c->q.n_heads, 1, 1);
  }
  if (kEntry == kPartial) {
    size_t rows;
    if (__builtin_mul_overflow(c->q.n_tokens, c->q.n_heads, &rows)) rows = 0;
    c->m.t = Shape(4, rows, 1, 1, 0, 1);
    c->l.t = Shape(4, rows, 1, 1, 0, 1);
    c->o.t = Shape(4, rows, kv.head_dim, 1, 0, kv.head_dim);
  }

  c->k.used = c->v.used = c->qb.used = true;
  c->ob.used = kEntry != kPartial;
  c->log_z.used = with_log_z;
  c->m.used = c->l.used = c->o.used = kEntry == kPartial;

  // Memory.
  if (c->fused_kv && PlacementFrom(in.U8()) == Placement::kExact) {
    PlaceFused(in, c);
  } else {
    PlaceFrom(in, &c->k);
    PlaceFrom(in, &c->v);
  }
  if (int8) {
    PlaceFrom(in, &c->ks);
    PlaceFrom(in, &c->vs);
  }
  PlaceFrom(in, &c->qb);
  if (kEntry != kPartial) PlaceFrom(in, &c->ob);
  if (with_log_z) PlaceFrom(in, &c->log_z);
  if (kEntry == kPartial) {
    PlaceFrom(in, &c->m);
    PlaceFrom(in, &c->l);
    PlaceFrom(in, &c->o);
  }

  // Scratch: usually exactly the size asked for, at any alignment.
  const size_t required = ScratchRequired(kv.head_dim);
  const uint8_t scratch_mode = in.U8();
  switch (scratch_mode % 8) {
    case 0:
    case 1:
    case 2:
      c->scratch_bytes = required;
      break;
    case 3:
      c->scratch_bytes = required + in.U8();
      break;
    case 4:
      c->scratch_bytes = required > 0 ? required - 1 - in.U8() % std::min<size_t>(required, 64) : 0;
      break;
    case 5:
      c->scratch_bytes = 0;
      break;
    default:
      c->scratch_bytes = in.Size(1 << 16);
      break;
  }
  const uint8_t scratch_place = in.U8();
  if (scratch_place >= 0xF0) {
    c->scratch = scratch_place % 2 ? nullptr : reinterpret_cast<void*>(in.U64());
  } else if (c->scratch_bytes <= kMaxBlockBytes - 64) {
    const size_t offset = scratch_place % 64;
    c->scratch_block = Block(c->scratch_bytes + offset);
    c->scratch = c->scratch_block.data() + offset;
    c->scratch_backed = true;
  } else {
    c->scratch_block = Block(64);
    c->scratch = c->scratch_block.data();
  }
  MaybeAlias(in, c);

  // Values.
  FillValues(in, &c->k, kv.dtype);
  FillValues(in, &c->v, kv.dtype);
  FillValues(in, &c->qb, COVATTN_F32);
  if (int8) {
    FillValues(in, &c->ks, COVATTN_F32);
    FillValues(in, &c->vs, COVATTN_F32);
  }

  // The library's view.
  kv.k = c->k.t.base;
  kv.v = c->v.t.base;
  c->scales.k_scale = static_cast<const float*>(c->ks.t.base);
  c->scales.v_scale = static_cast<const float*>(c->vs.t.base);
  kv.int8_scales = int8 && !c->scales_null ? &c->scales : nullptr;
  c->q.data = static_cast<const float*>(c->qb.t.base);
  c->out.data = static_cast<float*>(const_cast<void*>(c->ob.t.base));
  c->out.log_z = static_cast<float*>(const_cast<void*>(c->log_z.t.base));
  c->state = covattn_partial{static_cast<float*>(const_cast<void*>(c->m.t.base)),
                             static_cast<float*>(const_cast<void*>(c->l.t.base)),
                             static_cast<float*>(const_cast<void*>(c->o.t.base))};
}

// ---------------------------------------------------------------------------
// The model: every error status the arguments justify (empty: a valid call).

StatusSet ExpectedErrors(const Call& c) {
  StatusSet e;
  const covattn_kv_cache& kv = c.kv;
  if (c.kv_null || c.q_null) e.Add(COVATTN_ERR_NULL_POINTER);
  if (kEntry == kDecode && (c.out_null || c.q.data == nullptr || c.out.data == nullptr)) {
    e.Add(COVATTN_ERR_NULL_POINTER);  // decode requires its pointers before anything else
  }
  if (kEntry == kPrefill && c.out_null) e.Add(COVATTN_ERR_NULL_POINTER);
  if (kEntry == kPartial && c.state_null) e.Add(COVATTN_ERR_NULL_POINTER);

  const bool dtype_ok = ElemSize(kv.dtype) != 0;
  if (!dtype_ok) e.Add(COVATTN_ERR_UNSUPPORTED_DTYPE);
  const bool head_dim_ok = kv.head_dim >= 1 && kv.head_dim <= COVATTN_MAX_HEAD_DIM;
  if (!head_dim_ok) e.Add(COVATTN_ERR_INVALID_HEAD_DIM);
  if (kv.n_heads == 0 || c.q.n_heads == 0) {
    e.Add(COVATTN_ERR_INVALID_HEAD_COUNT);
  } else if (c.q.n_heads % kv.n_heads != 0) {
    e.Add(COVATTN_ERR_HEAD_MISMATCH);
  }
  if (!c.options_null && !std::isfinite(c.options.scale)) e.Add(COVATTN_ERR_INVALID_SCALE);
  if (kEntry != kDecode && u128(c.n_past) + c.q.n_tokens > kv.n_tokens) {
    e.Add(COVATTN_ERR_INVALID_POSITION);
  }

  bool tensors_ok = true;
  if (dtype_ok) {
    tensors_ok &= TensorErrors(c.k.t, &e);
    tensors_ok &= TensorErrors(c.v.t, &e);
  }
  // An int8 cache with a (token, head) vector needs its scales.
  const bool needs_scales = kv.dtype == COVATTN_INT8 && kv.n_tokens > 0 && kv.n_heads > 0;
  if (needs_scales && c.scales_null) {
    e.Add(COVATTN_ERR_NULL_POINTER);
    tensors_ok = false;
  } else if (needs_scales) {
    tensors_ok &= TensorErrors(c.ks.t, &e);
    tensors_ok &= TensorErrors(c.vs.t, &e);
  }
  tensors_ok &= TensorErrors(c.qb.t, &e);
  if (kEntry != kPartial) tensors_ok &= TensorErrors(c.ob.t, &e);
  if (c.log_z.t.base != nullptr) tensors_ok &= TensorErrors(c.log_z.t, &e);

  bool state_ok = true;
  if (kEntry == kPartial) {
    if (c.token_begin > c.token_end || c.token_end > kv.n_tokens) {
      e.Add(COVATTN_ERR_INVALID_RANGE);
    }
    if (u128(c.q.n_tokens) * c.q.n_heads > SIZE_MAX) {
      e.Add(COVATTN_ERR_SIZE_OVERFLOW);
      state_ok = false;
    } else {
      state_ok &= TensorErrors(c.m.t, &e);
      state_ok &= TensorErrors(c.l.t, &e);
      state_ok &= TensorErrors(c.o.t, &e);
      if (state_ok &&
          (RangeOf(c.m.t).Overlaps(RangeOf(c.l.t)) || RangeOf(c.m.t).Overlaps(RangeOf(c.o.t)) ||
           RangeOf(c.l.t).Overlaps(RangeOf(c.o.t)))) {
        e.Add(COVATTN_ERR_ALIASING);
        state_ok = false;
      }
    }
  }

  bool scratch_ok = head_dim_ok;
  if (head_dim_ok) {
    if (c.scratch == nullptr || c.scratch_bytes < ScratchRequired(kv.head_dim)) {
      e.Add(COVATTN_ERR_SCRATCH_TOO_SMALL);
      scratch_ok = false;
    } else if (u128(reinterpret_cast<uintptr_t>(c.scratch)) + c.scratch_bytes > UINTPTR_MAX) {
      e.Add(COVATTN_ERR_SIZE_OVERFLOW);
      scratch_ok = false;
    }
  }

  // Outputs may overlap neither inputs, nor each other, nor the scratch.
  if (dtype_ok && tensors_ok && state_ok && scratch_ok) {
    const bool int8 = kv.dtype == COVATTN_INT8 && !c.scales_null;
    const Range inputs[] = {RangeOf(c.k.t), RangeOf(c.v.t), RangeOf(c.qb.t),
                            int8 ? RangeOf(c.ks.t) : Range{}, int8 ? RangeOf(c.vs.t) : Range{}};
    const Range log_z = c.log_z.t.base ? RangeOf(c.log_z.t) : Range{};
    const Range scratch = RangeOfBytes(c.scratch, c.scratch_bytes);
    std::vector<Range> outputs;
    if (kEntry == kPartial) {
      outputs = {RangeOf(c.m.t), RangeOf(c.l.t), RangeOf(c.o.t)};
    } else {
      outputs = {RangeOf(c.ob.t), log_z};
    }
    bool alias = false;
    for (const Range& x : inputs) alias |= x.Overlaps(scratch);
    for (size_t i = 0; i < outputs.size(); ++i) {
      alias |= outputs[i].Overlaps(scratch);
      for (const Range& x : inputs) alias |= outputs[i].Overlaps(x);
      for (size_t j = i + 1; j < outputs.size(); ++j) alias |= outputs[i].Overlaps(outputs[j]);
    }
    if (alias) e.Add(COVATTN_ERR_ALIASING);
  }
  return e;
}

// ---------------------------------------------------------------------------
// What softmax attention allows for one query row, in double precision.

struct RowReference {
  size_t n_visible = 0;
  double max_score = -std::numeric_limits<double>::infinity();
  double max_abs_dot = 0.0;             // largest sum_i |a_i k_ji| over visible tokens
  std::vector<double> lo, hi, abs_max;  // per dim: hull of the visible values
  bool bad_input = false;               // NaN/Inf in its query or visible K/V
  bool may_overflow = false;            // f32 intermediates could exceed FLT_MAX
};

bool Visible(const Call& c, size_t pos, size_t j) {
  const size_t window = c.options_null ? 0 : c.options.window;
  const size_t sinks = c.options_null ? 0 : c.options.n_sinks;
  return j <= pos && (window == 0 || pos - j < window || j < sinks);
}

RowReference Reference(const Call& c, size_t t, size_t h) {
  const covattn_kv_cache& kv = c.kv;
  const size_t dim = kv.head_dim;
  const size_t kv_head = h / (c.q.n_heads / kv.n_heads);
  const size_t pos = c.n_past + t;
  float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  if (!c.options_null && c.options.scale != 0.0f) scale = c.options.scale;
  RowReference r;
  r.lo.assign(dim, std::numeric_limits<double>::infinity());
  r.hi.assign(dim, -std::numeric_limits<double>::infinity());
  r.abs_max.assign(dim, 0.0);
  std::vector<double> a(dim), v_abs_sum(dim, 0.0);
  bool q_finite = true;
  for (size_t i = 0; i < dim; ++i) {
    const double qi = c.q.data[t * c.q.token_stride + h * c.q.head_stride + i];
    a[i] = static_cast<double>(scale) * qi;
    q_finite &= std::isfinite(qi);
    r.may_overflow |= std::fabs(a[i]) > kBig;
  }
  const size_t begin = kEntry == kPartial ? c.token_begin : 0;
  const size_t end = kEntry == kPartial ? c.token_end : kv.n_tokens;
  for (size_t j = begin; j < end && j <= pos; ++j) {
    if (!Visible(c, pos, j)) continue;
    ++r.n_visible;
    double dot = 0.0, abs_dot = 0.0, code_abs_dot = 0.0, k_scale = 1.0, v_scale = 1.0;
    if (kv.dtype == COVATTN_INT8) {  // the vector stands for its scale times its elements
      const covattn_int8_scales& s = c.scales;
      k_scale = s.k_scale[j * s.k_token_stride + kv_head * s.k_head_stride];
      v_scale = s.v_scale[j * s.v_token_stride + kv_head * s.v_head_stride];
    }
    for (size_t i = 0; i < dim; ++i) {
      const double code =
          LoadElement(kv.k, kv.dtype, j * kv.k_token_stride + kv_head * kv.k_head_stride + i);
      const double kji = k_scale * code;
      const double vji =
          v_scale *
          LoadElement(kv.v, kv.dtype, j * kv.v_token_stride + kv_head * kv.v_head_stride + i);
      r.bad_input |= !std::isfinite(kji) || !std::isfinite(vji);
      dot += a[i] * kji;
      abs_dot += std::fabs(a[i] * kji);
      code_abs_dot += std::fabs(a[i] * code);
      r.lo[i] = std::min(r.lo[i], vji);
      r.hi[i] = std::max(r.hi[i], vji);
      r.abs_max[i] = std::max(r.abs_max[i], std::fabs(vji));
      v_abs_sum[i] += std::fabs(vji);
    }
    r.max_score = std::max(r.max_score, dot);
    r.max_abs_dot = std::max(r.max_abs_dot, abs_dot);
    // int8 scores the raw elements and scales the sum (covattn.h, COVATTN_ERR_NONFINITE).
    r.may_overflow |= abs_dot > kBig || code_abs_dot > kBig;
  }
  if (r.n_visible > 0 && !q_finite) r.bad_input = true;
  for (double s : v_abs_sum) r.may_overflow |= s > kBig;
  return r;
}

// Allowed rounding of an output element around the hull of the values.
double HullSlack(const RowReference& r, size_t i) {
  const double n = static_cast<double>(r.n_visible);
  return (4.0 * n + 64.0) * kU * r.abs_max[i] +
         (n + 8.0) * std::numeric_limits<float>::denorm_min();
}

// Allowed error of the largest score (Higham's dot product bound, doubled).
double ScoreSlack(const RowReference& r, size_t dim) {
  return 2.0 * (static_cast<double>(dim) + 4.0) * kU * r.max_abs_dot + 1e-30;
}

void CheckRowOutput(const RowReference& r, const float* out, size_t dim, const float* log_z,
                    size_t t, size_t h) {
  if (r.n_visible == 0) {
    for (size_t i = 0; i < dim; ++i) {
      FUZZ_CHECK(out[i] == 0.0f, "row (%zu, %zu) sees nothing but out[%zu] = %g", t, h, i, out[i]);
    }
    if (log_z) {
      FUZZ_CHECK(std::isinf(*log_z) && *log_z < 0, "row (%zu, %zu): log Z %g, not -inf", t, h,
                 *log_z);
    }
    return;
  }
  for (size_t i = 0; i < dim; ++i) {
    const double slack = HullSlack(r, i);
    FUZZ_CHECK(std::isfinite(out[i]) && out[i] >= r.lo[i] - slack && out[i] <= r.hi[i] + slack,
               "row (%zu, %zu) dim %zu: %.9g outside the values' range [%.9g, %.9g] "
               "(%zu visible)",
               t, h, i, out[i], r.lo[i], r.hi[i], r.n_visible);
  }
  if (log_z) {
    const double e = ScoreSlack(r, dim) + 4 * kU * (std::fabs(r.max_score) + 40.0) + 1e-6;
    const double upper = r.max_score + std::log(static_cast<double>(r.n_visible)) * (1 + 1e-5);
    FUZZ_CHECK(std::isfinite(*log_z) && *log_z >= r.max_score - e && *log_z <= upper + e,
               "row (%zu, %zu): log Z %.9g, largest score %.9g, %zu visible", t, h, *log_z,
               r.max_score, r.n_visible);
  }
}

// Checks a call the model found valid, after it ran.
void CheckResults(const Call& c, covattn_status status) {
  FUZZ_CHECK(
      status == COVATTN_OK || status == COVATTN_FULLY_MASKED || status == COVATTN_ERR_NONFINITE,
      "valid call returned %d (%s)", status, StatusName(status));
  FUZZ_CHECK(kEntry != kPartial || status != COVATTN_FULLY_MASKED,
             "prefill_partial returned COVATTN_FULLY_MASKED");
  const size_t dim = c.kv.head_dim;
  bool any_bad = false, any_overflow = false, any_masked = false;
  std::vector<RowReference> refs;
  refs.reserve(c.n_rows());
  for (size_t t = 0; t < c.q.n_tokens; ++t) {
    for (size_t h = 0; h < c.q.n_heads; ++h) {
      refs.push_back(Reference(c, t, h));
      any_bad |= refs.back().bad_input;
      any_overflow |= refs.back().may_overflow;
      any_masked |= refs.back().n_visible == 0;
    }
  }
  if (any_bad) {
    FUZZ_CHECK(status == COVATTN_ERR_NONFINITE, "NaN/Inf input, yet status %d (%s)", status,
               StatusName(status));
  }
  if (status == COVATTN_ERR_NONFINITE) {
    FUZZ_CHECK(any_bad || any_overflow, "COVATTN_ERR_NONFINITE from finite, moderate input");
    return;
  }
  if (kEntry != kPartial) {
    FUZZ_CHECK((status == COVATTN_FULLY_MASKED) == any_masked,
               "status %d, yet rows without visible tokens: %d", status, any_masked);
  }
  size_t row = 0;
  for (size_t t = 0; t < c.q.n_tokens; ++t) {
    for (size_t h = 0; h < c.q.n_heads; ++h, ++row) {
      const RowReference& r = refs[row];
      if (kEntry != kPartial) {
        const float* out = c.out.data + t * c.out.token_stride + h * c.out.head_stride;
        const float* log_z = c.out.log_z ? c.out.log_z + row : nullptr;
        CheckRowOutput(r, out, dim, log_z, t, h);
        continue;
      }
      const float m = c.state.m[row], l = c.state.l[row];
      const float* o = c.state.o + row * dim;
      FUZZ_CHECK(std::isfinite(m), "row %zu: m = %g", row, m);
      if (r.n_visible == 0) {
        FUZZ_CHECK(l == 0.0f, "row %zu sees nothing, l = %g", row, l);
        for (size_t i = 0; i < dim; ++i) FUZZ_CHECK(o[i] == 0.0f, "row %zu: o = %g", row, o[i]);
        continue;
      }
      const double n = static_cast<double>(r.n_visible);
      FUZZ_CHECK(l >= 0.999f && l <= n * (1 + 1e-5) + 1e-5, "row %zu: l = %.9g, %zu visible", row,
                 l, r.n_visible);
      const double e = ScoreSlack(r, dim) + 4 * kU * std::fabs(r.max_score) + 1e-6;
      FUZZ_CHECK(std::fabs(m - r.max_score) <= e, "row %zu: m = %.9g, largest score %.9g", row, m,
                 r.max_score);
      std::vector<float> normalised(dim);
      for (size_t i = 0; i < dim; ++i) normalised[i] = static_cast<float>(o[i] / double(l));
      CheckRowOutput(r, normalised.data(), dim, nullptr, t, h);
    }
  }
}

u128 Work(const Call& c) {
  return u128(c.q.n_tokens) * c.q.n_heads * (c.kv.n_tokens + 1) * c.kv.head_dim;
}

std::vector<TensorBuffer*> Outputs(Call& c) {
  if (kEntry == kPartial) return {&c.m, &c.l, &c.o};
  return {&c.ob, &c.log_z};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteReader in(data, size);
  PickTarget(in);
  Call c;
  Build(in, &c);
  CheckStrideModel(c.k.t);
  CheckStrideModel(c.qb.t);

  StatusSet expected = ExpectedErrors(c);
  // A call that would run must have memory behind everything it touches and
  // stay small; otherwise take its scratch away: it must then fail before
  // touching anything.
  if (expected.empty()) {
    bool backed = c.k.Usable() && c.v.Usable() && c.qb.Usable() && c.scratch_backed;
    if (c.ks.used) backed &= c.ks.Usable() && c.vs.Usable();
    for (TensorBuffer* b : Outputs(c)) backed &= b->Usable() || b->t.base == nullptr;
    if (!backed || Work(c) > kMaxWork) {
      c.scratch = nullptr;
      expected = ExpectedErrors(c);
      FUZZ_CHECK(!expected.empty(), "a call without scratch is valid");
    }
  }

  TensorBuffer* inputs[] = {&c.k, &c.v, &c.qb, &c.ks, &c.vs};
  for (TensorBuffer* b : inputs) b->Snapshot();
  for (TensorBuffer* b : Outputs(c)) b->Snapshot();
  for (TensorBuffer* b : inputs) b->PoisonGaps();
  for (TensorBuffer* b : Outputs(c)) b->PoisonGaps();

  const covattn_kv_cache* kv = c.kv_null ? nullptr : &c.kv;
  const covattn_attention_options* options = c.options_null ? nullptr : &c.options;
  covattn_status status;
  switch (kEntry) {
    case kDecode:
      status = covattn_decode(kv, c.q_null ? nullptr : c.q.data, c.q.n_heads, options,
                              c.out_null ? nullptr : c.out.data, c.scratch, c.scratch_bytes);
      break;
    case kPrefill:
      status = covattn_prefill(kv, c.q_null ? nullptr : &c.q, c.n_past, options,
                               c.out_null ? nullptr : &c.out, c.scratch, c.scratch_bytes);
      break;
    default:
      status = covattn_prefill_partial(
          kv, c.q_null ? nullptr : &c.q, c.n_past, options, c.token_begin, c.token_end,
          c.state_null ? nullptr : &c.state, c.scratch, c.scratch_bytes);
      break;
  }

  for (TensorBuffer* b : inputs) b->Unpoison();
  for (TensorBuffer* b : Outputs(c)) b->Unpoison();
  Report(covattn_target_name(), status, expected);
  for (TensorBuffer* b : inputs) FUZZ_CHECK(b->Unchanged(), "an input changed");

  if (!expected.empty()) {
    char codes[256];
    expected.Print(codes, sizeof(codes));
    FUZZ_CHECK(expected.Has(status), "status %d (%s), expected one of: %s", status,
               StatusName(status), codes);
    for (TensorBuffer* b : Outputs(c)) FUZZ_CHECK(b->Unchanged(), "a failed call wrote");
    return 0;
  }
  for (TensorBuffer* b : Outputs(c)) {
    FUZZ_CHECK(b->GapsUnchanged(), "a write outside the output vectors");
  }
  CheckResults(c, status);
  return 0;
}
