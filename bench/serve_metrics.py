"""One row of bench/out/serve_bench.jsonl from a point of bench/serve_bench.sh.

Reads the load generator's JSON report on stdin and the server's /metrics before and after the
point (Prometheus text), and prints one JSON line: the report, the counters' and histogram
sums' increase over the point (buckets left out), the server's CPU seconds, and the server
overhead where the server reports stage times. Standard library only.

  python3 bench/serve_metrics.py --row SERVER POINT LOADARGS SERVERARGS THREADS CPU_S PEER_VERSION
      METRICS_BEFORE METRICS_AFTER < report.json

Overhead: kiln may report `kiln:stage_seconds_total{stage="..."}`; the engine's stage (a name
with "engine", "step" or "forward") is the denominator and every other stage (HTTP, tokenize,
detokenize, ...) the numerator. Without it, the tokenize histogram's sum
(`kiln:request_tokenize_time_seconds_sum`) is reported on its own.
"""
import datetime
import json
import os
import re
import sys

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
ENGINE_STAGE = re.compile(r"engine|step|forward")


def parse(path):
    """Prometheus text -> {"name{labels other than model_name}": value}; buckets skipped."""
    out = {}
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        return out
    for line in text.splitlines():
        m = LINE.match(line)
        if not m or m.group(1).endswith("_bucket"):
            continue
        labels = m.group(2) or ""
        labels = re.sub(r'(,\s*)?model_name="[^"]*"', "", labels).replace("{,", "{")
        if labels == "{}":
            labels = ""
        try:
            out[m.group(1) + labels] = float(m.group(3))
        except ValueError:
            pass
    return out


def deltas(before, after):
    """Counters and histogram sums/counts: the increase; gauges: the value after."""
    d = {}
    for k, v in after.items():
        name = k.split("{")[0]
        if name.endswith(("_total", "_sum", "_count")):
            d[k] = round(v - before.get(k, 0.0), 6)
        else:
            d[k] = v
    return d


def overhead(d):
    stages = {}
    for k, v in d.items():
        m = re.match(r'^[a-z_]+:stage_seconds_total\{.*stage="([^"]+)"', k)
        if m:
            stages[m.group(1)] = stages.get(m.group(1), 0.0) + v
    res = {"stages_s": stages} if stages else {}
    engine = sum(v for s, v in stages.items() if ENGINE_STAGE.search(s))
    if engine > 0:
        other = sum(v for s, v in stages.items() if not ENGINE_STAGE.search(s))
        res.update(engine_s=round(engine, 6), overhead_s=round(other, 6),
                   overhead_pct=round(100.0 * other / engine, 3))
    tk = d.get("kiln:request_tokenize_time_seconds_sum")
    if tk is not None:
        res["tokenize_s"] = tk
    return res


def cpu():
    """The CPU's model name and whether it has AMX (kiln's quantized prefill uses it when there)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return None
    name = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "")
    flags = next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), [])
    return {"model": name, "cores": os.cpu_count(), "amx": "amx_tile" in flags,
            "avx512_vnni": "avx512_vnni" in flags}


def main():
    if len(sys.argv) != 11 or sys.argv[1] != "--row":
        sys.exit(__doc__)
    server, point, loadargs, serverargs, threads, cpu_s, peer, m0, m1 = sys.argv[2:]
    load = json.loads(sys.stdin.read())
    d = deltas(parse(m0), parse(m1))
    row = {
        "server": server, "point": point, "load_args": loadargs, "server_args": serverargs,
        "threads": int(threads), "server_cpu_s": float(cpu_s), "cpu": cpu(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load": load, "overhead": overhead(d), "metrics": d,
    }
    # The machine's 1-minute load average at the point's start (SERVE_LOADAVG0) and end: a busy
    # machine shows here, not in the figures' spread.
    try:
        row["loadavg_start"] = float(os.environ.get("SERVE_LOADAVG0", "nan").split()[0])
        row["loadavg_end"] = float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    if server != "kiln" and peer:
        row["peer_version"] = peer
    if load.get("total_output_tokens"):
        row["server_cpu_ms_per_output_token"] = round(1000.0 * float(cpu_s) / load["total_output_tokens"], 3)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
