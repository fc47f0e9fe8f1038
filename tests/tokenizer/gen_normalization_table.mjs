// Writes src/kiln/tokenizer/normalization_table.inc: the data Unicode normalization (NFC, NFD,
// NFKC, NFKD) and lowercasing need, taken from Node's own String.prototype.normalize and
// toLowerCase, so kiln normalizes exactly as the JavaScript oracle (Transformers.js) does.
//   node tests/tokenizer/gen_normalization_table.mjs      (regenerate when Node's Unicode moves)
// Tables:
// - full canonical (NFD) and compatibility (NFKD, where it differs) decompositions per code point,
//   Hangul syllables excepted (algorithmic);
// - canonical combining classes as ranks: only their order matters to the algorithms, and Node
//   exposes the order (canonical reordering), not the numbers;
// - the primary composites as (first, second) -> composite, each checked with NFC;
// - per form, the runs of code points that are not "safe" (a safe one is a starter that maps to
//   itself and never combines with what precedes it: normalization may cut the text before it).
// - simple lowercase mappings (one code point to one or more).
import fs from 'fs'
import path from 'path'
import { fileURLToPath } from 'url'

const here = path.dirname(fileURLToPath(import.meta.url))
const out = path.join(here, '..', '..', 'src', 'kiln', 'tokenizer', 'normalization_table.inc')
const isHangul = (cp) => cp >= 0xac00 && cp <= 0xd7a3
const cps = (s) => Array.from(s, (c) => c.codePointAt(0))
const str = (a) => String.fromCodePoint(...a)
const hex = (n) => '0x' + n.toString(16).toUpperCase()

// Decompositions.
const canon = [], compat = [], lower = []
for (let cp = 0; cp <= 0x10ffff; cp++) {
  if (cp >= 0xd800 && cp <= 0xdfff) continue
  const s = String.fromCodePoint(cp)
  const lc = s.toLowerCase()
  if (lc !== s) lower.push([cp, cps(lc)])
  if (isHangul(cp)) continue
  const d = s.normalize('NFD'), kd = s.normalize('NFKD')
  if (d !== s) canon.push([cp, cps(d)])
  if (kd !== d) compat.push([cp, cps(kd)])
}

// Combining classes: a mark is a non-starter if it reorders against U+0316 (220) or U+0301 (230);
// non-starters sort by the comparator "x before y once reordered".
const swaps = (x, y) => ('a' + str([x, y])).normalize('NFD') === 'a' + str([y, x])
const marks = []
for (let cp = 0; cp <= 0x10ffff; cp++) {
  if (cp >= 0xd800 && cp <= 0xdfff) continue
  const s = String.fromCodePoint(cp)
  if (!/^\p{M}$/u.test(s) && cp !== 0x345) continue
  if (s.normalize('NFD') !== s) continue
  if ([0x316, 0x301].some((r) => swaps(cp, r) || swaps(r, cp)) || cp === 0x316 || cp === 0x301)
    marks.push(cp)
}
marks.sort((x, y) => (swaps(x, y) ? 1 : swaps(y, x) ? -1 : 0))
const ccc = new Map()
let rank = 0
for (let i = 0; i < marks.length; i++) {
  if (i === 0 || swaps(marks[i], marks[i - 1])) rank++
  ccc.set(marks[i], rank)
}
for (let i = 1; i < marks.length; i++)  // the comparator must be a total preorder
  if (swaps(marks[i - 1], marks[i])) throw new Error(`ccc order broken at ${hex(marks[i])}`)

// Primary composites: c with NFC(c) == c and a decomposition; its pair is (NFC of the
// decomposition without one mark, that mark), checked.
const compose = []
for (const [cp, d] of canon) {
  const s = String.fromCodePoint(cp)
  if (s.normalize('NFC') !== s || d.length < 2) continue
  let found = false
  for (let k = d.length - 1; k >= 1 && !found; k--) {
    const rest = cps(str(d.filter((_, i) => i !== k)).normalize('NFC'))
    if (rest.length === 1 && str([rest[0], d[k]]).normalize('NFC') === s) {
      compose.push([rest[0], d[k], cp])
      found = true
    }
  }
  if (!found) throw new Error(`no composition pair for ${hex(cp)}`)
}
compose.sort((a, b) => a[0] - b[0] || a[1] - b[1])
const seconds = new Set(compose.map((c) => c[1]))
for (let cp = 0x1161; cp <= 0x1175; cp++) seconds.add(cp)  // Hangul V and T jamo
for (let cp = 0x11a8; cp <= 0x11c2; cp++) seconds.add(cp)

// Unsafe runs per form: [NFD, NFKD, NFC, NFKC] as bit 1, 2, 4, 8.
const canonSet = new Set(canon.map((e) => e[0])), compatSet = new Set(compat.map((e) => e[0]))
const unsafeBits = (cp) => {
  if (cp >= 0xd800 && cp <= 0xdfff) return 0
  if (ccc.has(cp)) return 15
  const s = String.fromCodePoint(cp)
  let b = 0
  if (canonSet.has(cp) || isHangul(cp)) b |= 1
  if (canonSet.has(cp) || compatSet.has(cp) || isHangul(cp)) b |= 2
  if (s.normalize('NFC') !== s || seconds.has(cp)) b |= 4
  if (s.normalize('NFKC') !== s || seconds.has(cp)) b |= 8
  return b
}
const runs = []
let prev = -1
for (let cp = 0; cp <= 0x10ffff; cp++) {
  const b = unsafeBits(cp)
  if (b !== prev) { runs.push([cp, b]); prev = b }
}

// Output.
const data = []
const index = (list) => list.map(([cp, d]) => {
  const off = data.length
  data.push(...d)
  if (d.length > 31 || off >= 1 << 26) throw new Error('decomposition too long')
  return `{${hex(cp)}, ${(off << 5) | d.length}}`
})
const rows = (items, per) => {
  let t = ''
  for (let i = 0; i < items.length; i += per) t += items.slice(i, i + per).join(', ') + ',\n'
  return t
}
const canonIdx = index(canon), compatIdx = index(compat), lowerIdx = index(lower)
let text = `// Generated by tests/tokenizer/gen_normalization_table.mjs from Node ${process.version} ` +
  `(Unicode ${process.versions.unicode}). Do not edit.\n` +
  `// Decomposition and lowercase entries: {code point, offset << 5 | length} into kNormData.\n`
text += `constexpr uint32_t kCanonDecomp[][2] = {\n${rows(canonIdx, 6)}};\n`
text += `constexpr uint32_t kCompatDecomp[][2] = {\n${rows(compatIdx, 6)}};\n`
text += `constexpr uint32_t kLowercase[][2] = {\n${rows(lowerIdx, 6)}};\n`
text += `constexpr uint32_t kNormData[] = {\n${rows(data.map(hex), 12)}};\n`
text += `// {code point, rank of its canonical combining class} for every non-starter.\n`
text += `constexpr uint32_t kCombiningClass[][2] = {\n${rows([...marks].sort((x, y) => x - y).map((m) => `{${hex(m)}, ${ccc.get(m)}}`), 8)}};\n`
text += `// Primary composites: {first, second, composite}, sorted by (first, second).\n`
text += `constexpr uint32_t kCompose[][3] = {\n${rows(compose.map((c) => `{${c.map(hex).join(', ')}}`), 5)}};\n`
text += `// {first code point of a run, unsafe bits}: 1 NFD, 2 NFKD, 4 NFC, 8 NFKC.\n`
text += `constexpr uint32_t kUnsafe[][2] = {\n${rows(runs.map(([cp, b]) => `{${hex(cp)}, ${b}}`), 8)}};\n`
fs.writeFileSync(out, text)
console.log(`wrote ${out}: ${canon.length} canonical, ${compat.length} compatibility, ` +
  `${lower.length} lowercase, ${marks.length} marks in ${rank} classes, ${compose.length} ` +
  `composites, ${runs.length} runs`)
