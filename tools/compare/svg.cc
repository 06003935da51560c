#include "svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

namespace covattn_compare {
namespace {

// Geometry, in SVG user units (pixels).
constexpr double kWidth = 1000;
constexpr double kTop = 84;         // title and legend
constexpr double kRowHeight = 300;  // one series
constexpr double kPanelLeft[2] = {70, 570};
constexpr double kPanelWidth = 400;
constexpr double kPlotTop = 46;  // within a row: series and panel titles above the plot
constexpr double kPlotHeight = 200;

struct Style {
  const char* color;
  const char* dash;  // stroke-dasharray, "" for solid
};

Style MethodStyle(Method m) {
  switch (m) {
    case Method::kExact:
      return {"#222222", ""};
    case Method::kExactInt8:
      return {"#555555", "2,3"};
    case Method::kOneDnn:
      return {"#8c8c8c", "6,4"};
    case Method::kReadout:
      return {"#1f77b4", ""};
    case Method::kSinkWindow:
      return {"#d62728", ""};
    case Method::kHybrid:
      return {"#2ca02c", ""};
    case Method::kHybridOutliers:
      return {"#9467bd", ""};
    case Method::kHeavyHitters:
      return {"#ff7f0e", "6,4"};
    case Method::kEmaRing:
      return {"#17becf", ""};
  }
  return {"#000000", ""};
}

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string Num(double x) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.1f", x);
  return buffer;
}

std::string ContextLabel(double n) {
  char buffer[32];
  if (n >= 1048576 && std::fmod(n, 1048576) == 0) {
    std::snprintf(buffer, sizeof(buffer), "%.0fM", n / 1048576);
  } else if (n >= 1024 && std::fmod(n, 1024) == 0) {
    std::snprintf(buffer, sizeof(buffer), "%.0fK", n / 1024);
  } else {
    std::snprintf(buffer, sizeof(buffer), "%.0f", n);
  }
  return buffer;
}

std::string DecadeLabel(int e) {
  if (e >= 0 && e <= 4) {
    char buffer[16];
    std::snprintf(buffer, sizeof(buffer), "%.0f", std::pow(10.0, e));
    return buffer;
  }
  if (e == -1) return "0.1";
  if (e == -2) return "0.01";
  return "1e" + std::to_string(e);
}

// A log axis mapping [lo, hi] (powers of `base`, exponents) onto [a, b].
struct LogAxis {
  double base, lo, hi;  // exponents
  double a, b;          // screen coordinates of lo and hi
  double Map(double x) const {
    const double e = std::log(x) / std::log(base);
    return a + (b - a) * (e - lo) / (hi - lo);
  }
};

// Whole exponents around the positive finite values, at least one step apart.
bool ExponentRange(const std::vector<double>& values, double base, double* lo, double* hi) {
  double mn = INFINITY, mx = -INFINITY;
  for (double v : values) {
    if (!(v > 0) || !std::isfinite(v)) continue;
    const double e = std::log(v) / std::log(base);
    mn = std::min(mn, e);
    mx = std::max(mx, e);
  }
  if (!std::isfinite(mn)) return false;
  *lo = std::floor(mn + 1e-9);
  *hi = std::ceil(mx - 1e-9);
  if (*hi <= *lo) *hi = *lo + 1;
  return true;
}

// One panel: a frame, log axes with a grid, lines of (x, y) data points.
struct PlotLine {
  Style style;
  std::vector<std::pair<double, double>> points;
};

struct Panel {
  double left, plot_top;
  std::string title, x_label;
  LogAxis x, y;
  int x_step;  // label every x_step-th grid line
  std::string (*x_tick)(double);
};

void DrawPanel(const Panel& p, const std::vector<PlotLine>& lines, std::string* out) {
  std::string& s = *out;
  const double right = p.left + kPanelWidth, bottom = p.plot_top + kPlotHeight;
  s += "<text x=\"" + Num((p.left + right) / 2) + "\" y=\"" + Num(p.plot_top - 8) +
       "\" text-anchor=\"middle\">" + Escape(p.title) + "</text>\n";
  s += "<rect x=\"" + Num(p.left) + "\" y=\"" + Num(p.plot_top) + "\" width=\"" + Num(kPanelWidth) +
       "\" height=\"" + Num(kPlotHeight) + "\" fill=\"none\" stroke=\"#333\"/>\n";
  for (double e = p.x.lo; e <= p.x.hi + 1e-9; e += 1) {
    const double px = p.x.Map(std::pow(p.x.base, e));
    s += "<line x1=\"" + Num(px) + "\" y1=\"" + Num(p.plot_top) + "\" x2=\"" + Num(px) +
         "\" y2=\"" + Num(bottom) + "\" stroke=\"#e5e5e5\"/>\n";
    if (static_cast<long>(e - p.x.lo) % p.x_step == 0) {
      s += "<text x=\"" + Num(px) + "\" y=\"" + Num(bottom + 15) +
           "\" text-anchor=\"middle\" font-size=\"11\">" + p.x_tick(std::pow(p.x.base, e)) +
           "</text>\n";
    }
  }
  for (double e = p.y.lo; e <= p.y.hi + 1e-9; e += 1) {
    const double py = p.y.Map(std::pow(10.0, e));
    s += "<line x1=\"" + Num(p.left) + "\" y1=\"" + Num(py) + "\" x2=\"" + Num(right) + "\" y2=\"" +
         Num(py) + "\" stroke=\"#e5e5e5\"/>\n";
    s += "<text x=\"" + Num(p.left - 6) + "\" y=\"" + Num(py + 4) +
         "\" text-anchor=\"end\" font-size=\"11\">" + DecadeLabel(int(e)) + "</text>\n";
  }
  s += "<text x=\"" + Num((p.left + right) / 2) + "\" y=\"" + Num(bottom + 32) +
       "\" text-anchor=\"middle\" font-size=\"11\">" + Escape(p.x_label) + "</text>\n";
  for (const PlotLine& line : lines) {
    std::string points;
    std::vector<std::pair<double, double>> dots;
    for (const auto& xy : line.points) {
      if (!(xy.second > 0) || !std::isfinite(xy.second)) continue;
      const double px = p.x.Map(xy.first), py = p.y.Map(xy.second);
      points += (points.empty() ? "" : " ") + Num(px) + "," + Num(py);
      dots.emplace_back(px, py);
    }
    if (dots.empty()) continue;
    const Style& st = line.style;
    s += "<polyline fill=\"none\" stroke=\"" + std::string(st.color) + "\" stroke-width=\"2\"" +
         (*st.dash ? std::string(" stroke-dasharray=\"") + st.dash + "\"" : "") + " points=\"" +
         points + "\"/>\n";
    for (const auto& d : dots) {
      s += "<circle cx=\"" + Num(d.first) + "\" cy=\"" + Num(d.second) + "\" r=\"2.5\" fill=\"" +
           st.color + "\"/>\n";
    }
  }
}

// The root element, a white background, the title and one legend swatch per
// method, in rows of three.
std::string SvgStart(double height, const std::string& title, const std::vector<Method>& methods) {
  std::string s;
  s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + Num(kWidth) + "\" height=\"" +
       Num(height) + "\" viewBox=\"0 0 " + Num(kWidth) + " " + Num(height) +
       "\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n";
  s += "<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s += "<text x=\"" + Num(kWidth / 2) + "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" +
       Escape(title) + "</text>\n";
  for (size_t i = 0; i < methods.size(); ++i) {
    const Style st = MethodStyle(methods[i]);
    const double x = 120 + 270 * double(i % 3), y = 44 + 18 * double(i / 3);
    s += "<line x1=\"" + Num(x) + "\" y1=\"" + Num(y) + "\" x2=\"" + Num(x + 28) + "\" y2=\"" +
         Num(y) + "\" stroke=\"" + st.color + "\" stroke-width=\"2.5\"" +
         (*st.dash ? std::string(" stroke-dasharray=\"") + st.dash + "\"" : "") + "/>\n";
    s += "<text x=\"" + Num(x + 36) + "\" y=\"" + Num(y + 4) + "\">" +
         Escape(MethodName(methods[i])) + "</text>\n";
  }
  return s;
}

std::string NoData(std::string s) {
  return s + "<text x=\"" + Num(kWidth / 2) + "\" y=\"" + Num(kTop + 40) +
         "\" text-anchor=\"middle\">no measurements</text>\n</svg>\n";
}

}  // namespace

std::string RenderSvg(const std::vector<Measurement>& results, const std::string& title) {
  std::vector<std::string> series;
  std::vector<Method> methods;
  std::vector<double> contexts, speedups, errors;
  for (const Measurement& m : results) {
    if (std::find(series.begin(), series.end(), m.series) == series.end())
      series.push_back(m.series);
    if (std::find(methods.begin(), methods.end(), m.method) == methods.end())
      methods.push_back(m.method);
    contexts.push_back(double(m.context));
    speedups.push_back(m.speedup);
    errors.push_back(m.rel_l2_median);
  }
  std::sort(methods.begin(), methods.end());
  const double height = kTop + kRowHeight * double(std::max<size_t>(series.size(), 1)) + 10;
  std::string s = SvgStart(height, title, methods);
  double xlo, xhi, slo, shi, elo, ehi;
  if (results.empty() || !ExponentRange(contexts, 2.0, &xlo, &xhi)) return NoData(s);
  const bool have_speed = ExponentRange(speedups, 10.0, &slo, &shi);
  const bool have_error = ExponentRange(errors, 10.0, &elo, &ehi);
  const int x_step = xhi - xlo > 10 ? 2 : 1;

  for (size_t row = 0; row < series.size(); ++row) {
    const double top = kTop + kRowHeight * double(row);
    s += "<text x=\"" + Num(kPanelLeft[0] - 50) + "\" y=\"" + Num(top + 18) +
         "\" font-size=\"13\" font-weight=\"bold\">" + Escape(series[row]) + "</text>\n";
    for (int panel = 0; panel < 2; ++panel) {
      const bool speed = panel == 0;
      if (speed ? !have_speed : !have_error) continue;
      const double left = kPanelLeft[panel], plot_top = top + kPlotTop;
      const Panel p{
          left,
          plot_top,
          speed ? "speedup against exact (covattn), decode" : "relative L2 error against float64",
          "context length (tokens)",
          LogAxis{2.0, xlo, xhi, left, left + kPanelWidth},
          LogAxis{10.0, speed ? slo : elo, speed ? shi : ehi, plot_top + kPlotHeight, plot_top},
          x_step,
          ContextLabel};
      std::vector<PlotLine> lines;
      for (Method method : methods) {
        PlotLine line{MethodStyle(method), {}};
        for (const Measurement& m : results) {
          if (m.series != series[row] || m.method != method) continue;
          line.points.emplace_back(double(m.context), speed ? m.speedup : m.rel_l2_median);
        }
        lines.push_back(line);
      }
      DrawPanel(p, lines, &s);
    }
  }
  s += "</svg>\n";
  return s;
}

std::string RenderBudgetSvg(const std::vector<BudgetPoint>& points, const std::string& title) {
  std::vector<Method> methods;
  std::vector<double> budgets, kl;
  for (const BudgetPoint& b : points) {
    if (std::find(methods.begin(), methods.end(), b.method) == methods.end())
      methods.push_back(b.method);
    budgets.push_back(double(b.budget));
    kl.push_back(b.kl_mean);
    kl.push_back(b.kl_p95);
  }
  std::sort(methods.begin(), methods.end());
  const double height = kTop + kRowHeight + 10;
  std::string s = SvgStart(height, title, methods);
  double xlo, xhi, ylo, yhi;
  if (!ExponentRange(budgets, 2.0, &xlo, &xhi) || !ExponentRange(kl, 10.0, &ylo, &yhi)) {
    return NoData(s);
  }
  for (int panel = 0; panel < 2; ++panel) {
    const double left = kPanelLeft[panel], plot_top = kTop + kPlotTop;
    const Panel p{left,
                  plot_top,
                  panel == 0 ? "mean KL(exact || method), nats" : "95th percentile KL, nats",
                  "budget (exact tokens per KV head; equal memory)",
                  LogAxis{2.0, xlo, xhi, left, left + kPanelWidth},
                  LogAxis{10.0, ylo, yhi, plot_top + kPlotHeight, plot_top},
                  1,
                  ContextLabel};
    std::vector<PlotLine> lines;
    for (Method method : methods) {
      PlotLine line{MethodStyle(method), {}};
      for (const BudgetPoint& b : points) {
        if (b.method == method) {
          line.points.emplace_back(double(b.budget), panel == 0 ? b.kl_mean : b.kl_p95);
        }
      }
      lines.push_back(line);
    }
    DrawPanel(p, lines, &s);
  }
  s += "</svg>\n";
  return s;
}

}  // namespace covattn_compare
