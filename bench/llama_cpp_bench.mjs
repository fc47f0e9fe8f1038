// llama.cpp's side of bench/infer_vs_llama_cpp.sh: prompt processing (pp) and generation (tg)
// tokens/s of a GGUF file through npm node-llama-cpp (its prebuilt CPU build), the way
// llama-bench measures them: pp = one batch of N random prompt tokens into an empty context;
// tg = N tokens generated one at a time (greedy) after a 1-token prompt. Mean and sd over reps.
//   node bench/llama_cpp_bench.mjs MODEL.gguf THREADS [PP=512] [TG=128] [REPS=5]
// prints one JSON line {"impl":"llama.cpp","pp_tokens_per_s":..,"pp_sd":..,"tg_tokens_per_s":..}
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(root, "data/llama_cpp/package.json"));
process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = "true";
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

const [modelPath, threadsArg, ppArg, tgArg, repsArg] = process.argv.slice(2);
const threads = Number(threadsArg || 2), pp = Number(ppArg || 512), tg = Number(tgArg || 128);
const reps = Number(repsArg || 5);
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({ contextSize: pp + tg + 16, batchSize: pp, threads });
const seq = context.getSequence();
const vocab = 256;  // byte tokens exist in every kiln export
let seed = 1;
const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) % vocab;

const stats = (xs) => {
  const m = xs.reduce((a, b) => a + b, 0) / xs.length;
  const sd = Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / Math.max(1, xs.length - 1));
  return [m, sd];
};
const ppRates = [], tgRates = [];
for (let r = 0; r < reps + 1; r++) {  // the first round warms up
  await seq.clearHistory();
  const prompt = Array.from({ length: pp }, rand);
  let t0 = process.hrtime.bigint();
  await seq.evaluateWithoutGeneratingNewTokens(prompt);
  const ppS = Number(process.hrtime.bigint() - t0) / 1e9;
  await seq.clearHistory();
  t0 = process.hrtime.bigint();
  let n = 0;
  for await (const _ of seq.evaluate([rand()], { temperature: 0 })) if (++n >= tg) break;
  const tgS = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r > 0) ppRates.push(pp / ppS), tgRates.push(tg / tgS);
}
const [ppm, pps] = stats(ppRates), [tgm, tgs] = stats(tgRates);
console.log(JSON.stringify({ impl: "llama.cpp", threads, pp, tg, pp_tokens_per_s: ppm, pp_sd: pps,
                             tg_tokens_per_s: tgm, tg_sd: tgs }));
await context.dispose();
await model.dispose();
await llama.dispose();
