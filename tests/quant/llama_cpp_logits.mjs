// Teacher-forced logits of a GGUF model by llama.cpp (npm node-llama-cpp, prebuilt CPU binary):
//   node llama_cpp_logits.mjs MODEL.gguf ID,ID,... FROM [THREADS]
// evaluates the ids in one sequence and prints {"logits": [[...], ...]}: for each position
// p >= FROM - 1, llama.cpp's raw logits (indexed by token id) for the token after ids[0..p].
// Never downloads or builds.
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = process.env.KILN_SOURCE_DIR || path.resolve(here, "../..");
const require = createRequire(path.join(root, "data/llama_cpp/package.json"));
process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = "true";
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

const [modelPath, idsArg, fromArg, threads] = process.argv.slice(2);
if (!modelPath || !idsArg || !fromArg) {
  console.error("usage: node llama_cpp_logits.mjs MODEL.gguf ID,ID,... FROM [THREADS]");
  process.exit(2);
}
const ids = idsArg.split(",").map(Number);
const from = Number(fromArg);
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({
  contextSize: Math.max(64, ids.length + 8),
  batchSize: 512,
  threads: Number(threads || 2),
});
const seq = context.getSequence();
const input = ids.map((t, i) => (i >= from - 1 ? [t, { generateNext: { logits: true } }] : t));
const res = await seq.controlledEvaluate(input);
const out = [];
for (let i = from - 1; i < ids.length; ++i) {
  const m = res[i].next.logits;
  const row = new Array(m.size);
  for (const [tok, v] of m) row[tok] = v;
  out.push(row);
}
console.log(JSON.stringify({ logits: out }));
await context.dispose();
await model.dispose();
await llama.dispose();
