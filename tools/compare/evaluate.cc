#include "evaluate.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>

namespace covattn_compare {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Median of the finite entries; NaN if there are none.
double Median(std::vector<double> x) {
  x.erase(std::remove_if(x.begin(), x.end(), [](double d) { return !std::isfinite(d); }), x.end());
  if (x.empty()) return kNaN;
  std::sort(x.begin(), x.end());
  const size_t n = x.size();
  return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

double Extreme(const std::vector<double>& x, bool want_max) {
  double best = kNaN;
  for (double d : x) {
    if (!std::isfinite(d)) continue;
    if (!std::isfinite(best) || (want_max ? d > best : d < best)) best = d;
  }
  return best;
}

// Reads and writes a buffer twice the size of the last-level cache, so that
// the next decode finds none of its data in the caches.
void EvictCaches() {
  static std::vector<uint64_t> buffer = [] {
    long llc = 0;
#ifdef _SC_LEVEL3_CACHE_SIZE
    llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    const size_t bytes = std::max<size_t>(llc > 0 ? 2 * size_t(llc) : 0, size_t{64} << 20);
    return std::vector<uint64_t>(bytes / sizeof(uint64_t), 1);
  }();
  uint64_t sum = 0;
  for (uint64_t& x : buffer) sum += x++;
  static std::atomic<uint64_t> sink;
  sink.store(sum, std::memory_order_relaxed);
}

// Attention in double precision: the reference of one query row.
void ReferenceRow(const float* q, const float* k, const float* v, size_t n, size_t dim,
                  double scale, double* out, double* log_z, std::vector<double>& scores) {
  scores.resize(n);
  double m = -std::numeric_limits<double>::infinity();
  for (size_t t = 0; t < n; ++t) {
    double s = 0.0;
    for (size_t i = 0; i < dim; ++i) s += double(q[i]) * k[t * dim + i];
    scores[t] = s * scale;
    m = std::max(m, scores[t]);
  }
  double l = 0.0;
  std::fill(out, out + dim, 0.0);
  for (size_t t = 0; t < n; ++t) {
    const double w = std::exp(scores[t] - m);
    l += w;
    for (size_t i = 0; i < dim; ++i) out[i] += w * v[t * dim + i];
  }
  for (size_t i = 0; i < dim; ++i) out[i] /= l;
  *log_z = m + std::log(l);
}

struct RowErrors {
  std::vector<double> rel_l2, cosine, log_z, share, ess;
};

void AddRowErrors(const DecodeResult& got, const std::vector<double>& ref_out,
                  const std::vector<double>& ref_log_z, size_t dim, RowErrors* e) {
  const size_t rows = ref_log_z.size();
  for (size_t r = 0; r < rows; ++r) {
    double diff = 0.0, ref_norm = 0.0, got_norm = 0.0, dot = 0.0;
    for (size_t i = 0; i < dim; ++i) {
      const double g = got.out[r * dim + i], x = ref_out[r * dim + i];
      diff += (g - x) * (g - x);
      ref_norm += x * x;
      got_norm += g * g;
      dot += g * x;
    }
    e->rel_l2.push_back(std::sqrt(diff / (ref_norm > 0.0 ? ref_norm : 1.0)));
    e->cosine.push_back(ref_norm > 0.0 && got_norm > 0.0 ? dot / std::sqrt(ref_norm * got_norm)
                                                         : 0.0);
    e->log_z.push_back(std::fabs(double(got.log_z[r]) - ref_log_z[r]));
    e->share.push_back(got.summary_share[r]);
    e->ess.push_back(got.summary_ess[r]);
  }
}

struct Timing {
  double median = 0.0, min = 0.0, max = 0.0;
  size_t samples = 0, reps = 0;
};

Timing TimeDecode(const Options& options, const std::function<void()>& decode_layer) {
  Timing timing;
  // Warm-up, which also sizes a sample.
  auto start = Clock::now();
  decode_layer();
  const double once = std::max(Seconds(start, Clock::now()), 1e-9);
  size_t reps = 1;
  if (!options.cold) {
    reps = static_cast<size_t>(std::ceil(options.min_sample_ms * 1e-3 / once));
    reps = std::min<size_t>(std::max<size_t>(reps, 1), 1000000);
  }
  std::vector<double> samples;
  for (size_t s = 0; s < options.samples; ++s) {
    if (options.cold) EvictCaches();
    start = Clock::now();
    for (size_t r = 0; r < reps; ++r) decode_layer();
    samples.push_back(Seconds(start, Clock::now()) / double(reps));
  }
  timing.median = Median(samples);
  timing.min = *std::min_element(samples.begin(), samples.end());
  timing.max = *std::max_element(samples.begin(), samples.end());
  timing.samples = samples.size();
  timing.reps = reps;
  return timing;
}

}  // namespace

bool EvaluateSeries(const Series& series, const Options& options, ThreadPool& pool,
                    const ProgressFn& progress, std::vector<Measurement>* results,
                    std::string* error) {
  const size_t dim = series.dim, heads = series.n_kv_heads, group = series.group;
  const double scale = series.scale != 0.0f ? series.scale : 1.0 / std::sqrt(double(dim));

  // Per method: a plan and one instance per KV head.
  struct MethodState {
    MethodPlan plan;
    std::vector<std::unique_ptr<HeadMethod>> heads;
    std::vector<std::vector<float>> out;  // per head, the timed decode's output
  };
  std::vector<MethodState> methods;
  for (Method m : options.methods) {
    MethodState state;
    if (!PlanMethod(m, options, dim, &state.plan, error)) return false;
    methods.push_back(std::move(state));
  }
  if (series.contexts.empty()) return true;
  size_t max_queries = group;
  {
    std::vector<float> timing, err;
    series.queries(0, 0, &timing, &err);
    max_queries = std::max(max_queries, err.size() / dim);
  }
  for (MethodState& state : methods) {
    for (size_t h = 0; h < heads; ++h) {
      std::unique_ptr<HeadMethod> head = HeadMethod::Create(
          state.plan, series.scale, series.k[h].data(), series.v[h].data(), max_queries, error);
      if (!head) return false;
      state.heads.push_back(std::move(head));
      state.out.emplace_back(group * dim);
    }
  }

  // Progress by work: a context's cost grows with its length.
  double total_work = 0.0, done_work = 0.0;
  for (size_t n : series.contexts) total_work += double(n) * methods.size();

  std::vector<std::vector<float>> timing_q(heads), error_q(heads);
  std::vector<std::vector<double>> ref_out(heads), ref_log_z(heads);
  std::vector<DecodeResult> decoded(heads);
  std::vector<std::string> head_errors(heads);
  for (size_t ci = 0; ci < series.contexts.size(); ++ci) {
    const size_t n = series.contexts[ci];
    for (size_t h = 0; h < heads; ++h) series.queries(ci, h, &timing_q[h], &error_q[h]);
    if (progress) progress(done_work / total_work, series.label + ", n=" + std::to_string(n));
    pool.ForEach(heads, [&](size_t h) {
      const size_t rows = error_q[h].size() / dim;
      ref_out[h].assign(rows * dim, 0.0);
      ref_log_z[h].assign(rows, 0.0);
      std::vector<double> scores;
      for (size_t r = 0; r < rows; ++r) {
        ReferenceRow(error_q[h].data() + r * dim, series.k[h].data(), series.v[h].data(), n, dim,
                     scale, ref_out[h].data() + r * dim, &ref_log_z[h][r], scores);
      }
    });

    double exact_time = kNaN;
    for (MethodState& state : methods) {
      const Method method = state.plan.method;
      if (progress) {
        progress(done_work / total_work,
                 series.label + ", n=" + std::to_string(n) + ": " + MethodKey(method));
      }
      // Grow the context and decode the error queries (untimed).
      std::atomic<bool> ok{true};
      pool.ForEach(heads, [&](size_t h) {
        HeadMethod& head = *state.heads[h];
        if (!head.Advance(n, &head_errors[h]) ||
            !head.Decode(error_q[h].data(), error_q[h].size() / dim, &decoded[h],
                         &head_errors[h])) {
          ok = false;
        }
      });
      if (!ok) {
        for (const std::string& e : head_errors) {
          if (!e.empty()) *error = std::string(MethodName(method)) + ": " + e;
        }
        return false;
      }
      RowErrors errors;
      for (size_t h = 0; h < heads; ++h) {
        AddRowErrors(decoded[h], ref_out[h], ref_log_z[h], dim, &errors);
      }

      const std::function<void(size_t)> decode_head = [&](size_t h) {
        state.heads[h]->DecodeFast(timing_q[h].data(), group, state.out[h].data());
      };
      const Timing timing = TimeDecode(options, [&] { pool.ForEach(heads, decode_head); });
      for (size_t h = 0; h < heads; ++h) {
        if (!state.heads[h]->FastStatusOk()) {
          *error = std::string(MethodName(method)) + ": a timed decode failed";
          return false;
        }
      }
      if (method == Method::kExact) exact_time = timing.median;

      Measurement m;
      m.series = series.label;
      m.workload = series.workload;
      m.sigma = series.sigma;
      m.layer = series.layer;
      m.dim = dim;
      m.n_kv_heads = heads;
      m.n_q_heads = heads * group;
      m.context = n;
      m.method = method;
      m.memory_bytes = StateBytes(state.plan, n) * heads;
      m.allocated_bytes = 0;
      double append_seconds = 0.0;
      for (const auto& head : state.heads) {
        m.allocated_bytes += head->AllocatedBytes();
        append_seconds += head->append_seconds();
      }
      m.time_median = timing.median;
      m.time_min = timing.min;
      m.time_max = timing.max;
      m.samples = timing.samples;
      m.reps_per_sample = timing.reps;
      m.speedup = exact_time / timing.median;
      m.n_queries = errors.rel_l2.size();
      m.rel_l2_median = Median(errors.rel_l2);
      m.rel_l2_max = Extreme(errors.rel_l2, true);
      m.cosine_median = Median(errors.cosine);
      m.cosine_min = Extreme(errors.cosine, false);
      m.log_z_err_median = Median(errors.log_z);
      m.log_z_err_max = Extreme(errors.log_z, true);
      m.summary_share_median = Median(errors.share);
      m.summary_ess_median = Median(errors.ess);
      m.append_ns_per_token =
          IsExact(method) ? kNaN : append_seconds * 1e9 / (double(n) * double(heads));
      results->push_back(m);
      done_work += double(n);
    }
  }
  if (progress) progress(1.0, series.label);
  return true;
}

}  // namespace covattn_compare
