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
//   readout   the summary alone (its own bytes, not H);
//   exact     every token, 2 d 4 bytes each.
// With --state-bytes the bytes are instead those of the state alone, by the
// synthetic modes' accounting (methods.h: tokens, the summary, the
// whitening), what covattn_cache_size will count once the append workspace
// leaves the cache (issue 9 section 3).
// h2o (sinks + heavy hitters + window, evicted tokens dropped) needs
// query-aware retention, which the cache does not have yet (issue 9
// section 4); its plan goes beside the window's in PlanModelMethod.
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
