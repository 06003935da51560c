#include "cli.h"

#include <cmath>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "covattn/covattn.h"
#include "evaluate.h"
#include "methods.h"
#include "model_mode.h"
#include "model_report.h"
#include "options.h"
#include "progress.h"
#include "qkv.h"
#include "report.h"
#include "svg.h"
#include "thread_pool.h"
#include "workloads.h"

namespace covattn_compare {
namespace {

constexpr int kExitOk = 0, kExitFailure = 1, kExitUsage = 2;

std::string SigmaText(double sigma) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", sigma);
  return buffer;
}

// One series at every --budget, a series of its own per budget when there
// are several (the label says which).
bool EvaluateAtBudgets(Series& series, const Options& options, ThreadPool& pool,
                       const ProgressFn& progress, std::vector<Measurement>* results,
                       std::string* error) {
  const std::string label = series.label;
  const size_t n = options.budgets.size();
  for (size_t i = 0; i < n; ++i) {
    Options at = options;
    at.budget = options.budgets[i];
    if (n > 1) series.label = label + ", budget " + std::to_string(at.budget);
    const ProgressFn report = [&](double f, const std::string& what) {
      progress((double(i) + f) / double(n), what);
    };
    const size_t first = results->size();
    if (!EvaluateSeries(series, at, pool, report, results, error)) {
      *error = series.label + ": " + *error;
      return false;
    }
    for (size_t r = first; r < results->size(); ++r) (*results)[r].budget = at.budget;
  }
  return true;
}

// Runs every synthetic series: one generated layer per (workload, head_dim),
// queries of each sharpness drawn against it.
bool RunSynthetic(const Options& options, ThreadPool& pool, Progress& progress,
                  std::vector<Measurement>* results, std::string* error) {
  // The sharpness of a workload's series: --sigma, or the workload's own.
  auto sigmas = [&options](covattn_tools::Workload w) {
    return options.sigmas_given ? options.sigmas
                                : std::vector<double>{covattn_tools::NaturalSigma(w)};
  };
  size_t n_series = 0;
  for (covattn_tools::Workload w : options.workloads) {
    n_series += options.head_dims.size() * sigmas(w).size();
  }
  size_t index = 0;
  for (covattn_tools::Workload workload : options.workloads) {
    for (size_t dim : options.head_dims) {
      const std::string name = covattn_tools::WorkloadName(workload);
      progress.Update(double(index) / n_series,
                      "generating " + name + ", d=" + std::to_string(dim));
      covattn_tools::WorkloadSpec spec;
      spec.workload = workload;
      spec.n_tokens = options.contexts.back();
      spec.n_kv_heads = options.kv_heads;
      spec.n_q_heads = options.kv_heads * options.group;
      spec.head_dim = dim;
      spec.sigma = sigmas(workload).front();
      spec.seed = options.seed;
      const covattn_tools::Layer layer = covattn_tools::MakeLayer(spec);

      Series series;
      series.workload = name;
      series.dim = dim;
      series.n_kv_heads = options.kv_heads;
      series.group = options.group;
      series.n_tokens = layer.n_tokens;
      series.contexts = options.contexts;
      series.k.assign(options.kv_heads, std::vector<float>(layer.n_tokens * dim));
      series.v.assign(options.kv_heads, std::vector<float>(layer.n_tokens * dim));
      for (size_t t = 0; t < layer.n_tokens; ++t) {
        for (size_t h = 0; h < options.kv_heads; ++h) {
          const size_t from = (t * options.kv_heads + h) * dim;
          std::copy_n(layer.k.data() + from, dim, series.k[h].data() + t * dim);
          std::copy_n(layer.v.data() + from, dim, series.v[h].data() + t * dim);
        }
      }
      for (double sigma : sigmas(workload)) {
        series.sigma = sigma;
        series.label = name + ", d=" + std::to_string(dim) + ", sigma=" + SigmaText(sigma);
        // The same query directions at every context (rescaled to the
        // sharpness over that context), so that curves are not noisier than
        // the methods.
        const size_t group = options.group, n_error = options.queries;
        const uint64_t seed = options.seed * 1000003 + 17;
        const std::vector<size_t>& contexts = series.contexts;
        series.queries = [&layer, &contexts, sigma, seed, group, n_error, dim](
                             size_t i, size_t h, std::vector<float>* timing,
                             std::vector<float>* err) {
          const std::vector<float> q = covattn_tools::SharpQueries(
              layer, h, std::max(group, n_error), contexts[i], sigma, seed + 7919 * h);
          timing->assign(q.begin(), q.begin() + group * dim);
          err->assign(q.begin(), q.begin() + n_error * dim);
        };
        const double base = double(index);
        const ProgressFn report = [&](double f, const std::string& label) {
          progress.Update((base + f) / n_series, label);
        };
        if (!EvaluateAtBudgets(series, options, pool, report, results, error)) return false;
        ++index;
      }
    }
  }
  return true;
}

bool RunQkv(const Options& options, ThreadPool& pool, Progress& progress,
            std::vector<Measurement>* results, std::string* error) {
  std::vector<QkvFiles> layers;
  if (!FindQkvFiles(options, &layers, error)) return false;
  for (size_t i = 0; i < layers.size(); ++i) {
    progress.Update(double(i) / layers.size(), "reading layer " + std::to_string(layers[i].layer));
    Series series;
    if (!LoadQkvLayer(layers[i], options, &series, error)) return false;
    const ProgressFn report = [&](double f, const std::string& label) {
      progress.Update((double(i) + f) / layers.size(), label);
    };
    if (!EvaluateAtBudgets(series, options, pool, report, results, error)) return false;
  }
  return true;
}

// --model: its own results, table and files.
int ModelMain(const Options& options, const RunInfo& info, std::FILE* out, std::FILE* err) {
  ModelResult result;
  std::string error;
  bool ok = false;
  try {
    Progress progress(err, options.progress);
    ok = RunModel(options, progress, &result, &error);
    progress.Finish();
  } catch (const std::bad_alloc&) {
    error = "out of memory (try fewer --max-tokens)";
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (ok) {
    WriteModelTable(out, info, options, result);
    std::fflush(out);
    ok = !options.write_files || WriteModelFiles(info, options, result, &error);
  }
  if (!ok) {
    std::fprintf(err, "covattn-compare: error: %s\n", error.c_str());
    return kExitFailure;
  }
  if (options.write_files) {
    std::fprintf(err, "covattn-compare: wrote %s, %s, %s\n", options.csv_path.c_str(),
                 options.json_path.c_str(), options.svg_path.c_str());
  }
  return kExitOk;
}

}  // namespace

int CompareMain(int argc, const char* const* argv, std::FILE* out, std::FILE* err) {
  Options options;
  std::string error;
  switch (ParseOptions(argc, argv, &options, &error)) {
    case ParseOutcome::kHelp:
      std::fputs(UsageText().c_str(), out);
      return kExitOk;
    case ParseOutcome::kVersion:
      std::fprintf(out, "covattn-compare %s (oneDNN peer: %s)\n", covattn_version(),
                   HaveOneDnn() ? "yes" : "no");
      return kExitOk;
    case ParseOutcome::kUsageError:
      std::fprintf(err, "covattn-compare: %s\n", error.c_str());
      return kExitUsage;
    case ParseOutcome::kRun:
      break;
  }
  // Budgets that cannot work at a requested head_dim are usage errors too
  // (with --qkv, head_dim is known only once the files are read).
  if (options.qkv.empty() && options.model.empty()) {
    for (size_t dim : options.head_dims) {
      for (size_t budget : options.budgets) {
        Options at = options;
        at.budget = budget;
        for (Method method : options.methods) {
          MethodPlan plan;
          if (!PlanMethod(method, at, dim, &plan, &error)) {
            std::fprintf(err, "covattn-compare: %s\n", error.c_str());
            return kExitUsage;
          }
        }
      }
    }
  }

  RunInfo info;
  info.tool_version = covattn_version();
  info.target = covattn_target_name();
  info.cpu = CpuName();
  info.mode = options.qkv.empty() ? "synthetic" : "npy";
  if (!options.model.empty()) {
    info.mode = "model";
    return ModelMain(options, info, out, err);
  }

  std::vector<Measurement> results;
  bool ok = false;
  try {
    ThreadPool pool(options.threads);
    Progress progress(err, options.progress);
    ok = options.qkv.empty() ? RunSynthetic(options, pool, progress, &results, &error)
                             : RunQkv(options, pool, progress, &results, &error);
    progress.Finish();
  } catch (const std::bad_alloc&) {
    ok = false;
    error = "out of memory (try shorter --contexts or fewer heads)";
  } catch (const std::exception& e) {
    ok = false;
    error = e.what();
  }
  if (!ok) {
    std::fprintf(err, "covattn-compare: error: %s\n", error.c_str());
    return kExitFailure;
  }

  WriteTable(out, info, options, results);
  std::fflush(out);
  if (options.write_files) {
    const std::string title = "covattn-compare " + info.tool_version + " | " + info.cpu +
                              " | target " + info.target + " | " + std::to_string(options.threads) +
                              " thread" + (options.threads == 1 ? "" : "s");
    if (!WriteCsv(options.csv_path, info, options, results, &error) ||
        !WriteJson(options.json_path, info, options, results, &error) ||
        !WriteTextFile(options.svg_path, RenderSvg(results, title), &error)) {
      std::fprintf(err, "covattn-compare: error: %s\n", error.c_str());
      return kExitFailure;
    }
    std::fprintf(err, "covattn-compare: wrote %s, %s, %s\n", options.csv_path.c_str(),
                 options.json_path.c_str(), options.svg_path.c_str());
  }
  return kExitOk;
}

}  // namespace covattn_compare
