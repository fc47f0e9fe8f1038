#include "kiln/train/plot.h"

#include <cairo-svg.h>
#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
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

Run read_run(const std::string& dir, PlotAxis axis) {
  std::string path = dir + "/metrics.jsonl";
  KILN_CHECK(file_exists(path), "plot", "no metrics.jsonl in '", dir, "': is it a run directory?");
  Run r;
  r.name = dir;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step")) continue;  // a torn line from a killed run
    const char* xkey = axis == PlotAxis::tokens ? "tokens" : "step";
    if (!j.contains(xkey)) continue;
    double x = j[xkey].get<double>();
    auto put = [&](Series& se, const char* key) {
      if (j.contains(key) && j[key].is_number() && std::isfinite(j[key].get<double>())) {
        se.x.push_back(x);
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

const double kColors[][3] = {{0.12, 0.47, 0.71}, {0.84, 0.15, 0.16}, {0.17, 0.63, 0.17},
                             {0.58, 0.40, 0.74}, {1.00, 0.50, 0.05}, {0.55, 0.34, 0.29}};

std::string num(double v) {
  char b[32];
  if (std::fabs(v) >= 1e4 || (std::fabs(v) < 1e-2 && v != 0)) {
    std::snprintf(b, sizeof b, "%.2g", v);
  } else {
    std::snprintf(b, sizeof b, "%.3g", v);
  }
  return b;
}

void text(cairo_t* cr, double x, double y, const std::string& s, double size, double align) {
  cairo_set_font_size(cr, size);
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  cairo_move_to(cr, x - align * e.width, y);
  cairo_show_text(cr, s.c_str());
}

struct Line {
  const Series* s;
  int color;
  bool dashed;
};

// One panel at (ox, oy) of size w x h.
void panel(cairo_t* cr, double ox, double oy, double w, double h, const std::string& title,
           const std::string& xlabel, const std::vector<Line>& lines) {
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const Line& l : lines)
    for (size_t i = 0; i < l.s->x.size(); ++i) {
      x0 = std::min(x0, l.s->x[i]), x1 = std::max(x1, l.s->x[i]);
      y0 = std::min(y0, l.s->y[i]), y1 = std::max(y1, l.s->y[i]);
    }
  const double L = 62, R = 16, T = 30, B = 38, pw = w - L - R, ph = h - T - B;
  cairo_save(cr);
  cairo_translate(cr, ox, oy);
  cairo_set_source_rgb(cr, 0, 0, 0);
  text(cr, L + pw / 2, 20, title, 14, 0.5);
  text(cr, L + pw / 2, h - 6, xlabel, 11, 0.5);
  cairo_set_source_rgb(cr, 0.55, 0.55, 0.55);
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, L, T, pw, ph);
  cairo_stroke(cr);
  if (x0 > x1) {
    cairo_restore(cr);
    return;
  }
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 += 0.5, y0 -= 0.5;
  const double pad = (y1 - y0) * 0.05;
  y0 -= pad, y1 += pad;
  auto X = [&](double x) { return L + (x - x0) / (x1 - x0) * pw; };
  auto Y = [&](double y) { return T + (1 - (y - y0) / (y1 - y0)) * ph; };
  for (int k = 0; k <= 4; ++k) {
    const double yv = y0 + (y1 - y0) * k / 4, xv = x0 + (x1 - x0) * k / 4;
    cairo_set_source_rgb(cr, 0.92, 0.92, 0.92);
    cairo_move_to(cr, L, Y(yv));
    cairo_line_to(cr, L + pw, Y(yv));
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text(cr, L - 5, Y(yv) + 4, num(yv), 10, 1.0);
    text(cr, X(xv), T + ph + 14, num(xv), 10, 0.5);
  }
  cairo_rectangle(cr, L, T, pw, ph);
  cairo_clip(cr);
  for (const Line& l : lines) {
    if (l.s->x.empty()) continue;
    const double* c = kColors[l.color % 6];
    cairo_set_source_rgb(cr, c[0], c[1], c[2]);
    cairo_set_line_width(cr, 1.5);
    const double dash[] = {5, 3};
    cairo_set_dash(cr, dash, l.dashed ? 2 : 0, 0);
    for (size_t i = 0; i < l.s->x.size(); ++i) {
      if (i == 0)
        cairo_move_to(cr, X(l.s->x[i]), Y(l.s->y[i]));
      else
        cairo_line_to(cr, X(l.s->x[i]), Y(l.s->y[i]));
    }
    cairo_stroke(cr);
    if (l.s->x.size() < 40)  // sparse series (validation) get markers
      for (size_t i = 0; i < l.s->x.size(); ++i) {
        cairo_arc(cr, X(l.s->x[i]), Y(l.s->y[i]), 2.5, 0, 2 * M_PI);
        cairo_fill(cr);
      }
    cairo_set_dash(cr, nullptr, 0, 0);
  }
  cairo_restore(cr);
}

}  // namespace

void plot_runs(const std::vector<std::string>& run_dirs, const std::string& output, PlotAxis x) {
  KILN_CHECK(!run_dirs.empty(), "plot", "no run directories given");
  const std::string ext = std::filesystem::path(output).extension().string();
  KILN_CHECK(ext == ".svg" || ext == ".png", "plot", "cannot write '", output,
             "': the output must end in .svg or .png");
  std::vector<Run> runs;
  for (const auto& d : run_dirs) runs.push_back(read_run(d, x));
  const double W = 900, Hp = 300, H = 2 * Hp + 24 + 18 * runs.size();
  const std::string tmp = output + ".tmp";
  cairo_surface_t* surface = ext == ".svg"
                                 ? cairo_svg_surface_create(tmp.c_str(), W, H)
                                 : cairo_image_surface_create(CAIRO_FORMAT_RGB24, int(W), int(H));
  cairo_t* cr = cairo_create(surface);
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  std::vector<Line> loss, lr, tps;
  for (size_t i = 0; i < runs.size(); ++i) {
    loss.push_back({&runs[i].loss, int(i), false});
    loss.push_back({&runs[i].val, int(i), true});
    lr.push_back({&runs[i].lr, int(i), false});
    tps.push_back({&runs[i].tps, int(i), false});
  }
  const std::string xl = x == PlotAxis::tokens ? "tokens" : "step";
  panel(cr, 0, 0, W, Hp, "loss (solid: train, dashed: validation)", xl, loss);
  panel(cr, 0, Hp, W / 2, Hp, "learning rate", xl, lr);
  panel(cr, W / 2, Hp, W / 2, Hp, "throughput (tokens/s)", xl, tps);
  for (size_t i = 0; i < runs.size(); ++i) {
    const double y = 2 * Hp + 16 + 18 * i;
    const double* c = kColors[i % 6];
    cairo_set_source_rgb(cr, c[0], c[1], c[2]);
    cairo_set_line_width(cr, 2);
    cairo_move_to(cr, 62, y - 4);
    cairo_line_to(cr, 92, y - 4);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text(cr, 98, y, runs[i].name, 12, 0);
  }
  cairo_destroy(cr);
  cairo_status_t st = CAIRO_STATUS_SUCCESS;
  if (ext == ".png") st = cairo_surface_write_to_png(surface, tmp.c_str());
  cairo_surface_finish(surface);
  if (st == CAIRO_STATUS_SUCCESS) st = cairo_surface_status(surface);
  cairo_surface_destroy(surface);
  if (st != CAIRO_STATUS_SUCCESS) {
    std::remove(tmp.c_str());
    fail("plot", "cannot write '", output, "': ", cairo_status_to_string(st));
  }
  std::filesystem::rename(tmp, output);
}

}  // namespace kiln
