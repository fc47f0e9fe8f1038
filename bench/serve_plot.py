"""Throughput against latency from bench/out/serve_bench.jsonl, as an SVG written by hand
(standard library only: no matplotlib here).

  python3 bench/serve_plot.py [bench/out/serve_bench.jsonl] [bench/out/serve_bench.svg]

Two panels sharing the x axis, output tokens/s: end-to-end latency and time to first token,
each median (solid) and p99 (dashed), log scale. One colour per server; closed-loop points
(filled, joined in concurrency order, labelled c=N) and Poisson points (hollow, joined in rate
order, labelled N/s). The 1,000-stream point is left out (a different request mix).
"""
import json
import math
import sys

COLORS = {"kiln": "#1f6fb4", "llama-server": "#e8730c"}
W, H = 520, 400           # one panel
ML, MR, MT, MB = 70, 20, 40, 50


def load(path):
    rows = {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            rows[(r["server"], r["point"])] = r
    return [r for r in rows.values() if not r["point"].startswith("streams")]


def series(rows):
    """{(server, mode): [(x, load, label)]} sorted by concurrency / rate."""
    out = {}
    for r in rows:
        L = r["load"]
        key = (r["server"], L["mode"])
        label = f"c={L['concurrency']}" if L["mode"] == "closed" else f"{L['rate']:g}/s"
        order = L["concurrency"] if L["mode"] == "closed" else L["rate"]
        out.setdefault(key, []).append((order, L["output_throughput"], L, label))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in out.items()}


def nice_step(span, n=5):
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def panel(ox, title, metric, ser, xmax, out):
    ys = [L[metric][q] for pts in ser.values() for _, _, L, _ in pts for q in ("median", "p99")
          if L[metric][q]]
    if not ys:
        return
    lo = 10 ** math.floor(math.log10(max(min(ys), 1e-3)))
    hi = 10 ** math.ceil(math.log10(max(ys) * 1.01))
    pw, ph = W - ML - MR, H - MT - MB
    X = lambda x: ox + ML + pw * x / xmax
    Y = lambda y: MT + ph * (1 - (math.log10(max(y, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))
    out.append(f'<text x="{ox + W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{esc(title)}</text>')
    out.append(f'<rect x="{ox + ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    step = nice_step(xmax)
    x = 0.0
    while x <= xmax + 1e-9:
        out.append(f'<line x1="{X(x):.1f}" y1="{MT}" x2="{X(x):.1f}" y2="{MT + ph}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{X(x):.1f}" y="{MT + ph + 16}" text-anchor="middle" font-size="11">{x:g}</text>')
        x += step
    d = lo
    while d <= hi * 1.0001:
        for m in (1, 2, 5):
            v = d * m
            if v > hi * 1.0001:
                break
            out.append(f'<line x1="{ox + ML}" y1="{Y(v):.1f}" x2="{ox + ML + pw}" y2="{Y(v):.1f}" '
                       f'stroke="{"#d0d0d0" if m == 1 else "#f0f0f0"}"/>')
            lab = f"{v:,.0f}" if v >= 1 else f"{v:g}"
            out.append(f'<text x="{ox + ML - 6}" y="{Y(v) + 4:.1f}" text-anchor="end" font-size="11">{lab}</text>')
        d *= 10
    out.append(f'<text x="{ox + ML + pw / 2}" y="{H - 10}" text-anchor="middle" font-size="12">output tokens/s</text>')
    out.append(f'<text transform="translate({ox + 16},{MT + ph / 2}) rotate(-90)" text-anchor="middle" '
               f'font-size="12">{esc(title.split(" (")[0])} (ms, log)</text>')
    for (server, mode), pts in sorted(ser.items()):
        col = COLORS.get(server, "#555")
        for q, dash in (("median", ""), ("p99", ' stroke-dasharray="6,4"')):
            xy = [(X(x), Y(L[metric][q])) for _, x, L, _ in pts if L[metric][q]]
            if mode == "poisson":
                dash = ' stroke-dasharray="2,3"' if q == "median" else ' stroke-dasharray="8,3,2,3"'
            if len(xy) > 1:
                path = " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)
                out.append(f'<polyline points="{path}" fill="none" stroke="{col}" stroke-width="1.8"{dash}/>')
            for (a, b), (_, _, _, lab) in zip(xy, pts):
                fill = col if mode == "closed" else "white"
                out.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3.5" fill="{fill}" stroke="{col}" stroke-width="1.5"/>')
                if q == "median":
                    out.append(f'<text x="{a + 5:.1f}" y="{b - 6:.1f}" font-size="10" fill="{col}">{esc(lab)}</text>')


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "bench/out/serve_bench.jsonl"
    dst = sys.argv[2] if len(sys.argv) > 2 else "bench/out/serve_bench.svg"
    ser = series(load(src))
    if not ser:
        sys.exit(f"[serve_plot] {src} has no closed-loop or Poisson rows")
    xmax = max(x for pts in ser.values() for _, x, _, _ in pts) * 1.12
    step = nice_step(xmax)
    xmax = math.ceil(xmax / step) * step
    legend_h = 22 * (1 + len({s for s, _ in ser}))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + legend_h}" '
           f'font-family="Helvetica, Arial, sans-serif">', f'<rect width="100%" height="100%" fill="white"/>']
    panel(0, "End-to-end latency (median solid, p99 dashed)", "e2e_ms", ser, xmax, out)
    panel(W, "Time to first token (median solid, p99 dashed)", "ttft_ms", ser, xmax, out)
    y = H + 8
    for i, server in enumerate(sorted({s for s, _ in ser})):
        col = COLORS.get(server, "#555")
        yy = y + 22 * i
        out.append(f'<circle cx="{ML}" cy="{yy}" r="4" fill="{col}"/>')
        out.append(f'<text x="{ML + 10}" y="{yy + 4}" font-size="12">{esc(server)}: closed loop (filled, c = concurrency)</text>')
        out.append(f'<circle cx="{ML + 330}" cy="{yy}" r="4" fill="white" stroke="{col}" stroke-width="1.5"/>')
        out.append(f'<text x="{ML + 340}" y="{yy + 4}" font-size="12">Poisson arrivals (hollow, requests/s; dotted)</text>')
    out.append("</svg>")
    with open(dst, "w") as fh:
        fh.write("\n".join(out) + "\n")
    print(dst)


if __name__ == "__main__":
    main()
