// The methods of covattn-compare --model at equal memory, counted as the
// cache reports it: covattn_cache_size of one KV head's cache
// (CacheBytesPerKvHead, through model/bounded_cache.h). With --budget B exact tokens and --sinks S
// (d = head_dim):
//   hybrid    S sinks + a window of B - S + the summary: H bytes;
//   window    S sinks + the smallest window whose cache takes at least H
//             bytes (the baseline gets slightly more, never less), evicted
//             tokens dropped;
//   outliers  S sinks + --outliers O slots (default B / 2) + the largest
//             window whose cache takes at most H bytes, the rest summarised;
//   h2o       S sinks + pairs of a window slot and an H2O-retained slot in
//             at most H bytes, evicted tokens dropped;
//   ema-ring  the same with EMA retention (decay 0.9) and the compact
//             summary with run.c's RoPE planes (methods.h PlanRetention);
//   readout   the summary alone (its own bytes, not H);
//   exact     every token, 2 d 4 bytes each.
// covattn_cache_size counts persistent bytes only (the work memory is the
// caller's scratch). With --state-bytes the bytes are instead those of the
// synthetic modes' accounting (methods.h: tokens, the summary, the
// whitening).
#ifndef COVATTN_TOOLS_COMPARE_MODEL_METHODS_H_
#define COVATTN_TOOLS_COMPARE_MODEL_METHODS_H_

#include <cstddef>
#include <string>
#include <vector>

#include "model/attention_methods.h"
#include "options.h"

namespace covattn_compare {

// The bytes of a cache of this configuration with one KV head of head_dim d.
bool CacheBytesPerKvHead(const covattn_cache_config& config, size_t d, size_t* bytes,
                         std::string* error);

// One method at one budget (exact: the budget is ignored). The spec's key is
// MethodKey(method); its name says the budget and the exact tokens.
bool PlanModelMethod(Method method, size_t budget, const Options& options, size_t d,
                     covattn_model::MethodSpec* spec, std::string* error);

// The methods --model runs: --methods (onednn is not run inside a model),
// by default exact, window, hybrid and outliers.
std::vector<Method> ModelMethods(const Options& options);

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_MODEL_METHODS_H_
