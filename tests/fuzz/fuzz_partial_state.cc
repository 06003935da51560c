// Fuzz target for the partial-state entry points, covattn_partial_merge and
// covattn_partial_finalize (the input picks one), and
// covattn_attention_scratch_size. Row counts, head_dim, array placements
// (exact, NULL, misaligned, wild, overlapping) and values (with NaN, Inf,
// huge and subnormal numbers) come from the input.
//
// Checked: the status is one the argument rules allow; a refused call,
// including a merge refused for non-finite input or result, leaves `into`
// and the outputs as they were; `other` and the state of a finalize never
// change; results match a double-precision reference of MATH.md section 1
// and are reported as COVATTN_ERR_NONFINITE exactly when they cannot be
// represented.
#include "fuzz_util.h"

using namespace covattn_fuzz;

namespace {

constexpr double kU = 1.0 / (1 << 24);
constexpr double kBig = 1.7014118346046923e38;   // half of FLT_MAX
constexpr double kTiny = 1.401298464324817e-45;  // f32 denorm_min

struct State {
  TensorBuffer m, l, o;
  covattn_partial view{};
  bool null = false;
  std::vector<TensorBuffer*> arrays() { return {&m, &l, &o}; }
};

struct Call {
  bool merge = false;
  size_t n_rows = 0, head_dim = 0;
  State into, other;  // finalize uses `into` as its state
  bool other_is_into = false;
  TensorBuffer out, log_z;
};

void ShapeState(State* s, size_t n_rows, size_t head_dim) {
  s->m.t = Shape(4, n_rows, 1, 1, 0, 1);
  s->l.t = Shape(4, n_rows, 1, 1, 0, 1);
  s->o.t = Shape(4, n_rows, head_dim, 1, 0, head_dim);
}

void PlaceFrom(ByteReader& in, TensorBuffer* buf) {
  const Placement placement = PlacementFrom(in.U8());
  const uint8_t b = in.U8();
  Place(buf, placement, b < 0xE0 ? 0 : b % 8, placement == Placement::kWild ? in.U64() : 0);
}

void View(State* s) {
  s->view = covattn_partial{static_cast<float*>(const_cast<void*>(s->m.t.base)),
                            static_cast<float*>(const_cast<void*>(s->l.t.base)),
                            static_cast<float*>(const_cast<void*>(s->o.t.base))};
}

void Build(ByteReader& in, Call* c) {
  const uint8_t op = in.U8();
  c->merge = op % 2 == 0;
  c->n_rows = in.Size(256);
  c->head_dim = in.Size(520);
  ShapeState(&c->into, c->n_rows, c->head_dim);
  ShapeState(&c->other, c->n_rows, c->head_dim);
  c->out.t = Shape(4, c->n_rows, c->head_dim, 1, 0, c->head_dim);
  c->log_z.t = Shape(4, c->n_rows, 1, 1, 0, 1);

  const uint8_t nulls = in.U8();
  c->into.null = nulls == 0xFF;
  c->other.null = nulls == 0xFE;
  c->other_is_into = nulls == 0xFD;
  for (TensorBuffer* b : c->into.arrays()) PlaceFrom(in, b);
  if (c->merge) {
    for (TensorBuffer* b : c->other.arrays()) PlaceFrom(in, b);
  } else {
    PlaceFrom(in, &c->out);
    if (in.U8() % 2) PlaceFrom(in, &c->log_z);
  }

  // Overlaps: one array pointed into another.
  const uint8_t alias = in.U8();
  if (alias >= 0xD0) {
    TensorBuffer* all[] = {&c->into.m,  &c->into.l,  &c->into.o, &c->other.m,
                           &c->other.l, &c->other.o, &c->out,    &c->log_z};
    TensorBuffer* guest = all[in.U8() % 8];
    TensorBuffer* host = all[in.U8() % 8];
    const size_t offset = in.U8() % 64;
    if (guest != host && host->t.base != nullptr && guest->t.base != nullptr) {
      guest->block = Block();
      guest->backed = false;
      guest->t.base =
          reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(host->t.base) + 4 * offset);
    }
  }

  for (State* s : {&c->into, &c->other}) {
    for (TensorBuffer* b : s->arrays()) FillValues(in, b, COVATTN_F32);
    View(s);
  }
}

// A state's arrays: null pointer, tensor rules, overlap among themselves.
bool StateErrors(State& s, StatusSet* e) {
  if (s.null) {
    e->Add(COVATTN_ERR_NULL_POINTER);
    return false;
  }
  bool ok = true;
  for (TensorBuffer* b : s.arrays()) ok &= TensorErrors(b->t, e);
  if (ok && (RangeOf(s.m.t).Overlaps(RangeOf(s.l.t)) || RangeOf(s.m.t).Overlaps(RangeOf(s.o.t)) ||
             RangeOf(s.l.t).Overlaps(RangeOf(s.o.t)))) {
    e->Add(COVATTN_ERR_ALIASING);
    ok = false;
  }
  return ok;
}

bool AnyNonFinite(const State& s, size_t n_rows, size_t head_dim) {
  for (size_t r = 0; r < n_rows; ++r) {
    if (!std::isfinite(s.view.m[r]) || !std::isfinite(s.view.l[r])) return true;
  }
  for (size_t i = 0; i < n_rows * head_dim; ++i) {
    if (!std::isfinite(s.view.o[i])) return true;
  }
  return false;
}

StatusSet ExpectedErrors(Call& c, bool* memory_ok) {
  StatusSet e;
  const bool head_dim_ok = c.head_dim >= 1 && c.head_dim <= COVATTN_MAX_HEAD_DIM;
  if (!head_dim_ok) e.Add(COVATTN_ERR_INVALID_HEAD_DIM);
  bool ok = StateErrors(c.into, &e);
  if (c.merge) {
    if (c.other_is_into) {
      if (ok && !c.into.m.t.Empty()) e.Add(COVATTN_ERR_ALIASING);
    } else {
      ok &= StateErrors(c.other, &e);
      if (ok) {
        for (TensorBuffer* a : c.into.arrays())
          for (TensorBuffer* b : c.other.arrays())
            if (RangeOf(a->t).Overlaps(RangeOf(b->t))) e.Add(COVATTN_ERR_ALIASING), ok = false;
      }
    }
  } else {
    if (c.out.t.base == nullptr && c.n_rows != 0) e.Add(COVATTN_ERR_NULL_POINTER), ok = false;
    ok &= TensorErrors(c.out.t, &e);
    if (c.log_z.t.base != nullptr) ok &= TensorErrors(c.log_z.t, &e);
    if (ok) {
      const Range outs[] = {RangeOf(c.out.t), c.log_z.t.base ? RangeOf(c.log_z.t) : Range{}};
      for (TensorBuffer* a : c.into.arrays())
        for (const Range& r : outs)
          if (RangeOf(a->t).Overlaps(r)) e.Add(COVATTN_ERR_ALIASING), ok = false;
      if (outs[0].Overlaps(outs[1])) e.Add(COVATTN_ERR_ALIASING), ok = false;
    }
  }
  // Every array the call reads must be real memory before values are looked
  // at (the library refuses non-finite states before writing anything).
  *memory_ok = true;
  for (TensorBuffer* b : c.into.arrays()) *memory_ok &= b->Usable();
  if (c.merge && !c.other_is_into) {
    for (TensorBuffer* b : c.other.arrays()) *memory_ok &= b->Usable();
  }
  if (!c.merge) *memory_ok &= c.out.Usable() && (c.log_z.t.base == nullptr || c.log_z.Usable());
  if (e.empty() && head_dim_ok && ok && *memory_ok) {
    bool bad = AnyNonFinite(c.into, c.n_rows, c.head_dim);
    if (c.merge) bad |= AnyNonFinite(c.other, c.n_rows, c.head_dim);
    if (bad) e.Add(COVATTN_ERR_NONFINITE);
  }
  return e;
}

// `into` after a merge, against the double reference from its snapshot.
void CheckMerge(const Call& c, covattn_status status) {
  const size_t dim = c.head_dim;
  bool overflow = false;
  for (size_t r = 0; r < c.n_rows; ++r) {
    const double ma = c.into.m.SnapshotFloat(r), la = c.into.l.SnapshotFloat(r),
                 mb = c.other.view.m[r], lb = c.other.view.l[r];
    const double m = std::max(ma, mb);
    const double wa = std::exp(static_cast<double>(static_cast<float>(ma - m))),
                 wb = std::exp(static_cast<double>(static_cast<float>(mb - m)));
    const double rel_a = 4 * kU + kU * std::fabs(ma - m), rel_b = 4 * kU + kU * std::fabs(mb - m);
    auto check = [&](double got, double a, double b, const char* what, size_t i) {
      const double ref = a * wa + b * wb;
      const double tol = 2 * (std::fabs(a) * wa * rel_a + std::fabs(b) * wb * rel_b) +
                         2 * (std::fabs(a) + std::fabs(b)) * kTiny + 4 * kTiny +
                         2 * kU * std::fabs(ref);
      if (std::fabs(ref) + tol > kBig) overflow = true;
      if (status == COVATTN_OK) {
        FUZZ_CHECK(std::isfinite(got) && std::fabs(got - ref) <= tol,
                   "merged %s row %zu [%zu]: %.9g, reference %.9g (tolerance %.3g)", what, r, i,
                   got, ref, tol);
      }
    };
    if (status == COVATTN_OK) {
      FUZZ_CHECK(c.into.view.m[r] == static_cast<float>(m), "merged m row %zu", r);
    }
    check(c.into.view.l[r], la, lb, "l", 0);
    for (size_t i = 0; i < dim; ++i) {
      check(c.into.view.o[r * dim + i], c.into.o.SnapshotFloat(r * dim + i),
            c.other.view.o[r * dim + i], "o", i);
    }
  }
  if (status == COVATTN_ERR_NONFINITE) {
    FUZZ_CHECK(overflow, "merge of finite, moderate states reported non-finite");
  }
}

void CheckFinalize(const Call& c, covattn_status status) {
  const size_t dim = c.head_dim;
  const float* out = static_cast<const float*>(c.out.t.base);
  const float* log_z = static_cast<const float*>(c.log_z.t.base);
  bool overflow = false, masked = false;
  for (size_t r = 0; r < c.n_rows; ++r) {
    const double m = c.into.view.m[r], l = c.into.view.l[r];
    if (l == 0.0) {
      masked = true;
      if (status != COVATTN_ERR_NONFINITE) {
        for (size_t i = 0; i < dim; ++i) FUZZ_CHECK(out[r * dim + i] == 0.0f, "masked row %zu", r);
        if (log_z) FUZZ_CHECK(std::isinf(log_z[r]) && log_z[r] < 0, "masked row %zu log Z", r);
      }
      continue;
    }
    if (1.0 / std::fabs(l) > kBig) overflow = true;
    for (size_t i = 0; i < dim; ++i) {
      const double ref = c.into.view.o[r * dim + i] / l;
      if (std::fabs(ref) > kBig) overflow = true;
      if (status == COVATTN_ERR_NONFINITE) continue;
      // Two roundings, and 1/l loses bits when it is subnormal (l > 2^126).
      const double tol =
          3 * kU * std::fabs(ref) + 2 * kTiny * (std::fabs(c.into.view.o[r * dim + i]) + 2);
      FUZZ_CHECK(std::isfinite(out[r * dim + i]) && std::fabs(out[r * dim + i] - ref) <= tol,
                 "finalized row %zu [%zu]: %.9g, reference %.9g", r, i, out[r * dim + i], ref);
    }
    if (log_z) {
      if (l < 0) {  // log of a negative normaliser: NaN
        overflow = true;
        FUZZ_CHECK(status == COVATTN_ERR_NONFINITE, "row %zu: l < 0 and status %d", r, status);
        continue;
      }
      const double ref = m + std::log(l);
      if (std::fabs(ref) > kBig) overflow = true;
      if (status == COVATTN_ERR_NONFINITE) continue;
      const double tol = 4 * kU * (std::fabs(m) + std::fabs(std::log(l))) + 1e-6;
      FUZZ_CHECK(std::isfinite(log_z[r]) && std::fabs(log_z[r] - ref) <= tol,
                 "log Z row %zu: %.9g, reference %.9g", r, log_z[r], ref);
    }
  }
  if (status == COVATTN_ERR_NONFINITE) {
    FUZZ_CHECK(overflow, "finalize of a finite, moderate state reported non-finite");
  } else {
    FUZZ_CHECK(status == (masked ? COVATTN_FULLY_MASKED : COVATTN_OK),
               "finalize status %d, masked rows: %d", status, masked);
  }
}

void CheckScratchSize(ByteReader& in) {
  const size_t head_dim = in.Size(1024);
  size_t bytes = 12345;
  const covattn_status status = covattn_attention_scratch_size(head_dim, &bytes);
  if (head_dim == 0 || head_dim > COVATTN_MAX_HEAD_DIM) {
    FUZZ_CHECK(status == COVATTN_ERR_INVALID_HEAD_DIM && bytes == 12345, "scratch size %zu",
               head_dim);
  } else {
    FUZZ_CHECK(status == COVATTN_OK && bytes >= head_dim * 4 && bytes < (size_t{1} << 24),
               "scratch size of %zu: %zu bytes", head_dim, bytes);
  }
  FUZZ_CHECK(covattn_attention_scratch_size(head_dim, nullptr) == COVATTN_ERR_NULL_POINTER,
             "NULL size pointer");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteReader in(data, size);
  CheckScratchSize(in);
  Call c;
  Build(in, &c);
  bool memory_ok = false;
  const StatusSet expected = ExpectedErrors(c, &memory_ok);
  if (expected.empty() && (!memory_ok || u128(c.n_rows) * (c.head_dim + 2) > (1u << 22))) {
    return 0;  // a valid call over memory that does not exist: nothing to learn
  }

  std::vector<TensorBuffer*> all = {&c.into.m,  &c.into.l,  &c.into.o, &c.other.m,
                                    &c.other.l, &c.other.o, &c.out,    &c.log_z};
  for (TensorBuffer* b : all) b->Snapshot();
  for (TensorBuffer* b : all) b->PoisonGaps();
  covattn_status status;
  if (c.merge) {
    const covattn_partial* other = c.other_is_into ? &c.into.view : &c.other.view;
    status = covattn_partial_merge(c.n_rows, c.head_dim, c.into.null ? nullptr : &c.into.view,
                                   c.other.null ? nullptr : other);
  } else {
    status = covattn_partial_finalize(c.n_rows, c.head_dim, c.into.null ? nullptr : &c.into.view,
                                      static_cast<float*>(const_cast<void*>(c.out.t.base)),
                                      static_cast<float*>(const_cast<void*>(c.log_z.t.base)));
  }
  for (TensorBuffer* b : all) b->Unpoison();
  Report(c.merge ? "merge" : "finalize", status, expected);

  // Reads only: `other`, and the state of a finalize.
  for (TensorBuffer* b : c.other.arrays()) FUZZ_CHECK(b->Unchanged(), "`other` changed");
  if (!c.merge) {
    for (TensorBuffer* b : c.into.arrays()) FUZZ_CHECK(b->Unchanged(), "the state changed");
  }
  if (!expected.empty()) {
    char codes[256];
    expected.Print(codes, sizeof(codes));
    FUZZ_CHECK(expected.Has(status), "status %d (%s), expected one of: %s", status,
               StatusName(status), codes);
    for (TensorBuffer* b : all) FUZZ_CHECK(b->Unchanged(), "a refused call wrote");
    return 0;
  }
  if (c.merge) {
    FUZZ_CHECK(status == COVATTN_OK || status == COVATTN_ERR_NONFINITE, "merge status %d", status);
    if (status == COVATTN_ERR_NONFINITE) {
      for (TensorBuffer* b : c.into.arrays()) FUZZ_CHECK(b->Unchanged(), "a refused merge wrote");
    }
    CheckMerge(c, status);
  } else {
    FUZZ_CHECK(
        status == COVATTN_OK || status == COVATTN_FULLY_MASKED || status == COVATTN_ERR_NONFINITE,
        "finalize status %d", status);
    FUZZ_CHECK(c.out.GapsUnchanged() && c.log_z.GapsUnchanged(), "finalize wrote outside");
    CheckFinalize(c, status);
  }
  return 0;
}
