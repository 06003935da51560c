// Links against an installed covattn and decodes a small cache.
#include <covattn/covattn.hpp>
#include <cstdio>
#include <vector>

int main() {
  const size_t dim = 16, tokens = 100;
  std::vector<float> k(tokens * dim, 0.25f), v(tokens * dim, 0.5f), q(dim, 1.0f), out(dim);
  const covattn_kv_cache kv{COVATTN_F32, k.data(), v.data(), tokens, 1,      dim,
                            dim,         dim,      dim,      dim,    nullptr};
  covattn::Attention attention;
  attention.Decode(kv, q.data(), 1, out.data());
  std::printf("covattn %s on %s: out[0] = %g\n", covattn_version(), covattn_target_name(), out[0]);
  return out[0] == 0.5f ? 0 : 1;
}
