// The theory of MATH.md section 2, as tests on every target: for jointly
// Gaussian keys and values the readout converges to exact softmax attention
// as the context grows; its log-normaliser matches log sum exp(a.k_j) at
// small score spread; and for tokens z = [x; y] the readout is one step of
// gradient descent on in-context linear regression.
#include <doctest/doctest.h>

#include "covariance_test_util.h"

using namespace covattn_test;

namespace {

// Jointly Gaussian keys and values with non-zero means:
//   k = mu_k + xi,  v = mu_v + B xi + 0.5 eta,  xi, eta ~ N(0, I_d),
// so C_kk = I, C_vk = B, C_vv = B B^T + I/4 (B has N(0, 1/d) entries).
struct GaussianStream {
  size_t dim;
  std::vector<double> mu_k, mu_v, b;  // b is [d][d]
  TestCache cache;

  GaussianStream(size_t n, size_t d, uint64_t seed)
      : dim(d), mu_k(d), mu_v(d), b(d * d), cache(COVATTN_F32, Layout::kTokenMajor, n, 1, d) {
    Rng rng(seed);
    for (size_t i = 0; i < d; ++i) mu_k[i] = 1.5 * rng.Normal(), mu_v[i] = rng.Normal();
    for (double& x : b) x = rng.Normal() / std::sqrt(double(d));
    std::vector<double> xi(d);
    for (size_t t = 0; t < n; ++t) {
      for (size_t i = 0; i < d; ++i) xi[i] = rng.Normal(), cache.SetK(t, 0, i, mu_k[i] + xi[i]);
      for (size_t i = 0; i < d; ++i) {
        double v = mu_v[i] + 0.5 * rng.Normal();
        for (size_t j = 0; j < d; ++j) v += b[i * d + j] * xi[j];
        cache.SetV(t, 0, i, v);
      }
    }
  }
  double TraceCvv() const {
    double tr = 0.25 * dim;
    for (double x : b) tr += x * x;
    return tr;
  }
  double NormCvkA(const std::vector<double>& a) const {
    double s = 0.0;
    for (size_t i = 0; i < dim; ++i) {
      double r = 0.0;
      for (size_t j = 0; j < dim; ++j) r += b[i * dim + j] * a[j];
      s += r * r;
    }
    return s;
  }
};

// Queries whose scaled version a = q / sqrt(d) has norm sigma, so that the
// score spread a^T C_kk a is sigma^2; random directions.
std::vector<float> Queries(size_t n_q, size_t dim, double sigma, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> q(n_q * dim);
  for (size_t h = 0; h < n_q; ++h) {
    std::vector<double> dir(dim);
    double norm = 0.0;
    for (double& x : dir) x = rng.Normal(), norm += x * x;
    for (size_t i = 0; i < dim; ++i)
      q[h * dim + i] =
          static_cast<float>(sigma * dir[i] / std::sqrt(norm) * std::sqrt(double(dim)));
  }
  return q;
}

std::vector<double> ScaledQuery(const float* q, size_t dim) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  std::vector<double> a(dim);
  for (size_t i = 0; i < dim; ++i) a[i] = double{scale} * q[i];
  return a;
}

}  // namespace

// E[f(s)] for s ~ N(0, sigma^2), by Simpson's rule over +-16 sigma (the
// integrands below carry at most e^(2s), whose mass stays inside for
// sigma <= 2).
template <class F>
double GaussianExpectation(double sigma, F f) {
  const int n = 8000;
  const double lo = -16 * sigma, h = 32 * sigma / n;
  double sum = 0.0;
  for (int i = 0; i <= n; ++i) {
    const double s = lo + i * h;
    const double w = (i == 0 || i == n) ? 1 : (i % 2 ? 4 : 2);
    sum += w * f(s) * std::exp(-0.5 * s * s / (sigma * sigma));
  }
  return sum * h / 3 / (sigma * std::sqrt(2 * M_PI));
}

TEST_CASE("the readout's error against exact attention shrinks like n^-1/2 (Gaussian k, v)") {
  // Exact attention (softmax over n tokens) and the readout estimate the
  // same tilted mean m = mu_v + C_vk a (MATH.md section 2) from the same
  // tokens, so their difference D is, to first order in 1/n (delta method),
  // the sample mean of the difference of their influence functions. With
  // s = a.(k - mu_k) ~ N(0, sigma^2), e = e^(s - sigma^2/2), c = C_vk a:
  //   softmax: e (v - m),    readout: (v - mu_v)(1 + s) - c,
  //   psi = (v - mu_v)(e - 1 - s) - c (e - 1).
  // Writing v - mu_v = c s / sigma^2 + r with r independent of s and
  // Cov(r) = C_vv - c c^T / sigma^2:
  //   n E|D|^2 = (tr C_vv - |c|^2 / sigma^2) E[(e - 1 - s)^2]
  //            + |c|^2 E[(s (e - 1 - s) / sigma^2 - (e - 1))^2],
  // with E[(e - 1 - s)^2] = e^(sigma^2) - 1 - sigma^2 (so D ~ sigma^2 / sqrt(n)
  // at small sigma: the two agree to first order in a). The bound on the RMS
  // error over the query heads is twice that prediction (the spread of a
  // chi-square with 4 d degrees of freedom and the first-order
  // approximation) plus the softmax estimator's O(1/n) bias, allowed as
  // 4 e^(sigma^2) (sqrt(tr C_vv) + |c|) / n. f32 rounding (~1e-6) is far
  // below. Lengths 256 .. 65536 (16384 under qemu, see ArmTargets).
  const size_t dim = 32, n_q = 4;
  const size_t n_max = ArmTargets() ? 16384 : 65536;
  const GaussianStream stream(n_max, dim, 1234);
  for (double sigma : {0.5, 1.0}) {
    INFO("sigma " << sigma);
    const double s2 = sigma * sigma;
    const double e_g2 = std::exp(s2) - 1 - s2;
    const double e_h2 = GaussianExpectation(sigma, [&](double s) {
      const double e = std::exp(s - 0.5 * s2);
      return std::pow(s * (e - 1 - s) / s2 - (e - 1), 2);
    });
    const std::vector<float> q = Queries(n_q, dim, sigma, 99);
    ForEachTarget([&] {
      StatePtr s = MakeState(1, dim);
      size_t bytes = 0;
      REQUIRE(covattn_attention_scratch_size(dim, &bytes) == COVATTN_OK);
      std::vector<uint8_t> scratch(bytes);
      std::vector<double> errors;
      size_t fed = 0;
      for (size_t n = 256; n <= n_max; n *= 4) {
        Update(s.get(), stream.cache.view(), fed, n - fed);
        fed = n;
        std::vector<float> readout(n_q * dim), exact(n_q * dim);
        REQUIRE(covattn_cov_readout(s.get(), q.data(), n_q, 0.0f, readout.data(), nullptr,
                                    nullptr) == COVATTN_OK);
        const covattn_kv_cache prefix = Slice(stream.cache.view(), 0, n);
        REQUIRE(covattn_decode(&prefix, q.data(), n_q, nullptr, exact.data(), scratch.data(),
                               scratch.size()) == COVATTN_OK);
        double sq = 0.0, predicted = 0.0, bias = 0.0;
        for (size_t h = 0; h < n_q; ++h) {
          for (size_t i = 0; i < dim; ++i)
            sq += std::pow(readout[h * dim + i] - exact[h * dim + i], 2);
          const std::vector<double> a = ScaledQuery(q.data() + h * dim, dim);
          const double tr = stream.TraceCvv(), c2 = stream.NormCvkA(a);
          predicted += ((tr - c2 / s2) * e_g2 + c2 * e_h2) / n;
          bias = std::max(bias, 4 * std::exp(s2) * (std::sqrt(tr) + std::sqrt(c2)) / n);
        }
        const double rms = std::sqrt(sq / n_q);
        const double bound = 2.0 * std::sqrt(predicted / n_q) + bias;
        INFO("n " << n << ": RMS error " << rms << ", predicted " << std::sqrt(predicted / n_q)
                  << ", bound " << bound);
        CHECK(rms <= bound);
        errors.push_back(rms);
      }
      for (size_t i = 1; i < errors.size(); ++i) {
        INFO("error at 4^" << i << " x 256 tokens: " << errors[i] << " after " << errors[i - 1]);
        CHECK(errors[i] < errors[i - 1]);
      }
      // Over the whole series the error falls about like n^-1/2.
      const double expected_fall = std::sqrt(256.0 / n_max);
      CHECK(errors.back() / errors.front() < 2.0 * expected_fall);
    });
  }
}

TEST_CASE("log Z of the summary matches log sum exp(a.k_j) at small sigma") {
  // With scores s_j = a.k_j, log sum_j e^(s_j) = log n + K(1), K the
  // empirical cumulant generating function, whose expansion in the sample
  // cumulants is K(1) = mean + var / 2 + k3 / 6 + k4 / 24 + ...; the summary
  // keeps the first two (a.mu_k + a^T C_kk a / 2, population-normalised as
  // here). So the difference is -(k3/6 + k4/24 + ...). For Gaussian scores of
  // variance sigma^2 the sample cumulants k_r have standard deviations
  // sqrt(r!/n) sigma^r; 4 of them for r = 3..6 (the rest is negligible at
  // sigma <= 0.25), plus f32 rounding: the state (tol.cov on a^T C a,
  // tol.mean on a.mu), the scores' dot products ((d + 2) u sum |a_i mu_i|)
  // and the final roundings (4 u |log Z|).
  // The sample cumulants of these very scores then explain the difference
  // far more tightly, which checks the identity itself.
  const size_t dim = 24, n = 4096, n_q = 3;
  const GaussianStream stream(n, dim, 77);
  for (double sigma : {0.05, 0.1, 0.25}) {
    INFO("sigma " << sigma);
    const std::vector<float> q = Queries(n_q, dim, sigma, 5);
    const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
    const Tolerance tol = StateTolerance(n / 128);
    ForEachTarget([&] {
      StatePtr s = MakeState(1, dim);
      Update(s.get(), stream.cache.view(), 0, n);
      std::vector<float> out(n_q * dim), log_z(n_q), ess(n_q);
      REQUIRE(covattn_cov_readout(s.get(), q.data(), n_q, 0.0f, out.data(), log_z.data(),
                                  ess.data()) == COVATTN_OK);
      for (size_t h = 0; h < n_q; ++h) {
        const ReferenceRow exact =
            ReferenceAttention(stream.cache, q.data() + h * dim, scale, 0, n - 1, 0, 0);
        const std::vector<double> a = ScaledQuery(q.data() + h * dim, dim);
        std::vector<double> scores(n);
        double mean = 0.0, a_mu = 0.0;
        for (size_t i = 0; i < dim; ++i) a_mu += std::fabs(a[i] * stream.mu_k[i]);
        for (size_t t = 0; t < n; ++t) {
          for (size_t i = 0; i < dim; ++i) scores[t] += a[i] * stream.cache.K(t, 0, i);
          mean += scores[t] / n;
        }
        double m2 = 0, m3 = 0, m4 = 0;
        for (double x : scores) {
          const double c = x - mean;
          m2 += c * c / n, m3 += c * c * c / n, m4 += c * c * c * c / n;
        }
        const double k3 = m3, k4 = m4 - 3 * m2 * m2;
        const double rounding = tol.cov * sigma * sigma + tol.mean * sigma + (dim + 2) * kU * a_mu +
                                4 * kU * std::fabs(exact.log_z) + exact.log_z_bound;
        auto cumulant_term = [&](int r, double factorial) {
          return 4 * std::sqrt(factorial / n) * std::pow(sigma, r) / factorial;
        };
        const double tail = cumulant_term(5, 120) + cumulant_term(6, 720);
        const double statistical = cumulant_term(3, 6) + cumulant_term(4, 24) + tail;
        const double diff = log_z[h] - exact.log_z;
        INFO("head " << h << ": log Z " << log_z[h] << ", exact " << exact.log_z << ", k3 " << k3
                     << ", k4 " << k4);
        CHECK(std::fabs(diff) <= statistical + rounding);
        CHECK(std::fabs(diff + k3 / 6 + k4 / 24) <= tail + rounding);
        // ESS = n e^(-sigma^2), with the sample's own sigma^2 = m2.
        CHECK(std::fabs(ess[h] - n * std::exp(-m2)) <=
              n * std::exp(-m2) * (tol.cov * sigma * sigma + 4 * kU));
      }
    });
  }
}

TEST_CASE("in-context linear regression: the readout is one gradient-descent step") {
  // Tokens z_i = [x_i; y_i] serve as both keys and values (identity
  // projections), the query is [x_q; 0] and the scale is the learning rate
  // eta. The readout's y-component is
  //   mu_y + sum_j C_{y,x_j} eta x_q,j (+ C_yy eta * 0)
  //   = y_bar + x_q^T w_1,  w_1 = eta (1/n) sum_i (y_i - y_bar)(x_i - x_bar),
  // which is one step of gradient descent from w = 0 on the centred
  // least-squares loss (1/2n) sum_i ((y_i - y_bar) - w^T (x_i - x_bar))^2.
  // Bound: the state's errors (tol.cov eta sum_j |x_q,j| sigma_xj sigma_y,
  // tol.mean sigma_y), the f32 product ((d + 3) u with the same scale) and
  // the final rounding u |y_hat|.
  const size_t dx = 15, dim = dx + 1, n = 3000, n_q = 6;
  Rng rng(2718);
  std::vector<double> w(dx);
  for (double& x : w) x = rng.Normal() / std::sqrt(double(dx));
  TestCache z(COVATTN_F32, Layout::kTokenMajor, n, 1, dim);
  for (size_t t = 0; t < n; ++t) {
    double y = 0.1 * rng.Normal() + 0.7;  // an offset, so the mean terms matter
    for (size_t i = 0; i < dx; ++i) {
      const double x = rng.Normal() + 0.2;
      z.SetK(t, 0, i, x);
      y += w[i] * x;
    }
    z.SetK(t, 0, dx, y);
  }
  covattn_kv_cache tokens = z.view();
  tokens.v = tokens.k;  // keys and values are the same vectors
  // Explicit GD step in double on the stored values.
  const Reference r = ComputeReference(
      dim, 0, n, 1.0, [&](size_t t, size_t i) { return z.K(t, 0, i); },
      [&](size_t t, size_t i) { return z.K(t, 0, i); });
  for (float eta : {0.05f, 1.0f}) {
    INFO("learning rate " << eta);
    std::vector<float> q(n_q * dim, 0.0f);
    for (size_t h = 0; h < n_q; ++h)
      for (size_t i = 0; i < dx; ++i) q[h * dim + i] = static_cast<float>(rng.Normal());
    const Tolerance tol = StateTolerance(n / 128);
    ForEachTarget([&] {
      StatePtr s = MakeState(1, dim);
      REQUIRE(UpdateStatus(s.get(), &tokens) == COVATTN_OK);
      std::vector<float> out(n_q * dim);
      REQUIRE(covattn_cov_readout(s.get(), q.data(), n_q, eta, out.data(), nullptr, nullptr) ==
              COVATTN_OK);
      double sum_pred_true = 0, sum_pred2 = 0, sum_true2 = 0;
      for (size_t h = 0; h < n_q; ++h) {
        const float* xq = q.data() + h * dim;
        double y_hat = r.mean_k[dx], scale_terms = 0.0, truth = 0.0;
        const double sy = std::sqrt(r.cov_kk[dx * dim + dx]);
        for (size_t j = 0; j < dx; ++j) {
          const double w1 =
              double{eta} * r.cov_kk[dx * dim + j];  // eta (1/n) sum (y - y_bar)(x_j - x_bar_j)
          y_hat += xq[j] * w1;
          scale_terms += std::fabs(eta * xq[j]) * std::sqrt(r.cov_kk[j * dim + j]) * sy;
          truth += xq[j] * w[j];
        }
        const double bound =
            (tol.cov + (dim + 3) * kU) * scale_terms + tol.mean * sy + 2 * kU * std::fabs(y_hat);
        INFO("query " << h << ": readout " << out[h * dim + dx] << ", GD step " << y_hat);
        CHECK(std::fabs(out[h * dim + dx] - y_hat) <= bound);
        sum_pred_true += (out[h * dim + dx] - r.mean_k[dx]) * truth;
        sum_pred2 += std::pow(out[h * dim + dx] - r.mean_k[dx], 2);
        sum_true2 += truth * truth;
      }
      if (eta == 1.0f) {
        // x ~ N(0.2, I): one step with eta = 1 lands near the regression
        // weights, so the centred predictions follow x_q^T w closely.
        CHECK(sum_pred_true / std::sqrt(sum_pred2 * sum_true2) > 0.95);
      }
    });
  }
}
