#include "checkpoint.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>

#include "covattn/covattn.h"

namespace covattn_model {
namespace {

// llama2.c's newer export formats start with this uint32 ("ak42"), then a
// format version; run.c reads only the legacy one.
constexpr uint32_t kExportMagic = 0x616b3432u;
constexpr const char* kFieldNames[7] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                                        "n_kv_heads", "vocab_size", "seq_len"};

// One tensor of the file: `per_layer` values, `repeats` times (the layers).
struct Segment {
  const char* name;
  uint64_t repeats, per_layer;
};

enum SegmentIndex {
  kEmbedding,
  kRmsAtt,
  kWq,
  kWk,
  kWv,
  kWo,
  kRmsFfn,
  kW1,
  kW2,
  kW3,
  kRmsFinal,
  kFreqReal,
  kFreqImag,
  kClassifier,
  kSegments
};

// The tensors in file order; the classifier has no values when shared.
void FileSegments(const ModelConfig& c, Segment segments[kSegments]) {
  const uint64_t d = c.dim, hidden = c.hidden_dim, kv = c.kv_dim(), layers = c.n_layers;
  const uint64_t vocab = c.vocab_size, freq = uint64_t{c.seq_len} * (c.head_dim() / 2);
  segments[kEmbedding] = {"token_embedding_table", 1, vocab * d};
  segments[kRmsAtt] = {"rms_att_weight", layers, d};
  segments[kWq] = {"wq", layers, d * d};
  segments[kWk] = {"wk", layers, kv * d};
  segments[kWv] = {"wv", layers, kv * d};
  segments[kWo] = {"wo", layers, d * d};
  segments[kRmsFfn] = {"rms_ffn_weight", layers, d};
  segments[kW1] = {"w1", layers, hidden * d};
  segments[kW2] = {"w2", layers, d * hidden};
  segments[kW3] = {"w3", layers, hidden * d};
  segments[kRmsFinal] = {"rms_final_weight", 1, d};
  segments[kFreqReal] = {"freq_cis_real", 1, freq};
  segments[kFreqImag] = {"freq_cis_imag", 1, freq};
  segments[kClassifier] = {"wcls", 1, c.shared_classifier ? 0 : vocab * d};
}

bool MulU64(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > UINT64_MAX / a) return false;
  *out = a * b;
  return true;
}

bool AddU64(uint64_t a, uint64_t b, uint64_t* out) {
  if (b > UINT64_MAX - a) return false;
  *out = a + b;
  return true;
}

uint32_t LittleEndianU32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

void ReadHeaderFields(const uint8_t* p, int32_t fields[7]) {
  for (int i = 0; i < 7; ++i) {
    const uint32_t bits = LittleEndianU32(p + 4 * i);
    std::memcpy(&fields[i], &bits, 4);
  }
}

bool HostIsLittleEndian() {
  const uint32_t one = 1;
  uint8_t first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

// The message for a file that starts with llama2.c's newer export magic.
bool IsNewerExport(const uint8_t* p, size_t size, std::string* what) {
  if (size < 8 || LittleEndianU32(p) != kExportMagic) return false;
  *what = "a llama2.c export of format version " + std::to_string(LittleEndianU32(p + 4)) +
          " (magic \"ak42\"); only the legacy format run.c reads (export version 0) is supported";
  return true;
}

std::string SizeMismatch(uint64_t file_bytes, uint64_t expected, const ModelConfig& c) {
  std::string shape = "dim " + std::to_string(c.dim) + ", hidden_dim " +
                      std::to_string(c.hidden_dim) + ", " + std::to_string(c.n_layers) +
                      " layers, " + std::to_string(c.n_heads) + "/" + std::to_string(c.n_kv_heads) +
                      " heads, vocab " + std::to_string(c.vocab_size) + ", seq_len " +
                      std::to_string(c.seq_len) +
                      (c.shared_classifier ? ", shared classifier" : ", separate classifier");
  const std::string what = file_bytes < expected ? "truncated: " : "size mismatch: ";
  return what + "the header (" + shape + ") implies " + std::to_string(expected) +
         " bytes, the file has " + std::to_string(file_bytes);
}

// Points the checkpoint's tensors into its weights, and checks that every
// value is finite (naming the first that is not).
bool MapWeights(Checkpoint* ck, std::string* what) {
  Segment segments[kSegments];
  FileSegments(ck->config, segments);
  const float* base = ck->weights.data();
  const float* at[kSegments];
  size_t offset = 0;
  for (int s = 0; s < kSegments; ++s) {
    at[s] = base + offset;
    const size_t count = static_cast<size_t>(segments[s].repeats * segments[s].per_layer);
    // The RoPE tables are skipped by run.c too: whatever they hold is unused.
    const bool used = s != kFreqReal && s != kFreqImag;
    for (size_t i = 0; used && i < count; ++i) {
      if (std::isfinite(at[s][i])) continue;
      const size_t layer = i / segments[s].per_layer, index = i % segments[s].per_layer;
      *what = std::string("non-finite weight ") + (std::isnan(at[s][i]) ? "NaN" : "infinity") +
              " in " + segments[s].name +
              (segments[s].repeats > 1 ? " of layer " + std::to_string(layer) : "") +
              " at element " + std::to_string(index);
      return false;
    }
    offset += count;
  }
  const ModelConfig& c = ck->config;
  ck->token_embedding = at[kEmbedding];
  ck->rms_final = at[kRmsFinal];
  ck->classifier = c.shared_classifier ? at[kEmbedding] : at[kClassifier];
  ck->layers.resize(c.n_layers);
  for (size_t l = 0; l < c.n_layers; ++l) {
    auto layer_of = [&](int s) { return at[s] + l * segments[s].per_layer; };
    ck->layers[l] =
        LayerWeights{layer_of(kRmsAtt), layer_of(kWq), layer_of(kWk), layer_of(kWv), layer_of(kWo),
                     layer_of(kRmsFfn), layer_of(kW1), layer_of(kW2), layer_of(kW3)};
  }
  return true;
}

// Allocates the weights (size checked against the data by the caller) and
// fills them with `fill`, then maps them.
template <class Fill>
bool LoadWeights(const ModelConfig& config, uint64_t n_floats, Fill fill, Checkpoint* ck,
                 std::string* what) {
  try {
    ck->weights.resize(static_cast<size_t>(n_floats));
  } catch (const std::bad_alloc&) {
    *what = "not enough memory for " + std::to_string(n_floats) + " weights";
    return false;
  }
  if (!fill(ck->weights.data())) {
    *what = "read error in the weights";
    return false;
  }
  if (!HostIsLittleEndian()) {
    for (float& w : ck->weights) {
      uint8_t b[4];
      std::memcpy(b, &w, 4);
      const uint32_t bits = LittleEndianU32(b);
      std::memcpy(&w, &bits, 4);
    }
  }
  ck->config = config;
  return MapWeights(ck, what);
}

// Checks the header bytes against the data size; *n_floats is the weight count.
bool CheckHeader(const uint8_t* data, size_t available, uint64_t total_bytes, ModelConfig* config,
                 uint64_t* n_floats, std::string* what) {
  if (IsNewerExport(data, available, what)) return false;
  if (total_bytes < kCheckpointHeaderBytes) {
    *what = "truncated: " + std::to_string(total_bytes) + " bytes, shorter than the " +
            std::to_string(kCheckpointHeaderBytes) + "-byte header";
    return false;
  }
  int32_t fields[7];
  ReadHeaderFields(data, fields);
  if (!ParseCheckpointHeader(fields, config, n_floats, what)) return false;
  const uint64_t expected = kCheckpointHeaderBytes + 4 * *n_floats;  // no overflow: see Parse
  if (total_bytes != expected) {
    *what = SizeMismatch(total_bytes, expected, *config);
    return false;
  }
  return true;
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

}  // namespace

bool ParseCheckpointHeader(const int32_t fields[7], ModelConfig* config, uint64_t* n_floats,
                           std::string* error) {
  uint64_t v[7];
  for (int i = 0; i < 7; ++i) {
    int64_t x = fields[i];
    // vocab_size < 0: separate classifier (INT32_MIN has no int32 magnitude).
    if (i == 5 && x < 0 && x != INT32_MIN) x = -x;
    if (x <= 0) {
      *error = std::string("header field ") + kFieldNames[i] + " is " + std::to_string(fields[i]) +
               (i == 5 ? "; it must not be 0" : "; it must be positive");
      return false;
    }
    v[i] = static_cast<uint64_t>(x);
  }
  ModelConfig c;
  c.dim = v[0], c.hidden_dim = v[1], c.n_layers = v[2], c.n_heads = v[3], c.n_kv_heads = v[4];
  c.vocab_size = v[5], c.seq_len = v[6];
  c.shared_classifier = fields[5] > 0;
  if (c.dim % c.n_heads != 0) {
    *error = "dim " + std::to_string(c.dim) + " is not a multiple of n_heads " +
             std::to_string(c.n_heads);
    return false;
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    *error = "n_heads " + std::to_string(c.n_heads) + " is not a multiple of n_kv_heads " +
             std::to_string(c.n_kv_heads);
    return false;
  }
  if (c.head_dim() % 2 != 0) {
    *error = "head_dim " + std::to_string(c.head_dim()) +
             " (dim / n_heads) is odd; RoPE rotates "
             "pairs of dimensions";
    return false;
  }
  if (c.head_dim() > COVATTN_MAX_HEAD_DIM) {
    *error = "head_dim " + std::to_string(c.head_dim()) + " exceeds covattn's limit of " +
             std::to_string(COVATTN_MAX_HEAD_DIM);
    return false;
  }
  // A per-layer size is a product of two int32 fields and cannot overflow;
  // the layer count, the sum and the byte size can.
  Segment segments[kSegments];
  FileSegments(c, segments);
  uint64_t total = 0, bytes = 0;
  bool ok = true;
  for (const Segment& s : segments) {
    uint64_t count = 0;
    ok = ok && MulU64(s.repeats, s.per_layer, &count) && AddU64(total, count, &total);
  }
  // The file size (header + 4 bytes per weight) must fit in 64 bits and in
  // memory.
  ok = ok && MulU64(total, 4, &bytes) && AddU64(bytes, kCheckpointHeaderBytes, &bytes) &&
       bytes <= SIZE_MAX;
  if (!ok) {
    *error = "the sizes in the header overflow (dim " + std::to_string(c.dim) + ", hidden_dim " +
             std::to_string(c.hidden_dim) + ", " + std::to_string(c.n_layers) + " layers, vocab " +
             std::to_string(c.vocab_size) + ", seq_len " + std::to_string(c.seq_len) + ")";
    return false;
  }
  *config = c;
  *n_floats = total;
  return true;
}

bool ParseCheckpoint(const std::string& name, const uint8_t* data, size_t size,
                     Checkpoint* checkpoint, std::string* error) {
  *checkpoint = Checkpoint();
  ModelConfig config;
  uint64_t n_floats = 0;
  std::string what;
  Checkpoint ck;
  const bool ok =
      CheckHeader(data, size, size, &config, &n_floats, &what) &&
      LoadWeights(
          config, n_floats,
          [&](float* dst) {
            std::memcpy(dst, data + kCheckpointHeaderBytes, static_cast<size_t>(n_floats) * 4);
            return true;
          },
          &ck, &what);
  if (!ok) {
    *error = name + ": " + what;
    return false;
  }
  ck.path = name;
  *checkpoint = std::move(ck);
  return true;
}

bool ReadCheckpoint(const std::string& path, Checkpoint* checkpoint, std::string* error) {
  *checkpoint = Checkpoint();
  auto fail = [&](const std::string& what) {
    *error = path + ": " + what;
    return false;
  };
  struct stat info;
  if (::stat(path.c_str(), &info) != 0)
    return fail(std::string("cannot open: ") + std::strerror(errno));
  if (!S_ISREG(info.st_mode)) return fail("not a regular file");
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) return fail(std::string("cannot open: ") + std::strerror(errno));
  uint8_t header[kCheckpointHeaderBytes];
  const size_t got = std::fread(header, 1, sizeof(header), file.get());
  ModelConfig config;
  uint64_t n_floats = 0;
  std::string what;
  Checkpoint ck;
  const uint64_t file_bytes = static_cast<uint64_t>(info.st_size);
  if (got < sizeof(header) && got != file_bytes) return fail("read error in the header");
  const bool ok =
      CheckHeader(header, got, file_bytes, &config, &n_floats, &what) &&
      LoadWeights(
          config, n_floats,
          [&](float* dst) {
            return std::fread(dst, 4, static_cast<size_t>(n_floats), file.get()) == n_floats;
          },
          &ck, &what);
  if (!ok) return fail(what);
  ck.path = path;
  *checkpoint = std::move(ck);
  return true;
}

}  // namespace covattn_model
