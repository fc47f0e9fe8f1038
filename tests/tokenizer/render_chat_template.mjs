// The oracle for kiln's chat-template renderer: renders each case of a JSON file,
// [{"source": template text, "vars": {messages, add_generation_prompt, bos_token, ...}}, ...],
// with @huggingface/jinja (installed by scripts/fetch_tokenizer_refs.sh) and writes
// [{"ok": true, "text": ...} | {"ok": false, "error": ...}, ...].
// Usage: node render_chat_template.mjs REFS_DIR IN.json OUT.json
import { readFileSync, writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [refs, inPath, outPath] = process.argv.slice(2);
const { Template } = await import(
  pathToFileURL(`${refs}/node_modules/@huggingface/jinja/dist/index.js`).href
);
const cases = JSON.parse(readFileSync(inPath, "utf8"));
const out = cases.map(({ source, vars }) => {
  try {
    return { ok: true, text: new Template(source).render(vars) };
  } catch (e) {
    return { ok: false, error: String(e && e.message ? e.message : e) };
  }
});
writeFileSync(outPath, JSON.stringify(out));
