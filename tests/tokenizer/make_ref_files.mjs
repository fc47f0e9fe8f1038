// Writes the reference vocabularies that only exist inside the npm oracles as files kiln loads:
//   llama3/tokenizer.json  Hugging Face form of llama3-tokenizer-js (Split + ByteLevel,
//                          ignore_merges, 256 added special tokens)
//   llama3.tiktoken        the same ranks as Meta's tokenizer.model (tiktoken format)
//   llama2.model           a SentencePiece BPE ModelProto of llama-tokenizer-js's vocabulary:
//                          scores follow its merge order, byte fallback, dummy prefix
//   llama2/tokenizer.json  the same vocabulary as Hugging Face writes Llama 2's (normalizer
//                          Prepend + Replace, byte_fallback BPE with its merges)
//   node make_ref_files.mjs OUT_DIR   (run by scripts/fetch_tokenizer_refs.sh)
import fs from 'fs'
import path from 'path'
import { fileURLToPath, pathToFileURL } from 'url'

const here = path.dirname(fileURLToPath(import.meta.url))
const refs = process.env.KILN_TOKENIZER_REFS ||
  path.join(here, '..', '..', 'data', 'tokenizer_refs', 'node_modules')
const load = (p) => import(pathToFileURL(path.join(refs, p)).href)
const out = process.argv[2]
fs.mkdirSync(path.join(out, 'llama3'), { recursive: true })
fs.mkdirSync(path.join(out, 'llama2'), { recursive: true })

// GPT-2's bytes_to_unicode, inverted.
const unicodeToByte = new Map()
{
  const bs = []
  for (let b = 33; b <= 126; b++) bs.push(b)
  for (let b = 161; b <= 172; b++) bs.push(b)
  for (let b = 174; b <= 255; b++) bs.push(b)
  const cs = bs.slice()
  let n = 0
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++ }
  bs.forEach((b, i) => unicodeToByte.set(String.fromCharCode(cs[i]), b))
}
const spelledToBytes = (s) => Buffer.from(Array.from(s, (c) => unicodeToByte.get(c)))

// ---- Llama 3 ----
{
  const m = await load('llama3-tokenizer-js/bundle/llama3-tokenizer-with-baked-data.js')
  const tok = m.default
  const nBase = 128000
  const vocab = {}
  for (let i = 0; i < nBase; i++) vocab[tok.vocabById[i]] = i
  const merges = [...tok.merges.entries()].sort((a, b) => a[1] - b[1]).map((e) => e[0])
  const added = []
  for (let i = nBase; i < tok.vocabById.length; i++)
    added.push({ id: i, content: tok.vocabById[i], single_word: false, lstrip: false,
                 rstrip: false, normalized: false, special: true })
  const regex = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
  const json = {
    version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer: null,
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
             end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: true,
             vocab, merges },
  }
  fs.writeFileSync(path.join(out, 'llama3', 'tokenizer.json'), JSON.stringify(json))
  const lines = []
  for (let i = 0; i < nBase; i++)
    lines.push(`${spelledToBytes(tok.vocabById[i]).toString('base64')} ${i}`)
  fs.writeFileSync(path.join(out, 'llama3.tiktoken'), lines.join('\n') + '\n')
}

// ---- Llama 2 (SentencePiece ModelProto, hand-encoded protobuf) ----
{
  const m = await load('llama-tokenizer-js/llama-tokenizer.js')
  const tok = m.default
  const pieces = tok.vocabById
  // Score: minus the rank of the first merge that makes the piece (SentencePiece merges the
  // highest score first); pieces no merge makes keep 0 (bytes, controls) or -1e9.
  const score = new Array(pieces.length).fill(null)
  const ranked = [...tok.merges.entries()].sort((a, b) => a[1] - b[1])
  ranked.forEach(([pair, _], r) => {
    const id = tok.vocabByString.get(pair.replace(' ', ''))
    if (id !== undefined && score[id] === null) score[id] = -r
  })
  // Protobuf writer: each message is an array of byte arrays, joined at the end.
  const varint = (v) => { const b = []; while (v > 127) { b.push((v & 127) | 128); v = Math.floor(v / 128) } b.push(v); return Buffer.from(b) }
  const key = (field, wire) => varint(field * 8 + wire)
  const lenField = (field, buf) => Buffer.concat([key(field, 2), varint(buf.length), buf])
  const intField = (field, v) => Buffer.concat([key(field, 0), varint(v)])
  const floatField = (field, v) => { const f = Buffer.alloc(4); f.writeFloatLE(v); return Buffer.concat([key(field, 5), f]) }
  const parts = []
  for (let i = 0; i < pieces.length; i++) {
    const p = pieces[i]
    const type = i === 0 ? 2 : i <= 2 ? 3 : /^<0x[0-9A-F]{2}>$/.test(p) ? 6 : 1
    const s = score[i] ?? (type === 1 ? -1e9 : 0)
    const fields = [lenField(1, Buffer.from(p, 'utf8')), floatField(2, s)]
    if (type !== 1) fields.push(intField(3, type))
    parts.push(lenField(1, Buffer.concat(fields)))
  }
  parts.push(lenField(2, Buffer.concat([intField(3, 2), intField(35, 1)])))  // BPE, byte_fallback
  parts.push(lenField(3, Buffer.concat([lenField(1, Buffer.from('identity')), intField(3, 1), intField(4, 0)])))
  const bytes = Buffer.concat(parts)
  fs.writeFileSync(path.join(out, 'llama2.model'), bytes)

  const vocab = {}
  pieces.forEach((p, i) => { vocab[p] = i })
  const added = ['<unk>', '<s>', '</s>'].map((content, id) => ({ id, content, single_word: false,
    lstrip: false, rstrip: false, normalized: false, special: true }))
  const json = {
    version: '1.0', truncation: null, padding: null, added_tokens: added,
    normalizer: { type: 'Sequence', normalizers: [
      { type: 'Prepend', prepend: '\u2581' },
      { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] },
    pre_tokenizer: null, post_processor: null,
    decoder: { type: 'Sequence', decoders: [
      { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
      { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null,
             end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab,
             merges: ranked.map((e) => e[0]) },
  }
  fs.writeFileSync(path.join(out, 'llama2', 'tokenizer.json'), JSON.stringify(json))
}
console.log(`[refs] wrote ${out}/llama3/tokenizer.json, llama3.tiktoken, llama2.model, llama2/tokenizer.json`)
