// Load generator for OpenAI-compatible servers, in the style of vLLM's benchmark_serving.py:
// streamed /v1/completions requests, either a closed loop at a fixed concurrency (each of N
// clients sends its next request when its last one ends) or Poisson arrivals at a rate (seeded
// exponential gaps, unbounded concurrency). Prompt and output lengths are drawn uniformly from
// fixed seeded ranges; prompts are Brown-corpus text cut at a seeded offset. Every request asks
// for exactly its output length (max_tokens + ignore_eos, greedy), so runs are comparable across
// servers. Node built-ins only; SSE is parsed here so each chunk gets the time its bytes arrived.
//
//   node bench/serve_load.mjs --url http://127.0.0.1:8000 (--concurrency N | --rate R)
//        [--num-prompts 100] [--seed 0] [--prompt-len 64:512] [--output-len 32:256]
//        [--corpus data/brown.txt] [--warmup 1] [--label NAME] [--requests-out FILE]
//        [--timeout 600] [--bytes-per-token 1] [--model NAME[,NAME...]]
// --model: the request's model field (default: the server's first); several, comma-separated,
// are taken in turn (request i gets the (i mod k)-th), e.g. LoRA adapters served side by side.
// Prints one JSON line: request and token throughput, TTFT / TPOT / ITL / e2e latency in ms
// (mean, median, p99, max), failures and what the chunks held (tokens per content chunk).
//
// Definitions (vLLM's): TTFT = send to first chunk with text; TPOT = (e2e - TTFT) / (output
// tokens - 1) per request; ITL = gaps between successive content chunks of a request; e2e = send
// to the end of the stream. Output tokens come from the stream's `usage` (stream_options.
// include_usage), else from max_tokens (exact, since ignore_eos). A server that puts several
// tokens in one chunk shows it as tokens_per_chunk > 1: its ITL then spans several tokens.
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

function parseArgs(argv) {
  const a = {
    url: "http://127.0.0.1:8000", concurrency: 0, rate: 0, numPrompts: 100, seed: 0,
    promptLen: [64, 512], outputLen: [32, 256], corpus: path.join(root, "data/brown.txt"),
    warmup: 1, label: "", requestsOut: "", timeout: 600, bytesPerToken: 1, model: "",
  };
  const range = (s) => {
    const [lo, hi] = s.split(":").map(Number);
    const r = [lo, hi === undefined ? lo : hi];
    if (!(r[0] >= 1 && r[1] >= r[0])) throw new Error(`[serve_load] bad range '${s}': want LO:HI, 1 <= LO <= HI`);
    return r;
  };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i], v = argv[i + 1];
    if (v === undefined) throw new Error(`[serve_load] ${k} needs a value`);
    switch (k) {
      case "--url": a.url = v.replace(/\/+$/, ""); break;
      case "--concurrency": a.concurrency = Number(v); break;
      case "--rate": a.rate = Number(v); break;
      case "--num-prompts": a.numPrompts = Number(v); break;
      case "--seed": a.seed = Number(v); break;
      case "--prompt-len": a.promptLen = range(v); break;
      case "--output-len": a.outputLen = range(v); break;
      case "--corpus": a.corpus = v; break;
      case "--warmup": a.warmup = Number(v); break;
      case "--label": a.label = v; break;
      case "--requests-out": a.requestsOut = v; break;
      case "--timeout": a.timeout = Number(v); break;
      case "--bytes-per-token": a.bytesPerToken = Number(v); break;
      case "--model": a.model = v; break;
      default: throw new Error(`[serve_load] unknown option ${k}`);
    }
  }
  if ((a.concurrency > 0) === (a.rate > 0))
    throw new Error("[serve_load] give exactly one of --concurrency N (closed loop) or --rate R (Poisson, requests/s)");
  return a;
}

// mulberry32: a small seeded generator, so every run and every server sees the same requests.
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const uniformInt = (r, [lo, hi]) => lo + Math.floor(r() * (hi - lo + 1));

// The request list: lengths and prompt text depend only on the seed and the ranges. Prompts are
// ASCII (Brown is), cut at a word start, so a byte-level tokenizer sees bytesPerToken x length.
function makeRequests(a) {
  const text = fs.readFileSync(a.corpus, "latin1").replace(/[^\x20-\x7e\n]/g, " ");
  const r = rng(a.seed * 7919 + 17);
  const reqs = [];
  for (let i = 0; i < a.numPrompts; i++) {
    const pl = uniformInt(r, a.promptLen), ol = uniformInt(r, a.outputLen);
    const n = Math.round(pl * a.bytesPerToken);
    let at = Math.floor(r() * (text.length - n - 64));
    while (at > 0 && text[at - 1] !== " " && text[at - 1] !== "\n") at--;
    reqs.push({ i, promptLen: pl, outputLen: ol, prompt: text.slice(at, at + n) });
  }
  return reqs;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: 4096 });
const now = () => performance.now();  // ms, monotonic

function getJson(url) {
  return new Promise((resolve, reject) => {
    http.get(url, { agent }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (body += d));
      res.on("end", () => {
        try { resolve(JSON.parse(body)); } catch (e) { reject(new Error(`${url}: ${res.statusCode} ${body.slice(0, 200)}`)); }
      });
    }).on("error", reject);
  });
}

// One streamed completion. Resolves (never rejects) to the request's timings. A kept-alive
// socket the server closed meanwhile fails before any byte comes back (Node's reusedSocket
// case): that request never reached the server, so it is sent again on a fresh socket.
function streamOne(a, model, req, tries = 0) {
  const body = JSON.stringify({
    model, prompt: req.prompt, max_tokens: req.outputLen, ignore_eos: true, temperature: 0,
    stream: true, stream_options: { include_usage: true },
  });
  const out = { i: req.i, prompt_len: req.promptLen, output_len: req.outputLen, ok: false,
    ttft: NaN, e2e: NaN, itl: [], chunks: 0, output_tokens: 0, prompt_tokens: 0, error: "",
    resent: tries };
  return new Promise((resolve) => {
    const t0 = now();
    let last = 0, buf = "", done = false, usage = null, status = 0;
    const finish = (err) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      out.e2e = now() - t0;
      if (err) out.error = String(err).slice(0, 300);
      else if (status !== 200) out.error = `HTTP ${status}: ${buf.slice(0, 200)}`;
      else if (!(out.chunks > 0)) out.error = "no content chunk";
      else {
        out.ok = true;
        out.output_tokens = usage?.completion_tokens ?? req.outputLen;
        out.prompt_tokens = usage?.prompt_tokens ?? 0;
        out.usage_counted = !!usage;
      }
      resolve(out);
    };
    const onEvent = (data, t) => {
      if (data === "[DONE]") return;
      let j;
      try { j = JSON.parse(data); } catch { return; }
      if (j.error) { out.error = JSON.stringify(j.error).slice(0, 200); return; }
      if (j.usage) usage = j.usage;
      const c = j.choices?.[0];
      const textPiece = c?.text ?? c?.delta?.content ?? "";
      if (textPiece.length === 0) return;
      if (out.chunks === 0) out.ttft = t - t0;
      else out.itl.push(t - last);
      last = t;
      out.chunks++;
    };
    const url = new URL(a.url + "/v1/completions");
    const rq = http.request(url, { method: "POST", agent,
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (res) => {
      status = res.statusCode;
      res.setEncoding("utf8");
      res.on("data", (d) => {
        const t = now();
        buf += d;
        if (status !== 200) return;
        let k;
        while ((k = buf.search(/\r?\n\r?\n/)) >= 0) {
          const ev = buf.slice(0, k);
          buf = buf.slice(buf[k] === "\r" ? k + 4 : k + 2);
          for (const line of ev.split(/\r?\n/))
            if (line.startsWith("data:")) onEvent(line.slice(5).trim(), t);
        }
      });
      res.on("end", () => finish(out.error || null));
      res.on("error", finish);
    });
    const timer = setTimeout(() => { rq.destroy(new Error("timeout")); }, a.timeout * 1000);
    rq.on("error", (err) => {
      if (rq.reusedSocket && status === 0 && !done && tries < 3) {
        done = true;
        clearTimeout(timer);
        streamOne(a, model, req, tries + 1).then(resolve);
        return;
      }
      finish(err);
    });
    rq.end(body);
  });
}

function summary(xs) {
  const v = xs.filter(Number.isFinite).sort((p, q) => p - q);
  if (v.length === 0) return { mean: null, median: null, p99: null, max: null };
  const q = (p) => {  // linear interpolation, as numpy.percentile
    const x = (v.length - 1) * p, lo = Math.floor(x), hi = Math.ceil(x);
    return v[lo] + (v[hi] - v[lo]) * (x - lo);
  };
  const r3 = (x) => Math.round(x * 1000) / 1000;
  return { mean: r3(v.reduce((s, x) => s + x, 0) / v.length), median: r3(q(0.5)), p99: r3(q(0.99)), max: r3(v[v.length - 1]) };
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  let model = a.model;
  if (!model) model = (await getJson(a.url + "/v1/models")).data?.[0]?.id ?? "default";
  const models = model.split(",");
  const modelOf = (req) => models[Math.max(0, req.i) % models.length];
  const reqs = makeRequests(a);
  for (let w = 0; w < a.warmup; w++) {
    const r = await streamOne(a, models[0], { i: -1, promptLen: 16, outputLen: 8, prompt: reqs[0].prompt.slice(0, 16 * a.bytesPerToken) });
    if (!r.ok) throw new Error(`[serve_load] the warm-up request failed: ${r.error}`);
  }
  const results = [];
  const start = now();
  if (a.concurrency > 0) {
    let next = 0;
    const worker = async () => {
      while (next < reqs.length) {
        const req = reqs[next++];
        results.push(await streamOne(a, modelOf(req), req));
      }
    };
    await Promise.all(Array.from({ length: Math.min(a.concurrency, reqs.length) }, worker));
  } else {
    const r = rng(a.seed * 104729 + 3);
    const pending = [];
    let t = 0;
    for (const req of reqs) {
      const wait = start + t - now();
      if (wait > 0) await new Promise((res) => setTimeout(res, wait));
      pending.push(streamOne(a, modelOf(req), req).then((x) => results.push(x)));
      t += (-Math.log(1 - r()) / a.rate) * 1000;
    }
    await Promise.all(pending);
  }
  const duration = (now() - start) / 1000;
  const ok = results.filter((x) => x.ok);
  const outTok = ok.reduce((s, x) => s + x.output_tokens, 0);
  const promptTok = ok.reduce((s, x) => s + (x.prompt_tokens || x.prompt_len), 0);
  const chunks = ok.reduce((s, x) => s + x.chunks, 0);
  const tpot = ok.filter((x) => x.output_tokens > 1).map((x) => (x.e2e - x.ttft) / (x.output_tokens - 1));
  const report = {
    label: a.label, url: a.url, model,
    mode: a.concurrency > 0 ? "closed" : "poisson",
    concurrency: a.concurrency || null, rate: a.rate || null,
    num_prompts: a.numPrompts, seed: a.seed, prompt_len: a.promptLen, output_len: a.outputLen,
    completed: ok.length, failed: results.length - ok.length,
    resent: results.reduce((s, x) => s + x.resent, 0),
    failures: [...new Set(results.filter((x) => !x.ok).map((x) => x.error))].slice(0, 5),
    duration_s: Math.round(duration * 1000) / 1000,
    request_throughput: ok.length / duration,
    output_throughput: outTok / duration,
    total_token_throughput: (outTok + promptTok) / duration,
    total_output_tokens: outTok, total_prompt_tokens: promptTok,
    output_tokens_from_usage: ok.every((x) => x.usage_counted),
    tokens_per_chunk: chunks ? outTok / chunks : null,
    ttft_ms: summary(ok.map((x) => x.ttft)),
    tpot_ms: summary(tpot),
    itl_ms: summary(ok.flatMap((x) => x.itl)),
    e2e_ms: summary(ok.map((x) => x.e2e)),
  };
  if (a.requestsOut)
    fs.writeFileSync(a.requestsOut, results.map((x) => JSON.stringify({ ...x, itl: x.itl.map((v) => Math.round(v * 1000) / 1000) })).join("\n") + "\n");
  console.log(JSON.stringify(report));
  agent.destroy();
}

main().catch((e) => { console.error(e.message || e); process.exit(1); });
