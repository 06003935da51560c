// The picture of covattn-compare, as a self-contained SVG (no dependency):
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

}  // namespace covattn_compare

#endif  // COVATTN_TOOLS_COMPARE_SVG_H_
