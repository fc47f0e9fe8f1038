// The official OpenAI client (npm openai@6, installed by scripts/fetch_serve_refs.sh) pointed at
// a running `kiln serve`, unchanged:  node openai_client.mjs BASE_URL MODEL
// Checks the parsed objects field by field (chat and completions, streamed and whole, n = 2,
// stop, seed reproducibility, usage, errors as APIError) and prints "ALL OK" at the end; any
// failed check throws (exit status 1) with what differed.
import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = process.env.KILN_SOURCE_DIR || path.resolve(here, "../..");
const require = createRequire(path.join(root, "data/serve_refs/package.json"));
const { default: OpenAI } = await import(require.resolve("openai"));

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
const now = Math.floor(Date.now() / 1000);

function checkUsage(u, prompt) {
  assert.equal(typeof u.prompt_tokens, "number");
  if (prompt !== undefined) assert.equal(u.prompt_tokens, prompt);
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
  assert.equal(typeof u.prompt_tokens_details.cached_tokens, "number");
  assert.ok(u.prompt_tokens_details.cached_tokens <= u.prompt_tokens);
}

// Models.
const models = await client.models.list();
assert.deepEqual(models.data.map((m) => m.id), [model]);
assert.equal(models.data[0].object, "model");

// Chat, whole.
const messages = [
  { role: "system", content: "be brief" },
  { role: "user", content: "the cat" },
];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
assert.match(chat.id, /^chatcmpl-/);
assert.equal(chat.object, "chat.completion");
assert.equal(chat.model, model);
assert.ok(Math.abs(chat.created - now) < 600);
assert.equal(chat.choices.length, 1);
assert.equal(chat.choices[0].index, 0);
assert.equal(chat.choices[0].message.role, "assistant");
assert.equal(typeof chat.choices[0].message.content, "string");
assert.ok(["stop", "length"].includes(chat.choices[0].finish_reason));
checkUsage(chat.usage);
assert.ok(chat.usage.completion_tokens <= 12);
if (chat.choices[0].finish_reason === "length") assert.equal(chat.usage.completion_tokens, 12);

// Chat, streamed with usage: the same text, role first, finish reason last, usage at the end.
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 12, temperature: 0, stream: true,
  stream_options: { include_usage: true },
});
let text = "", sawRole = false, finish = null, usage = null, ids = new Set();
for await (const chunk of stream) {
  ids.add(chunk.id);
  assert.equal(chunk.object, "chat.completion.chunk");
  if (chunk.usage) { usage = chunk.usage; assert.equal(chunk.choices.length, 0); continue; }
  const c = chunk.choices[0];
  if (c.delta.role) { assert.equal(c.delta.role, "assistant"); assert.equal(text, ""); sawRole = true; }
  assert.ok(sawRole, "the role comes in the first delta");
  text += c.delta.content ?? "";
  if (c.finish_reason) finish = c.finish_reason;
}
assert.equal(ids.size, 1);
assert.equal(text, chat.choices[0].message.content);
assert.equal(finish, chat.choices[0].finish_reason);
checkUsage(usage, chat.usage.prompt_tokens);
assert.equal(usage.completion_tokens, chat.usage.completion_tokens);

// Completions: n = 2 sampled with a seed reproduce; the samples differ from each other.
const sampled = { model, prompt: "a dog", max_tokens: 16, temperature: 1, n: 2, seed: 1234 };
const s1 = await client.completions.create(sampled);
const s2 = await client.completions.create(sampled);
assert.equal(s1.object, "text_completion");
assert.match(s1.id, /^cmpl-/);
assert.equal(s1.choices.length, 2);
assert.deepEqual(s1.choices.map((c) => c.index), [0, 1]);
assert.deepEqual(s1.choices.map((c) => c.text), s2.choices.map((c) => c.text));
assert.notEqual(s1.choices[0].text, s1.choices[1].text);
checkUsage(s1.usage, 5);
assert.equal(s1.usage.completion_tokens, 32);
for (const c of s1.choices) { assert.equal(c.finish_reason, "length"); assert.equal(c.text.length, 16); }

// Stop: cut exactly before the first occurrence, finish_reason "stop".
const greedy = await client.completions.create({ model, prompt: "the river", max_tokens: 30, temperature: 0 });
const full = greedy.choices[0].text;
assert.equal(full.length, 30);
const stopAt = full.slice(10, 13);
const cut = await client.completions.create({ model, prompt: "the river", max_tokens: 30, temperature: 0, stop: [stopAt, "\u0000never"] });
assert.equal(cut.choices[0].text, full.slice(0, full.indexOf(stopAt)));
assert.equal(cut.choices[0].finish_reason, "stop");

// Completions, streamed: the deltas add up to the greedy text.
const cs = await client.completions.create({ model, prompt: "the river", max_tokens: 30, temperature: 0, stream: true });
let ctext = "", cfinish = null;
for await (const chunk of cs) {
  assert.equal(chunk.object, "text_completion");
  ctext += chunk.choices[0].text;
  if (chunk.choices[0].finish_reason) cfinish = chunk.choices[0].finish_reason;
}
assert.equal(ctext, full);
assert.equal(cfinish, "length");

// Logprobs: chat (content entries, top_logprobs) and completions (the legacy arrays).
const lchat = await client.chat.completions.create({
  model, messages, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2, ignore_eos: true,
});
const lc = lchat.choices[0].logprobs.content;
assert.equal(lc.length, 6);
assert.equal(lc.map((e) => e.token).join(""), lchat.choices[0].message.content);
for (const e of lc) {
  assert.equal(typeof e.logprob, "number");
  assert.ok(e.logprob <= 0);
  assert.deepEqual(e.bytes, [...Buffer.from(e.token, "utf8")]);
  assert.equal(e.top_logprobs.length, 2);
  assert.equal(e.top_logprobs[0].token, e.token);
}
const lcomp = await client.completions.create({ model, prompt: "the river", max_tokens: 5, temperature: 0, logprobs: 3 });
const ll = lcomp.choices[0].logprobs;
assert.equal(ll.tokens.join(""), lcomp.choices[0].text);
assert.equal(ll.token_logprobs.length, 5);
assert.deepEqual(ll.text_offset, [0, 1, 2, 3, 4]);
for (let i = 0; i < 5; ++i) assert.equal(ll.top_logprobs[i][ll.tokens[i]], ll.token_logprobs[i]);

// Errors arrive as the client's typed errors with OpenAI's fields.
await assert.rejects(
  client.completions.create({ model, prompt: "x", max_tokens: -1 }),
  (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "max_tokens");
await assert.rejects(
  client.chat.completions.create({ model: "no-such-model", messages }),
  (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === "model_not_found");

console.log("ALL OK");
