// The ring model of post-RoPE keys (MATH.md section 6), shared by the
// bounded cache's summaries: which dimensions form RoPE's rotation planes,
// and the log-normaliser and readout shrink of a ring of keys in one plane.
// Double precision; no Bessel library (the evaluations are in ring.cc).
#ifndef COVATTN_SRC_RING_H_
#define COVATTN_SRC_RING_H_

#include <cstddef>
#include <cstdint>

#include "covattn/cache.h"

namespace covattn {
namespace detail {

// log I_0(z) for z >= 0, finite for every finite z (about
// z - 1/2 log(2 pi z) for large z, z^2 / 4 for small); ring.cc says how.
double LogBesselI0(double z);

// 2 I_1(z) / (z I_0(z)) for z >= 0: the factor by which a ring's tilted mean
// falls short of the Gaussian's, in (0, 1], 1 at z = 0.
double RingShrink(double z);

// Both at once (they share the series).
struct RingTerms {
  double log_i0, shrink;
};
RingTerms RingAt(double z);

// The rotation planes of a head of `dim` dimensions under a covattn_rope
// (not NONE; dim even): plane i is dimensions (First(i), Second(i)).
struct RopePlanes {
  uint32_t rope;
  size_t dim;
  size_t Count() const { return dim / 2; }
  size_t First(size_t i) const { return rope == COVATTN_ROPE_INTERLEAVED ? 2 * i : i; }
  size_t Second(size_t i) const {
    return rope == COVATTN_ROPE_INTERLEAVED ? 2 * i + 1 : i + dim / 2;
  }
};

}  // namespace detail
}  // namespace covattn

#endif  // COVATTN_SRC_RING_H_
