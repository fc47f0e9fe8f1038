#include "kiln/train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/io/file.h"

namespace kiln {

namespace {

struct Series {
  std::vector<double> x, y;
};

struct Run {
  std::string name;
  Series loss, val, lr, tps;
};

Run read_run(const std::string& dir) {
  std::string path = dir + "/metrics.jsonl";
  KILN_CHECK(file_exists(path), "plot", "no metrics.jsonl in '", dir, "': is it a run directory?");
  Run r;
  r.name = dir;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step")) continue;
    double s = j["step"].get<double>();
    auto put = [&](Series& se, const char* key) {
      if (j.contains(key) && j[key].is_number()) {
        se.x.push_back(s);
        se.y.push_back(j[key].get<double>());
      }
    };
    put(r.loss, "loss");
    put(r.val, "val_loss");
    put(r.lr, "lr");
    put(r.tps, "tokens_per_s");
  }
  KILN_CHECK(!r.loss.x.empty(), "plot", path, " has no step records");
  return r;
}

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};

std::string num(double v) {
  char b[32];
  if (std::fabs(v) >= 1e4 || (std::fabs(v) < 1e-2 && v != 0))
    std::snprintf(b, sizeof b, "%.2g", v);
  else
    std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

// One panel at (ox, oy) of size w x h; each run's series drawn with its color (dashed if alt).
void panel(std::ostringstream& s, double ox, double oy, double w, double h,
           const std::string& title,
           const std::vector<std::pair<const Series*, std::pair<int, bool>>>& lines) {
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (auto& [se, style] : lines)
    for (size_t i = 0; i < se->x.size(); ++i) {
      if (!std::isfinite(se->y[i])) continue;
      x0 = std::min(x0, se->x[i]);
      x1 = std::max(x1, se->x[i]);
      y0 = std::min(y0, se->y[i]);
      y1 = std::max(y1, se->y[i]);
    }
  const double L = 60, R = 15, Tm = 28, Bm = 35, pw = w - L - R, ph = h - Tm - Bm;
  s << "<g transform='translate(" << ox << "," << oy << ")'>\n";
  s << "<text x='" << L + pw / 2 << "' y='18' text-anchor='middle' font-size='14'>" << title
    << "</text>\n";
  s << "<rect x='" << L << "' y='" << Tm << "' width='" << pw << "' height='" << ph
    << "' fill='none' stroke='#888'/>\n";
  if (x0 > x1) {
    s << "</g>\n";
    return;
  }
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) {
    y1 += 0.5;
    y0 -= 0.5;
  }
  double pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  auto X = [&](double x) { return L + (x - x0) / (x1 - x0) * pw; };
  auto Y = [&](double y) { return Tm + (1 - (y - y0) / (y1 - y0)) * ph; };
  for (int k = 0; k <= 4; ++k) {
    double yv = y0 + (y1 - y0) * k / 4, xv = x0 + (x1 - x0) * k / 4;
    s << "<line x1='" << L << "' x2='" << L + pw << "' y1='" << Y(yv) << "' y2='" << Y(yv)
      << "' stroke='#eee'/>\n";
    s << "<text x='" << L - 4 << "' y='" << Y(yv) + 4 << "' text-anchor='end' font-size='10'>"
      << num(yv) << "</text>\n";
    s << "<text x='" << X(xv) << "' y='" << Tm + ph + 14 << "' text-anchor='middle' font-size='10'>"
      << num(xv) << "</text>\n";
  }
  s << "<text x='" << L + pw / 2 << "' y='" << h - 4
    << "' text-anchor='middle' font-size='11'>step</text>\n";
  for (auto& [se, style] : lines) {
    if (se->x.empty()) continue;
    s << "<polyline fill='none' stroke-width='1.5' stroke='" << kColors[style.first % 6] << "'"
      << (style.second ? " stroke-dasharray='5,3'" : "") << " points='";
    for (size_t i = 0; i < se->x.size(); ++i)
      if (std::isfinite(se->y[i])) s << X(se->x[i]) << "," << Y(se->y[i]) << " ";
    s << "'/>\n";
    if (se->x.size() < 40)  // sparse series (validation) get markers
      for (size_t i = 0; i < se->x.size(); ++i)
        s << "<circle r='2.5' cx='" << X(se->x[i]) << "' cy='" << Y(se->y[i]) << "' fill='"
          << kColors[style.first % 6] << "'/>\n";
  }
  s << "</g>\n";
}

}  // namespace

void plot_runs(const std::vector<std::string>& run_dirs, const std::string& output) {
  KILN_CHECK(!run_dirs.empty(), "plot", "no run directories given");
  std::vector<Run> runs;
  for (const auto& d : run_dirs) runs.push_back(read_run(d));
  const double W = 900, Hp = 300;
  std::ostringstream s;
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='"
    << 2 * Hp + 30 + 18 * runs.size()
    << "' font-family='sans-serif'>\n<rect width='100%' height='100%' fill='white'/>\n";
  std::vector<std::pair<const Series*, std::pair<int, bool>>> loss, lr, tps;
  for (size_t i = 0; i < runs.size(); ++i) {
    loss.push_back({&runs[i].loss, {int(i), false}});
    loss.push_back({&runs[i].val, {int(i), true}});
    lr.push_back({&runs[i].lr, {int(i), false}});
    tps.push_back({&runs[i].tps, {int(i), false}});
  }
  panel(s, 0, 0, W, Hp, "loss (solid: train, dashed: validation)", loss);
  panel(s, 0, Hp, W / 2, Hp, "learning rate", lr);
  panel(s, W / 2, Hp, W / 2, Hp, "throughput (tokens/s)", tps);
  for (size_t i = 0; i < runs.size(); ++i) {
    double y = 2 * Hp + 20 + 18 * i;
    s << "<line x1='60' x2='90' y1='" << y - 4 << "' y2='" << y - 4 << "' stroke='"
      << kColors[i % 6] << "' stroke-width='2'/><text x='96' y='" << y << "' font-size='12'>"
      << runs[i].name << "</text>\n";
  }
  s << "</svg>\n";
  write_file_atomic(output, s.str());
}

}  // namespace kiln
