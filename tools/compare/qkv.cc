#include "qkv.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <system_error>

#include "covattn/covattn.h"
#include "npy.h"

namespace covattn_compare {
namespace {

namespace fs = std::filesystem;

// "layer12_k.npy" -> (12, 'k'); false for other names.
bool ParseLayerFileName(const std::string& name, long* layer, char* which) {
  const std::string prefix = "layer", suffix = ".npy";
  if (name.size() < prefix.size() + 3 + suffix.size() ||
      name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return false;
  }
  const std::string middle =
      name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  // middle = "<digits>_<q|k|v>"
  if (middle.size() < 3 || middle[middle.size() - 2] != '_') return false;
  const char c = middle.back();
  if (c != 'q' && c != 'k' && c != 'v') return false;
  const std::string digits = middle.substr(0, middle.size() - 2);
  if (digits.empty() || digits.size() > 9) return false;
  for (char d : digits) {
    if (d < '0' || d > '9') return false;
  }
  *layer = std::stol(digits);
  *which = c;
  return true;
}

// The array's shape as [tokens, heads, head_dim] (2-D arrays are one head).
bool AsTokensHeadsDim(const std::string& path, const NpyArray& a, size_t* tokens, size_t* heads,
                      size_t* dim, std::string* error) {
  if (a.shape.size() == 3) {
    *tokens = a.shape[0], *heads = a.shape[1], *dim = a.shape[2];
  } else if (a.shape.size() == 2) {
    *tokens = a.shape[0], *heads = 1, *dim = a.shape[1];
  } else {
    *error = path + ": shape " + ShapeString(a.shape) + " has " + std::to_string(a.shape.size()) +
             " dimensions; expected [tokens, heads, head_dim]";
    return false;
  }
  if (*tokens == 0 || *heads == 0 || *dim == 0) {
    *error = path + ": shape " + ShapeString(a.shape) + " is empty";
    return false;
  }
  if (*dim > COVATTN_MAX_HEAD_DIM) {
    *error = path + ": head_dim " + std::to_string(*dim) + " exceeds " +
             std::to_string(COVATTN_MAX_HEAD_DIM);
    return false;
  }
  return true;
}

bool CheckFinite(const std::string& path, const NpyArray& a, size_t heads, size_t dim,
                 std::string* error) {
  for (size_t i = 0; i < a.data.size(); ++i) {
    if (!std::isfinite(a.data[i])) {
      const size_t token = i / (heads * dim), head = (i / dim) % heads;
      *error = path + ": non-finite value " + std::to_string(a.data[i]) + " at token " +
               std::to_string(token) + ", head " + std::to_string(head) + ", dim " +
               std::to_string(i % dim);
      return false;
    }
  }
  return true;
}

}  // namespace

bool FindQkvFiles(const Options& options, std::vector<QkvFiles>* layers, std::string* error) {
  layers->clear();
  const std::string& spec = options.qkv;
  std::error_code ec;
  if (spec.find(',') != std::string::npos) {
    const std::vector<std::string> parts = SplitList(spec);
    if (parts.size() != 3) {
      *error = "--qkv " + spec + ": give a directory or three files Q,K,V";
      return false;
    }
    layers->push_back(QkvFiles{0, parts[0], parts[1], parts[2]});
  } else {
    const fs::path dir(spec);
    if (!fs::is_directory(dir, ec)) {
      *error = spec + ": not a directory (--qkv takes a directory or Q.npy,K.npy,V.npy)";
      return false;
    }
    std::map<long, QkvFiles> found;
    std::map<long, int> seen;  // bit mask of q, k, v per layer
    bool plain[3] = {false, false, false};
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      long layer;
      char which;
      if (name == "q.npy" || name == "k.npy" || name == "v.npy") {
        plain[name[0] == 'q' ? 0 : name[0] == 'k' ? 1 : 2] = true;
        continue;
      }
      if (!ParseLayerFileName(name, &layer, &which)) continue;
      QkvFiles& f = found[layer];
      f.layer = layer;
      const std::string path = (dir / name).string();
      if (which == 'q') f.q = path, seen[layer] |= 1;
      if (which == 'k') f.k = path, seen[layer] |= 2;
      if (which == 'v') f.v = path, seen[layer] |= 4;
    }
    if (ec) {
      *error = spec + ": cannot list the directory: " + ec.message();
      return false;
    }
    const bool any_plain = plain[0] || plain[1] || plain[2];
    if (any_plain && !found.empty()) {
      *error = spec + ": holds both q/k/v.npy and layer<N>_{q,k,v}.npy files; keep one naming";
      return false;
    }
    if (any_plain) {
      const char* names[3] = {"q.npy", "k.npy", "v.npy"};
      for (int i = 0; i < 3; ++i) {
        if (!plain[i]) {
          *error = (dir / names[i]).string() + ": missing (q.npy, k.npy and v.npy go together)";
          return false;
        }
      }
      layers->push_back(QkvFiles{0, (dir / "q.npy").string(), (dir / "k.npy").string(),
                                 (dir / "v.npy").string()});
    }
    for (const auto& entry : found) {
      if (seen[entry.first] != 7) {
        const char* missing = !(seen[entry.first] & 1) ? "q" : !(seen[entry.first] & 2) ? "k" : "v";
        *error = (dir / ("layer" + std::to_string(entry.first) + "_" + missing + ".npy")).string() +
                 ": missing (each layer needs q, k and v)";
        return false;
      }
      layers->push_back(entry.second);
    }
    if (layers->empty()) {
      *error = spec + ": no q.npy/k.npy/v.npy or layer<N>_{q,k,v}.npy files";
      return false;
    }
  }
  if (!options.layers.empty()) {
    std::vector<QkvFiles> chosen;
    for (size_t want : options.layers) {
      auto it = std::find_if(layers->begin(), layers->end(),
                             [&](const QkvFiles& f) { return f.layer == long(want); });
      if (it == layers->end()) {
        *error = spec + ": no layer " + std::to_string(want) + " (--layers)";
        return false;
      }
      chosen.push_back(*it);
    }
    *layers = chosen;
  }
  return true;
}

std::vector<size_t> SampleContexts(size_t n_tokens, size_t min_context, size_t positions) {
  const size_t lo = std::min(std::max<size_t>(min_context, 1), n_tokens);
  std::vector<size_t> contexts;
  if (positions <= 1 || lo == n_tokens) return {n_tokens};
  const double ratio = std::log(double(n_tokens) / double(lo));
  for (size_t i = 0; i < positions; ++i) {
    const double x = double(lo) * std::exp(ratio * double(i) / double(positions - 1));
    contexts.push_back(std::min(n_tokens, std::max(lo, static_cast<size_t>(std::llround(x)))));
  }
  contexts.back() = n_tokens;
  std::sort(contexts.begin(), contexts.end());
  contexts.erase(std::unique(contexts.begin(), contexts.end()), contexts.end());
  return contexts;
}

bool LoadQkvLayer(const QkvFiles& files, const Options& options, Series* series,
                  std::string* error) {
  NpyReadOptions read_options;
  read_options.uint16_as_bf16 = options.bf16;
  auto q = std::make_shared<NpyArray>();
  NpyArray k, v;
  NpyError npy_error;
  if (!ReadNpy(files.q, read_options, q.get(), &npy_error) ||
      !ReadNpy(files.k, read_options, &k, &npy_error) ||
      !ReadNpy(files.v, read_options, &v, &npy_error)) {
    *error = npy_error.message;
    return false;
  }
  size_t tq, hq, dq, tk, hk, dk, tv, hv, dv;
  if (!AsTokensHeadsDim(files.q, *q, &tq, &hq, &dq, error) ||
      !AsTokensHeadsDim(files.k, k, &tk, &hk, &dk, error) ||
      !AsTokensHeadsDim(files.v, v, &tv, &hv, &dv, error)) {
    return false;
  }
  if (k.shape != v.shape) {
    *error = files.v + ": shape " + ShapeString(v.shape) + " differs from " + files.k + "'s " +
             ShapeString(k.shape);
    return false;
  }
  if (tq != tk) {
    *error = files.k + ": " + std::to_string(tk) + " tokens, but " + files.q + " has " +
             std::to_string(tq);
    return false;
  }
  if (dq != dk) {
    *error = files.k + ": head_dim " + std::to_string(dk) + ", but " + files.q + " has " +
             std::to_string(dq);
    return false;
  }
  if (hq % hk != 0) {
    *error = files.q + ": " + std::to_string(hq) + " query heads are not a multiple of the " +
             std::to_string(hk) + " KV heads of " + files.k;
    return false;
  }
  if (!CheckFinite(files.q, *q, hq, dq, error) || !CheckFinite(files.k, k, hk, dk, error) ||
      !CheckFinite(files.v, v, hv, dv, error)) {
    return false;
  }

  Series& s = *series;
  s = Series();
  s.label = "layer " + std::to_string(files.layer);
  s.workload = "npy";
  s.sigma = std::nan("");
  s.layer = files.layer;
  s.dim = dk;
  s.n_kv_heads = hk;
  s.group = hq / hk;
  s.n_tokens = tk;
  s.scale = options.scale;
  s.k.assign(hk, std::vector<float>(tk * dk));
  s.v.assign(hk, std::vector<float>(tk * dk));
  for (size_t t = 0; t < tk; ++t) {
    for (size_t h = 0; h < hk; ++h) {
      std::copy_n(k.data.data() + (t * hk + h) * dk, dk, s.k[h].data() + t * dk);
      std::copy_n(v.data.data() + (t * hk + h) * dk, dk, s.v[h].data() + t * dk);
    }
  }
  s.contexts = SampleContexts(tk, options.min_context, options.positions);
  const std::vector<size_t> contexts = s.contexts;
  const size_t group = s.group, dim = dk;
  s.queries = [q, contexts, group, hq, dim](size_t index, size_t kv_head,
                                            std::vector<float>* timing, std::vector<float>* err) {
    // The query heads of KV head kv_head at the position that sees the
    // context's last token.
    const size_t position = contexts[index] - 1;
    const float* first = q->data.data() + (position * hq + kv_head * group) * dim;
    timing->assign(first, first + group * dim);
    *err = *timing;
  };
  return true;
}

}  // namespace covattn_compare
