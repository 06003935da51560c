#include "model_report.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "svg.h"

namespace covattn_compare {
namespace {

std::string LayerName(size_t layer, const char* what) {
  return "layer" + std::to_string(layer) + "_" + what;
}

Record Fields(const ModelRow& row, const ModelResult& r, const RunInfo& info,
              const Options& options) {
  const double none = std::nan("");
  const bool bounded = !IsExact(row.method);
  Record f = {
      Text("model", r.path),
      Text("tokens", r.tokens),
      Number("windows", double(r.offsets.size())),
      Number("tokens_per_window", double(r.n_tokens)),
      Number("from", double(options.from)),
      Number("head_dim", double(r.config.head_dim())),
      Number("kv_heads", double(r.config.n_kv_heads)),
      Number("q_heads", double(r.config.n_heads)),
      Text("method", MethodKey(row.method)),
      Text("method_name", row.name),
      Number("budget", bounded ? double(row.budget) : none),
      Number("sinks", bounded ? double(row.sinks) : none),
      Number("window", bounded ? double(row.window) : none),
      Number("outlier_slots", bounded ? double(row.outliers) : none),
      Number("persistent_bytes_per_kv_head", double(row.persistent_bytes)),
      Number("memory_bytes", double(row.persistent_bytes * r.config.n_kv_heads)),
      Number("kl_mean", row.kl_mean),
      Number("kl_p95", row.kl_p95),
      Number("top1_agreement", row.top1_agreement),
      Number("ppl_ratio", row.ppl_ratio),
      Number("decode_seconds_per_token", row.decode_seconds_per_token),
      Number("step_seconds_per_token", row.step_seconds_per_token),
  };
  for (size_t l = 0; l < r.config.n_layers; ++l) {
    const bool have = l < row.layers.size();
    f.push_back(Number(LayerName(l, "rel_l2"), have ? row.layers[l].rel_l2_median : none));
    f.push_back(
        Number(LayerName(l, "log_z_error"), have ? row.layers[l].log_z_error_median : none));
    f.push_back(
        Number(LayerName(l, "summary_share"), have ? row.layers[l].summary_share_mean : none));
  }
  f.push_back(Text("target", info.target));
  return f;
}

std::string JsonArray(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + JsonNumber(v[i]);
  return s + "]";
}

std::string JsonMatrix(const std::vector<std::vector<double>>& m) {
  std::string s = "[";
  for (size_t i = 0; i < m.size(); ++i) s += (i ? ", " : "") + JsonArray(m[i]);
  return s + "]";
}

// "a-b" over the heads of a layer.
std::string Range(const std::vector<double>& v, int digits) {
  if (v.empty()) return "n/a";
  const auto mm = std::minmax_element(v.begin(), v.end());
  return Fixed(*mm.first, digits) + "-" + Fixed(*mm.second, digits);
}

void WriteAttention(std::FILE* out, const Options& options, const ModelResult& r) {
  std::fprintf(out,
               "\nexact attention per layer (range over query heads): score std, largest "
               "weight, mass outside sinks + window W\n");
  for (size_t l = 0; l < r.score_std.size(); ++l) {
    std::fprintf(out, "  layer %zu: score std %s, max weight %s", l,
                 Range(r.score_std[l], 2).c_str(), Range(r.max_weight[l], 2).c_str());
    for (size_t b = 0; b < r.evicted_mass.size(); ++b) {
      std::fprintf(out, ", W=%zu %s", options.budgets[b] - options.sinks,
                   Range(r.evicted_mass[b][l], 2).c_str());
    }
    std::fprintf(out, "\n");
  }
}

}  // namespace

void WriteModelTable(std::FILE* out, const RunInfo& info, const Options& options,
                     const ModelResult& r) {
  const covattn_model::ModelConfig& c = r.config;
  std::fprintf(out, "covattn-compare %s | %s | target %s\n", info.tool_version.c_str(),
               info.cpu.c_str(), info.target.c_str());
  std::fprintf(out, "%s: dim %zu, %zu layers, %zu query / %zu KV heads, head_dim %zu, vocab %zu\n",
               r.path.c_str(), c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim(),
               c.vocab_size);
  std::vector<double> bits(r.exact_bits);
  std::sort(bits.begin(), bits.end());
  std::fprintf(out,
               "tokens %s: %zu window%s of %zu tokens, positions >= %zu; exact %.3f bits/token "
               "(median); medians over windows\n",
               r.tokens.c_str(), r.offsets.size(), r.offsets.size() == 1 ? "" : "s", r.n_tokens,
               options.from, bits.empty() ? 0.0 : bits[bits.size() / 2]);
  const char* heading = "method (sinks/window/outliers/retained)";
  int width = static_cast<int>(std::strlen(heading));
  for (const ModelRow& row : r.rows) width = std::max(width, static_cast<int>(row.name.size()));
  std::fprintf(out, "\n%-*s %13s %8s %8s %7s %9s %11s\n", width, heading, "bytes/KV head",
               "kl_mean", "kl_p95", "top1", "ppl_ratio", "decode/tok");
  for (const ModelRow& row : r.rows) {
    std::fprintf(out, "%-*s %13s %8.4f %8.4f %7.4f %9.4f %11s\n", width, row.name.c_str(),
                 FormatBytes(double(row.persistent_bytes)).c_str(), row.kl_mean, row.kl_p95,
                 row.top1_agreement, row.ppl_ratio,
                 FormatSeconds(row.decode_seconds_per_token).c_str());
  }
  for (const std::string& note : r.notes) std::fprintf(out, "note: %s\n", note.c_str());
  std::fprintf(out,
               "\nper layer, against exact attention on the method's own q, k, v: "
               "rel L2 / |dlog Z| / summary share\n");
  for (const ModelRow& row : r.rows) {
    if (row.method == Method::kExact) continue;
    std::fprintf(out, "%-*s", width, row.name.c_str());
    for (size_t l = 0; l < row.layers.size(); ++l) {
      const ModelLayerRow& layer = row.layers[l];
      std::fprintf(out, "  L%zu %s %s %s", l, Sci(layer.rel_l2_median).c_str(),
                   Sci(layer.log_z_error_median).c_str(),
                   Fixed(layer.summary_share_mean, 2).c_str());
    }
    std::fprintf(out, "\n");
  }
  WriteAttention(out, options, r);
}

bool WriteModelFiles(const RunInfo& info, const Options& options, const ModelResult& r,
                     std::string* error) {
  std::vector<Record> records;
  for (const ModelRow& row : r.rows) records.push_back(Fields(row, r, info, options));
  if (!WriteTextFile(options.csv_path, CsvText(records.front(), records), error)) return false;

  const covattn_model::ModelConfig& c = r.config;
  std::string j = "{\n";
  j += "  \"tool\": \"covattn-compare\",\n";
  j += "  \"version\": " + JsonString(info.tool_version) + ",\n";
  j += "  \"cpu\": " + JsonString(info.cpu) + ",\n";
  j += "  \"target\": " + JsonString(info.target) + ",\n";
  j += "  \"mode\": \"model\",\n";
  j += "  \"command\": " + JsonString(options.command_line) + ",\n";
  j += "  \"model\": {\"path\": " + JsonString(r.path) + ", \"dim\": " + std::to_string(c.dim) +
       ", \"hidden_dim\": " + std::to_string(c.hidden_dim) +
       ", \"n_layers\": " + std::to_string(c.n_layers) +
       ", \"n_heads\": " + std::to_string(c.n_heads) +
       ", \"n_kv_heads\": " + std::to_string(c.n_kv_heads) +
       ", \"vocab_size\": " + std::to_string(c.vocab_size) +
       ", \"seq_len\": " + std::to_string(c.seq_len) + "},\n";
  std::vector<double> offsets(r.offsets.begin(), r.offsets.end());
  std::vector<double> budgets(options.budgets.begin(), options.budgets.end());
  j += "  \"tokens\": " + JsonString(r.tokens) + ",\n";
  j += "  \"window_offsets\": " + JsonArray(offsets) + ",\n";
  j += "  \"tokens_per_window\": " + std::to_string(r.n_tokens) + ",\n";
  j += "  \"from\": " + std::to_string(options.from) + ",\n";
  j += "  \"exact_bits_per_token\": " + JsonArray(r.exact_bits) + ",\n";
  j += "  \"budgets\": " + JsonArray(budgets) + ",\n";
  j += "  \"sinks\": " + std::to_string(options.sinks) + ",\n";
  j += "  \"attention\": {\"score_std\": " + JsonMatrix(r.score_std) +
       ", \"max_weight\": " + JsonMatrix(r.max_weight) + ", \"evicted_mass\": [";
  for (size_t b = 0; b < r.evicted_mass.size(); ++b) {
    j += (b ? ", " : "") + JsonMatrix(r.evicted_mass[b]);
  }
  j += "]},\n";
  j += "  \"notes\": [";
  for (size_t i = 0; i < r.notes.size(); ++i) j += (i ? ", " : "") + JsonString(r.notes[i]);
  j += "],\n";
  j += "  \"kl_mean_per_window\": {";
  for (size_t m = 0; m < r.rows.size(); ++m) {
    j += (m ? ", " : "") + JsonString(r.rows[m].name) + ": " +
         JsonArray(r.rows[m].kl_mean_per_window);
  }
  j += "},\n";
  j += "  \"measurements\": " + JsonRecords(records) + "\n}\n";
  if (!WriteTextFile(options.json_path, j, error)) return false;

  std::vector<BudgetPoint> points;
  for (const ModelRow& row : r.rows) {
    if (row.method == Method::kExact) continue;
    points.push_back({row.method, row.budget, row.kl_mean, row.kl_p95});
  }
  const std::string title = "covattn-compare --model " + r.path + " | " +
                            std::to_string(r.offsets.size()) + " x " + std::to_string(r.n_tokens) +
                            " tokens | sinks " + std::to_string(options.sinks);
  return WriteTextFile(options.svg_path, RenderBudgetSvg(points, title), error);
}

}  // namespace covattn_compare
