#include "qkv_dump.h"

#include <filesystem>
#include <system_error>

namespace covattn_model {
namespace {

namespace fs = std::filesystem;

// The layer number of "layer<N>_{q,k,v}.npy", or -1 for other names.
long LayerOfFileName(const std::string& name) {
  const std::string prefix = "layer";
  if (name.size() < prefix.size() + 7 || name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(name.size() - 4, 4, ".npy") != 0 || name[name.size() - 6] != '_') {
    return -1;
  }
  const char which = name[name.size() - 5];
  if (which != 'q' && which != 'k' && which != 'v') return -1;
  const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - 6);
  if (digits.empty() || digits.size() > 9) return -1;
  for (char d : digits) {
    if (d < '0' || d > '9') return -1;
  }
  return std::stol(digits);
}

// q/k/v files in dir that covattn-compare would read with a dump of n_layers.
bool CheckNoForeignFiles(const fs::path& dir, size_t n_layers, std::string* error) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const long layer = LayerOfFileName(name);
    if (name == "q.npy" || name == "k.npy" || name == "v.npy" ||
        (layer >= 0 && static_cast<size_t>(layer) >= n_layers)) {
      *error = (dir / name).string() +
               ": already there, and covattn-compare --qkv would read it "
               "with this dump of " +
               std::to_string(n_layers) + " layers; use another directory";
      return false;
    }
  }
  if (ec) {
    *error = dir.string() + ": cannot list the directory: " + ec.message();
    return false;
  }
  return true;
}

}  // namespace

bool QkvDumper::Open(const std::string& dir, const ModelConfig& config, size_t n_tokens,
                     std::string* error) {
  config_ = config;
  const fs::path path(dir);
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec || !fs::is_directory(path, ec)) {
    *error = dir + ": cannot create the directory" + (ec ? ": " + ec.message() : "");
    return false;
  }
  if (!CheckNoForeignFiles(path, config.n_layers, error)) return false;
  q_.resize(config.n_layers);
  k_.resize(config.n_layers);
  v_.resize(config.n_layers);
  const size_t hd = config.head_dim();
  for (size_t l = 0; l < config.n_layers; ++l) {
    const std::string stem = (path / ("layer" + std::to_string(l) + "_")).string();
    if (!q_[l].Open(stem + "q.npy", {n_tokens, config.n_heads, hd}, error) ||
        !k_[l].Open(stem + "k.npy", {n_tokens, config.n_kv_heads, hd}, error) ||
        !v_[l].Open(stem + "v.npy", {n_tokens, config.n_kv_heads, hd}, error)) {
      return false;
    }
  }
  return true;
}

bool QkvDumper::OnLayer(const LayerActivations& a, std::string* error) {
  return q_[a.layer].Append(a.q, config_.dim, error) &&
         k_[a.layer].Append(a.k, config_.kv_dim(), error) &&
         v_[a.layer].Append(a.v, config_.kv_dim(), error);
}

bool QkvDumper::Close(std::string* error) {
  bool ok = true;
  std::string first;
  for (auto* writers : {&q_, &k_, &v_}) {
    for (covattn_compare::NpyF32Writer& w : *writers) {
      std::string e;
      if (!w.Close(&e) && ok) ok = false, first = e;
    }
  }
  if (!ok) *error = first;
  return ok;
}

}  // namespace covattn_model
