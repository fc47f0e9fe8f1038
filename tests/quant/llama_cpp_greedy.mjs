// Greedy continuation of a GGUF model by llama.cpp (npm node-llama-cpp, prebuilt CPU binary):
//   node llama_cpp_greedy.mjs MODEL.gguf N_NEW ID,ID,... [THREADS]
// prints {"tokens": [...]} — the N_NEW token ids llama.cpp picks with temperature 0 after the
// prompt, given as token ids (no tokenization on llama.cpp's side). Never downloads or builds.
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = process.env.KILN_SOURCE_DIR || path.resolve(here, "../..");
const require = createRequire(path.join(root, "data/llama_cpp/package.json"));
process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = "true";
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

const [modelPath, nNew, ids, threads] = process.argv.slice(2);
if (!modelPath || !nNew || !ids) {
  console.error("usage: node llama_cpp_greedy.mjs MODEL.gguf N_NEW ID,ID,... [THREADS]");
  process.exit(2);
}
const prompt = ids.split(",").map(Number);
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({
  contextSize: Math.max(64, prompt.length + Number(nNew) + 8),
  batchSize: 512,
  threads: Number(threads || 2),
});
const seq = context.getSequence();
const out = [];
for await (const token of seq.evaluate(prompt, { temperature: 0 })) {
  out.push(token);
  if (out.length >= Number(nNew)) break;
}
console.log(JSON.stringify({ tokens: out }));
await context.dispose();
await model.dispose();
await llama.dispose();
