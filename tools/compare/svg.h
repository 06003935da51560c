// The pictures of covattn-compare, as self-contained SVG (no dependency):
// one row per series, two panels per row -- speedup against exact attention
// (covattn) and relative L2 error against float64 attention, both against
// context length -- one line per method, log axes, one legend on top.
#ifndef COVATTN_TOOLS_COMPARE_SVG_H_
#define COVATTN_TOOLS_COMPARE_SVG_H_

#include <string>
#include <vector>

#include "evaluate.h"

namespace covattn_compare {

std::string RenderSvg(const std::vector<Measurement>& results, const std::string& title);

// covattn-compare --model's picture: mean and 95th-percentile KL against the
// budget, one line per method, log axes.
struct BudgetPoint {
  Method method;
  size_t budget;
  double kl_mean, kl_p95;
};

std::string RenderBudgetSvg(const std::vector<BudgetPoint>& points, const std::string& title);

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_SVG_H_
