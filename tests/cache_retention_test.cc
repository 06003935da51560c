// Query-aware retention in the bounded cache (include/covattn/cache.h): the
// EMA, H2O and TOVA policies against a double-precision model of the policy
// that follows every append, decode and observe (scores, which tokens each
// head keeps, and the decode over exactly those tokens), FIFO when nothing
// is observed, observe on a cache without retained slots, and the statuses
// of bad observe calls, each leaving the cache's memory as it was.
#include <doctest/doctest.h>

#include <cmath>
#include <deque>
#include <limits>

#include "cache_test_util.h"

using namespace covattn_test;

namespace {

// A cache in caller memory, so that a test can compare all of its bytes.
struct CallerCache {
  explicit CallerCache(const covattn_cache_config& config) {
    size_t bytes = 0;
    REQUIRE(covattn_cache_size(&config, &bytes) == COVATTN_OK);
    memory.assign(bytes, 0x5A);
    REQUIRE(covattn_cache_init(memory.data(), bytes, &config, &cache) == COVATTN_OK);
  }
  std::vector<uint8_t> memory;
  covattn_cache* cache = nullptr;
};

// The double model of one KV head's exact tokens under a retention policy.
struct RefToken {
  size_t t;
  double score;
};

struct RefHead {
  std::deque<RefToken> window;  // oldest first
  std::vector<RefToken> retained;
};

class RetentionModel {
 public:
  RetentionModel(const covattn_cache_config& c, const TestCache& data, size_t group)
      : c_(c), data_(data), group_(group), heads_(c.n_kv_heads) {}

  // Appends token t (the next one).
  void Append(size_t t) {
    if (t < c_.n_sinks) return;
    for (RefHead& head : heads_) {
      head.window.push_back({t, 0.0});
      if (head.window.size() <= c_.window) continue;
      const RefToken leaving = head.window.front();
      head.window.pop_front();
      Offer(&head, leaving);
    }
  }

  // The weights a decode's queries (scale applied in f32 as the library
  // does) with its log Z gave each window and retained token, folded into
  // their scores.
  void Observe(const std::vector<float>& q, float scale, const std::vector<float>& log_z) {
    const size_t d = c_.head_dim;
    for (size_t h = 0; h < heads_.size(); ++h) {
      auto weight = [&](size_t t) {
        double w = 0.0;
        for (size_t r = h * group_; r < (h + 1) * group_; ++r) {
          if (log_z[r] == -HUGE_VALF) continue;
          double s = 0.0;
          for (size_t i = 0; i < d; ++i) {
            s += double{scale * q[r * d + i]} * data_.K(t, h, i);
          }
          w += std::min(1.0, std::exp(s - log_z[r]));
        }
        return w;
      };
      for (RefToken& tok : heads_[h].window) Update(&tok, weight(tok.t));
      for (RefToken& tok : heads_[h].retained) Update(&tok, weight(tok.t));
    }
  }

  // Double attention of query row r over head h's exact tokens.
  std::vector<double> Attend(const std::vector<float>& q, float scale, size_t r,
                             size_t n_tokens) const {
    const size_t d = c_.head_dim, h = r / group_;
    std::vector<size_t> kept;
    for (size_t t = 0; t < std::min(n_tokens, c_.n_sinks); ++t) kept.push_back(t);
    for (const RefToken& tok : heads_[h].window) kept.push_back(tok.t);
    for (const RefToken& tok : heads_[h].retained) kept.push_back(tok.t);
    std::vector<double> scores;
    double m = -std::numeric_limits<double>::infinity();
    for (size_t t : kept) {
      double s = 0.0;
      for (size_t i = 0; i < d; ++i) s += double{scale} * q[r * d + i] * data_.K(t, h, i);
      scores.push_back(s);
      m = std::max(m, s);
    }
    std::vector<double> out(d, 0.0);
    double l = 0.0;
    for (size_t j = 0; j < kept.size(); ++j) {
      const double p = std::exp(scores[j] - m);
      l += p;
      for (size_t i = 0; i < d; ++i) out[i] += p * data_.V(kept[j], h, i);
    }
    for (double& x : out) x /= l;
    return out;
  }

  // Decisions that rested on scores closer than f32 can tell apart.
  size_t near_ties() const { return near_ties_; }
  const RefHead& head(size_t h) const { return heads_[h]; }

 private:
  void Update(RefToken* tok, double w) {
    switch (c_.retention) {
      case COVATTN_RETENTION_EMA:
        tok->score = double{c_.retention_decay} * tok->score + w;
        break;
      case COVATTN_RETENTION_H2O:
        tok->score += w;
        break;
      default:
        tok->score = w;
    }
  }

  bool NearTie(double a, double b) {
    const double diff = std::fabs(a - b);
    const bool near = diff != 0.0 && diff < 1e-4 * std::max(1.0, std::fabs(a));
    near_ties_ += near;
    return near;
  }

  // Takes a free slot, or displaces the lowest-scored resident (the oldest
  // of equal scores) when the newcomer scores at least as high.
  void Offer(RefHead* head, const RefToken& tok) {
    if (head->retained.size() < c_.n_retained) {
      head->retained.push_back(tok);
      return;
    }
    if (head->retained.empty()) return;
    size_t victim = 0;
    for (size_t i = 1; i < head->retained.size(); ++i) {
      const RefToken& a = head->retained[i];
      const RefToken& b = head->retained[victim];
      if (a.score < b.score || (a.score == b.score && a.t < b.t)) victim = i;
    }
    for (size_t i = 0; i < head->retained.size(); ++i) {
      if (i != victim) NearTie(head->retained[i].score, head->retained[victim].score);
    }
    NearTie(tok.score, head->retained[victim].score);
    if (tok.score >= head->retained[victim].score) head->retained[victim] = tok;
  }

  covattn_cache_config c_;
  const TestCache& data_;
  size_t group_;
  std::vector<RefHead> heads_;
  size_t near_ties_ = 0;
};

covattn_cache_config RetentionConfig(uint32_t retention, float decay, size_t retained) {
  covattn_cache_config c = Config(2, 16, 2, 6, 0);
  c.summary = COVATTN_SUMMARY_NONE;
  c.n_retained = retained;
  c.retention = retention;
  c.retention_decay = decay;
  return c;
}

// Appends tokens one at a time or in small blocks, decodes after each
// append and (when `observe`) folds the decode into the scores; checks the
// decode against the model's exact tokens every step.
void RunAgainstModel(const covattn_cache_config& config, bool observe, uint64_t seed) {
  const size_t heads = config.n_kv_heads, dim = config.head_dim, group = 2, n_q = heads * group;
  const size_t n = 160;
  Rng rng(seed);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, n, heads, dim);
  data.FillRandom(rng);
  // Sharp queries (sigma about 2): a few tokens draw most of the weight.
  std::vector<std::vector<float>> queries;
  for (size_t t = 0; t < n; ++t) queries.push_back(RandomQueries(rng, n_q * dim, 2.0));
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  ForEachTarget([&] {
    CachePtr cache = MakeCache(config);
    RetentionModel model(config, data, group);
    std::vector<uint8_t> scratch = Scratch(cache.get(), n_q);
    Rng blocks(seed + 1);
    size_t worst_step = 0;
    double worst = 0.0;
    for (size_t t = 0; t < n;) {
      const size_t m = std::min(n - t, blocks.Uniform(0, 1) < 0.8 ? size_t{1} : size_t{5});
      const covattn_kv_cache block = Slice(data.view(), t, m);
      REQUIRE(covattn_cache_append(cache.get(), &block, scratch.data(), scratch.size()) ==
              COVATTN_OK);
      for (size_t i = 0; i < m; ++i) model.Append(t + i);
      t += m;
      const std::vector<float>& q = queries[t - 1];
      std::vector<float> out(n_q * dim), log_z(n_q);
      const covattn_cache_diagnostics diag{nullptr, nullptr, log_z.data()};
      REQUIRE(covattn_cache_decode(cache.get(), q.data(), n_q, 0.0f, out.data(), &diag,
                                   scratch.data(), scratch.size()) == COVATTN_OK);
      for (size_t r = 0; r < n_q; ++r) {
        const std::vector<double> ref = model.Attend(q, scale, r, t);
        for (size_t i = 0; i < dim; ++i) {
          const double err = std::fabs(out[r * dim + i] - ref[i]);
          if (err > worst) worst = err, worst_step = t;
        }
      }
      if (!observe) continue;
      REQUIRE(covattn_cache_observe(cache.get(), q.data(), n_q, 0.0f, log_z.data(), scratch.data(),
                                    scratch.size()) == COVATTN_OK);
      model.Observe(q, scale, log_z);
    }
    INFO("worst error at token " << worst_step);
    CHECK(worst < 2e-5);
    REQUIRE(model.near_ties() == 0);  // otherwise the seed decides nothing
    covattn_cache_info info;
    REQUIRE(covattn_cache_info_get(cache.get(), &info) == COVATTN_OK);
    size_t kept = 0;
    for (size_t h = 0; h < heads; ++h) {
      kept += model.head(h).window.size() + model.head(h).retained.size() + config.n_sinks;
    }
    CHECK(info.n_exact == kept);
    CHECK(info.n_dropped == n * heads - kept);
  });
}

}  // namespace

TEST_CASE("EMA, H2O and TOVA keep the tokens the double model of the policy keeps") {
  struct Case {
    uint32_t retention;
    float decay;
  };
  for (const Case& c : {Case{COVATTN_RETENTION_EMA, 0.0f}, Case{COVATTN_RETENTION_EMA, 0.5f},
                        Case{COVATTN_RETENTION_H2O, 0.0f}, Case{COVATTN_RETENTION_TOVA, 0.0f}}) {
    INFO("retention " << c.retention << " decay " << c.decay);
    covattn_cache_config config = RetentionConfig(c.retention, c.decay, 5);
    if (c.decay == 0.0f) {
      // What the cache runs with (0 means 0.9) is what the model follows.
      CachePtr probe = MakeCache(config);
      covattn_cache_info info;
      REQUIRE(covattn_cache_info_get(probe.get(), &info) == COVATTN_OK);
      CHECK(info.config.retention_decay == 0.9f);
      config.retention_decay = info.config.retention_decay;
    }
    RunAgainstModel(config, /*observe=*/true, 11 + c.retention);
  }
}

TEST_CASE("a cache that is never observed keeps the most recently evicted tokens (FIFO)") {
  covattn_cache_config config = RetentionConfig(COVATTN_RETENTION_EMA, 0.9f, 5);
  RunAgainstModel(config, /*observe=*/false, 21);
  // The same tokens as a window of window + n_retained.
  const size_t heads = 2, dim = 16, n_q = 4, n = 90;
  Rng rng(22);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, n, heads, dim);
  data.FillRandom(rng);
  covattn_cache_config wide = config;
  wide.window += wide.n_retained;
  wide.n_retained = 0;
  ForEachTarget([&] {
    CachePtr a = MakeCache(config), b = MakeCache(wide);
    AppendAll(a.get(), data, 3);
    AppendAll(b.get(), data, 4);
    const std::vector<float> q = RandomQueries(rng, n_q * dim, 1.0);
    const Decoded ra = Decode(a.get(), q, n_q, dim), rb = Decode(b.get(), q, n_q, dim);
    for (size_t i = 0; i < ra.out.size(); ++i) CHECK(ra.out[i] == doctest::Approx(rb.out[i]));
  });
}

TEST_CASE("retention with outlier slots and a summary: the pipeline and its counts") {
  // Tokens the retained slots pass on go to the outlier slots, then to the
  // summary; every token row is in exactly one place.
  const size_t heads = 2, dim = 16, group = 2, n_q = heads * group, n = 300;
  covattn_cache_config config = Config(heads, dim, 2, 8, 3);
  config.n_retained = 4;
  Rng rng(31);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, n, heads, dim);
  data.FillRandom(rng);
  ForEachTarget([&] {
    CachePtr cache = MakeCache(config);
    std::vector<uint8_t> scratch = Scratch(cache.get(), n_q);
    for (size_t t = 0; t < n; t += 10) {
      Append(cache.get(), data, t, 10);
      const std::vector<float> q = RandomQueries(rng, n_q * dim, 2.0);
      const Decoded r = Decode(cache.get(), q, n_q, dim);
      REQUIRE(r.status == COVATTN_OK);
      for (float share : r.share) CHECK((share >= 0.0f && share <= 1.0f));
      REQUIRE(covattn_cache_observe(cache.get(), q.data(), n_q, 0.0f, r.log_z.data(),
                                    scratch.data(), scratch.size()) == COVATTN_OK);
    }
    covattn_cache_info info;
    REQUIRE(covattn_cache_info_get(cache.get(), &info) == COVATTN_OK);
    CHECK(info.n_exact == heads * (2 + 8 + 4 + 3));
    CHECK(info.n_summarized + info.n_exact == n * heads);
    CHECK(info.n_dropped == 0);
  });
}

TEST_CASE("observe without retained slots checks its arguments and changes nothing") {
  const size_t heads = 2, dim = 16, n_q = 4;
  CallerCache c(Config(heads, dim, 2, 6, 2));
  Rng rng(41);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 60, heads, dim);
  data.FillRandom(rng);
  Append(c.cache, data, 0, 60);
  const std::vector<float> q = RandomQueries(rng, n_q * dim, 1.0);
  const Decoded r = Decode(c.cache, q, n_q, dim);
  std::vector<uint8_t> scratch = Scratch(c.cache, n_q);
  const std::vector<uint8_t> before = c.memory;
  CHECK(covattn_cache_observe(c.cache, q.data(), n_q, 0.0f, r.log_z.data(), scratch.data(),
                              scratch.size()) == COVATTN_OK);
  CHECK(covattn_cache_observe(c.cache, q.data(), 3, 0.0f, r.log_z.data(), scratch.data(),
                              scratch.size()) == COVATTN_ERR_HEAD_MISMATCH);
  CHECK(c.memory == before);
}

TEST_CASE("bad observe calls have their statuses and leave the cache's memory as it was") {
  const size_t heads = 2, dim = 16, n_q = 4;
  covattn_cache_config config = Config(heads, dim, 1, 4, 0);
  config.n_retained = 3;
  config.retention = COVATTN_RETENTION_H2O;
  CallerCache c(config);
  Rng rng(51);
  TestCache data(COVATTN_F32, Layout::kTokenMajor, 40, heads, dim);
  data.FillRandom(rng);
  Append(c.cache, data, 0, 40);
  std::vector<float> q = RandomQueries(rng, n_q * dim, 1.0);
  const Decoded r = Decode(c.cache, q, n_q, dim);
  std::vector<float> log_z = r.log_z;
  std::vector<uint8_t> scratch = Scratch(c.cache, n_q);
  const std::vector<uint8_t> before = c.memory;
  auto observe = [&](covattn_cache* cache, const float* qp, size_t n, float scale, const float* lz,
                     void* s, size_t bytes) {
    const covattn_status status = covattn_cache_observe(cache, qp, n, scale, lz, s, bytes);
    CHECK(c.memory == before);
    return status;
  };
  void* sp = scratch.data();
  const size_t sb = scratch.size();
  CHECK(observe(nullptr, q.data(), n_q, 0.0f, log_z.data(), sp, sb) == COVATTN_ERR_NULL_POINTER);
  CHECK(observe(c.cache, nullptr, n_q, 0.0f, log_z.data(), sp, sb) == COVATTN_ERR_NULL_POINTER);
  CHECK(observe(c.cache, q.data(), n_q, 0.0f, nullptr, sp, sb) == COVATTN_ERR_NULL_POINTER);
  CHECK(observe(c.cache, q.data(), 0, 0.0f, log_z.data(), sp, sb) ==
        COVATTN_ERR_INVALID_HEAD_COUNT);
  CHECK(observe(c.cache, q.data(), 3, 0.0f, log_z.data(), sp, sb) == COVATTN_ERR_HEAD_MISMATCH);
  CHECK(observe(c.cache, q.data(), n_q, INFINITY, log_z.data(), sp, sb) ==
        COVATTN_ERR_INVALID_SCALE);
  CHECK(observe(c.cache, q.data(), n_q, 0.0f, log_z.data(), nullptr, sb) ==
        COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(observe(c.cache, q.data(), n_q, 0.0f, log_z.data(), sp, 8) ==
        COVATTN_ERR_SCRATCH_TOO_SMALL);
  CHECK(observe(c.cache, q.data(), n_q, 0.0f, log_z.data(), c.memory.data(), sb) ==
        COVATTN_ERR_ALIASING);
  CHECK(observe(c.cache, reinterpret_cast<float*>(scratch.data()), n_q, 0.0f, log_z.data(), sp,
                sb) == COVATTN_ERR_ALIASING);
  q[5] = NAN;
  CHECK(observe(c.cache, q.data(), n_q, 0.0f, log_z.data(), sp, sb) == COVATTN_ERR_NONFINITE);
  q[5] = 0.5f;
  for (const float bad : {NAN, INFINITY}) {
    log_z[2] = bad;
    CHECK(observe(c.cache, q.data(), n_q, 0.0f, log_z.data(), sp, sb) == COVATTN_ERR_NONFINITE);
  }
  // A row that saw nothing (log Z = -inf) adds nothing: under H2O the
  // scores stay as they were.
  std::fill(log_z.begin(), log_z.end(), -INFINITY);
  CHECK(observe(c.cache, q.data(), n_q, 0.0f, log_z.data(), sp, sb) == COVATTN_OK);
}
