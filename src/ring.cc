// Stable evaluations of the modified Bessel functions I_0 and I_1 that the
// ring model needs (MATH.md section 6), in double, without a Bessel library.
//
// With f(z) = log I_0(z), f'(z) = I_1(z) / I_0(z), and Bessel's equation
// giving f'' = 1 - f'/z - f'^2:
//   z < kTableEnd: cubic Hermite interpolation of f (from f, f') and of f'
//     (from f', f'') on a grid of step 1/32, the grid values computed once by
//     the power series I_0(z) = sum_k t_k, t_k = (z^2/4)^k / (k!)^2, and
//     2 I_1(z) / z = sum_k t_k / (k + 1) (positive terms: no cancellation).
//     The interpolation error is below h^4 / 384 max |f''''| ~ 1e-9;
//   z >= kTableEnd: I_nu(z) = e^z / sqrt(2 pi z) sum_k c_k(nu) / z^k,
//     c_k / c_(k-1) = ((2k - 1)^2 - 4 nu^2) / (8 k), taken in logarithms so
//     nothing overflows for any finite z; at z >= 20 the terms fall below
//     1e-16 of the sum long before the series turns divergent (k ~ 2z);
//   the first grid cell uses the series itself (f' / z is needed there).

#include "ring.h"

#include <cmath>

namespace covattn {
namespace detail {
namespace {

constexpr double kTableStep = 1.0 / 32.0;
constexpr int kTableCells = 640;
constexpr double kTableEnd = kTableStep * kTableCells;  // 20
constexpr int kMaxTerms = 200;

// The power series at z < kTableEnd: {log I_0(z), I_1(z) / I_0(z), shrink}.
struct SeriesValue {
  double log_i0, ratio, shrink;
};
SeriesValue Series(double z) {
  const double x = 0.25 * z * z;
  // I_0 - 1 summed apart, so that log1p keeps small z's log I_0 ~ z^2 / 4
  // to full relative precision.
  double t = 1.0, i0_minus_1 = 0.0, i1 = 1.0;  // i1 = 2 I_1(z) / z
  for (int k = 1; k < kMaxTerms; ++k) {
    t *= x / (double(k) * k);
    const double before = i0_minus_1;
    i0_minus_1 += t;
    i1 += t / (k + 1);
    if (i0_minus_1 == before) break;
  }
  const double i0 = 1.0 + i0_minus_1;
  return {std::log1p(i0_minus_1), 0.5 * z * i1 / i0, i1 / i0};
}

// sum_k c_k(nu) / z^k of the asymptotic expansion, to double precision.
double AsymptoticSum(double z, double nu) {
  const double four_nu2 = 4.0 * nu * nu;
  double term = 1.0, sum = 1.0;
  for (int k = 1; k < kMaxTerms; ++k) {
    const double odd = 2.0 * k - 1.0;
    const double next = term * (odd * odd - four_nu2) / (8.0 * k * z);
    if (std::fabs(next) >= std::fabs(term)) break;  // the series has started to diverge
    term = next;
    sum += term;
    if (std::fabs(term) <= 1e-17 * std::fabs(sum)) break;
  }
  return sum;
}

// f, f', f'' on the grid.
struct RingTable {
  double f[kTableCells + 1], d1[kTableCells + 1], d2[kTableCells + 1];
  RingTable() {
    for (int j = 0; j <= kTableCells; ++j) {
      const double z = j * kTableStep;
      const SeriesValue s = Series(z);
      f[j] = s.log_i0;
      d1[j] = s.ratio;
      // f'' = 1 - f'/z - f'^2, with f'/z = shrink / 2 (1/2 at z = 0).
      d2[j] = 1.0 - 0.5 * s.shrink - s.ratio * s.ratio;
    }
  }
};

const RingTable& Table() {
  static const RingTable table;  // built once, thread-safe (C++11 statics)
  return table;
}

// Cubic Hermite interpolation on [0, 1] from values and (step-scaled) slopes.
double Hermite(double t, double y0, double y1, double m0, double m1) {
  const double t2 = t * t, t3 = t2 * t;
  return (2 * t3 - 3 * t2 + 1) * y0 + (t3 - 2 * t2 + t) * m0 + (-2 * t3 + 3 * t2) * y1 +
         (t3 - t2) * m1;
}

}  // namespace

RingTerms RingAt(double z) {
  if (!(z > 0.0)) return {0.0, 1.0};  // z = 0
  if (z < kTableStep) {
    const SeriesValue s = Series(z);
    return {s.log_i0, s.shrink};
  }
  if (z < kTableEnd) {
    const RingTable& tb = Table();
    const int j = static_cast<int>(z / kTableStep);
    const double t = z / kTableStep - j, h = kTableStep;
    const double f = Hermite(t, tb.f[j], tb.f[j + 1], h * tb.d1[j], h * tb.d1[j + 1]);
    const double d1 = Hermite(t, tb.d1[j], tb.d1[j + 1], h * tb.d2[j], h * tb.d2[j + 1]);
    return {f, 2.0 * d1 / z};
  }
  const double s0 = AsymptoticSum(z, 0.0), s1 = AsymptoticSum(z, 1.0);
  const double log_i0 = z - 0.5 * std::log(2.0 * M_PI * z) + std::log(s0);
  return {log_i0, 2.0 * s1 / (z * s0)};
}

double LogBesselI0(double z) { return RingAt(z).log_i0; }
double RingShrink(double z) { return RingAt(z).shrink; }

}  // namespace detail
}  // namespace covattn
