"""Markdown tables and the issue's target checks from bench/out/serve_bench.jsonl.

  python3 bench/serve_table.py [bench/out/serve_bench.jsonl]

Latencies in ms; the last row of a (server, point) wins if a point was run twice.
"""
import json
import sys


def load(path):
    rows = {}
    for line in open(path):
        line = line.strip()
        if line:
            r = json.loads(line)
            rows[(r["server"], r["point"])] = r
    return list(rows.values())


def order(r):
    p = r["point"]
    kind = {"c": 0, "r": 1, "s": 2}[p[0]]
    num = float("".join(ch for ch in p if ch.isdigit() or ch == ".") or 0)
    return (kind, num, r["server"])


def f(x, nd=1):
    return "-" if x is None else f"{x:,.{nd}f}"


def table(rows):
    print("| server | load | prompts | ok/fail | req/s | out tok/s | TTFT mean / med / p99 | "
          "TPOT mean / med / p99 | ITL med / p99 | e2e med / p99 | tok/chunk | server CPU ms/tok | load avg |")
    print("|---|---|---:|---:|---:|---:|---|---|---|---|---:|---:|---:|")
    for r in sorted(rows, key=order):
        L = r["load"]
        load_s = f"c={L['concurrency']}" if L["mode"] == "closed" else f"Poisson {L['rate']}/s"
        if r["point"].startswith("streams"):
            load_s = f"{L['concurrency']} streams"
        t, p, i, e = L["ttft_ms"], L["tpot_ms"], L["itl_ms"], L["e2e_ms"]
        print(f"| {r['server']} | {load_s} | {L['num_prompts']} | {L['completed']}/{L['failed']} | "
              f"{L['request_throughput']:.2f} | {L['output_throughput']:.1f} | "
              f"{f(t['mean'])} / {f(t['median'])} / {f(t['p99'])} | "
              f"{f(p['mean'])} / {f(p['median'])} / {f(p['p99'])} | {f(i['median'])} / {f(i['p99'])} | "
              f"{f(e['median'], 0)} / {f(e['p99'], 0)} | {f(L['tokens_per_chunk'], 2)} | "
              f"{f(r.get('server_cpu_ms_per_output_token'), 2)} | {f(r.get('loadavg_end'), 1)} |")


def targets(rows):
    by = {(r["server"], r["point"]): r for r in rows}
    out = lambda s, p: by.get((s, p), {}).get("load", {}).get("output_throughput")
    ttft99 = lambda s, p: by.get((s, p), {}).get("load", {}).get("ttft_ms", {}).get("p99")
    print("\nTargets:")
    k1, k16 = out("kiln", "c1"), out("kiln", "c16")
    if k1 and k16:
        print(f"- kiln out tok/s at c=16 / c=1: {k16 / k1:.2f}x (target >= 6x): "
              f"{'met' if k16 / k1 >= 6 else 'NOT met'}")
    for c in (16, 64):
        k, l = out("kiln", f"c{c}"), out("llama-server", f"c{c}")
        if k and l:
            kt, lt = ttft99("kiln", f"c{c}"), ttft99("llama-server", f"c{c}")
            ok = k / l >= 1.5 and kt is not None and lt is not None and kt < lt
            print(f"- c={c}: kiln / llama-server out tok/s {k / l:.2f}x (target >= 1.5x), p99 TTFT "
                  f"{f(kt)} vs {f(lt)} ms (target lower): {'met' if ok else 'NOT met'}")
    for r in sorted(rows, key=order):
        if r["server"] != "kiln":
            continue
        o = r.get("overhead", {})
        if "overhead_pct" in o:
            print(f"- kiln {r['point']}: server overhead {o['overhead_pct']:.2f}% of engine time "
                  f"({o['overhead_s']:.3f} s / {o['engine_s']:.3f} s; stages {o['stages_s']})"
                  + (" (target <= 5% at c=64)" if r["point"] == "c64" else ""))
        elif r["point"] == "c64":
            print(f"- kiln c64: /metrics has no stage times; tokenize stage "
                  f"{o.get('tokenize_s', '-')} s over the point, server CPU "
                  f"{r['server_cpu_s']:.1f} s (the overhead figure needs kiln:stage_seconds_total)")
        if r["point"].startswith("streams"):
            L = r["load"]
            print(f"- kiln {L['concurrency']} concurrent streams: {L['completed']} completed, "
                  f"{L['failed']} failed; p99 ITL {f(L['itl_ms']['p99'])} ms, median "
                  f"{f(L['itl_ms']['median'])} ms; p99 TTFT {f(L['ttft_ms']['p99'])} ms")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "bench/out/serve_bench.jsonl"
    rows = load(path)
    if not rows:
        sys.exit(f"[serve_table] {path} has no rows")
    table(rows)
    targets(rows)


if __name__ == "__main__":
    main()
