#include "kiln/serve/chat_page.h"

namespace kiln::serve {

// Plain HTML, CSS and JavaScript, no external resource: it streams /v1/chat/completions with
// fetch() and reads the Server-Sent Events itself; Stop aborts the fetch, which closes the
// connection, which cancels the request in the engine.
const std::string& chat_page_html() {
  static const std::string page = R"KILNHTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kiln chat</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; display: flex; height: 100vh; }
  #side { width: 260px; padding: 12px; background: #f3f1ee; overflow-y: auto; }
  #side label { display: block; font-size: 13px; margin-top: 10px; }
  #side input, #side textarea { width: 100%; box-sizing: border-box; }
  #main { flex: 1; display: flex; flex-direction: column; }
  #log { flex: 1; overflow-y: auto; padding: 12px; }
  .msg { white-space: pre-wrap; margin: 8px 0; padding: 8px 10px; border-radius: 6px; }
  .user { background: #dfe9f7; } .assistant { background: #eee; } .error { background: #f7dcdc; }
  .assistant[data-done="stopped"]::after { content: " [stopped]"; color: #888; font-style: italic; }
  #bar { display: flex; gap: 8px; padding: 12px; border-top: 1px solid #ccc; }
  #input { flex: 1; min-height: 40px; }
</style></head>
<body>
<div id="side">
  <b>kiln</b> <span id="model"></span>
  <label>System prompt<textarea id="system" rows="4"></textarea></label>
  <label>Temperature <input id="temperature" type="number" value="0.7" min="0" max="2" step="0.1"></label>
  <label>Top p <input id="top_p" type="number" value="1" min="0.01" max="1" step="0.05"></label>
  <label>Top k (0 = off) <input id="top_k" type="number" value="0" min="0" step="1"></label>
  <label>Max tokens <input id="max_tokens" type="number" value="128" min="1" step="1"></label>
  <label>Seed (empty = random) <input id="seed" type="number" step="1"></label>
  <label>API key <input id="key" type="password"></label>
  <p><button id="clear">New chat</button></p>
</div>
<div id="main">
  <div id="log"></div>
  <div id="bar">
    <textarea id="input" placeholder="Message"></textarea>
    <button id="send">Send</button><button id="stop" disabled>Stop</button>
  </div>
</div>
<script>
const $ = (id) => document.getElementById(id);
let history = [], controller = null;
function headers() {
  const h = { "Content-Type": "application/json" };
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}
function add(role, text) {
  const d = document.createElement("div");
  d.className = "msg " + role;
  d.textContent = text;
  $("log").appendChild(d);
  $("log").scrollTop = $("log").scrollHeight;
  return d;
}
async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    if (r.ok) $("model").textContent = (await r.json()).data[0].id;
  } catch (e) {}
}
async function send() {
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  history.push({ role: "user", content: text });
  add("user", text);
  const out = add("assistant", "");
  const messages = [];
  if ($("system").value.trim()) messages.push({ role: "system", content: $("system").value });
  const body = {
    messages: messages.concat(history), stream: true,
    temperature: Number($("temperature").value), top_p: Number($("top_p").value),
    max_tokens: Number($("max_tokens").value),
  };
  if (Number($("top_k").value) > 0) body.top_k = Number($("top_k").value);
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  controller = new AbortController();
  $("send").disabled = true; $("stop").disabled = false;
  let answer = "", shown = 0;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!r.ok) throw new Error((await r.json()).error.message);
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const ev = buf.slice(0, cut); buf = buf.slice(cut + 2);
        if (!ev.startsWith("data: ")) continue;
        const data = ev.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const c = chunk.choices[0];
        if (c && c.delta.content) answer += c.delta.content;
      }
      // Once per read, not per token: reading scrollHeight lays the page out, and a fast server
      // sends more tokens than a per-token layout keeps up with (a slower page reads more a time).
      if (answer.length !== shown) {
        out.textContent = answer;
        shown = answer.length;
        $("log").scrollTop = $("log").scrollHeight;
      }
    }
    out.dataset.done = "1";
  } catch (e) {
    if (e.name === "AbortError") { out.dataset.done = "stopped"; }
    else { out.className = "msg error"; out.textContent = String(e.message || e); }
  }
  history.push({ role: "assistant", content: answer });
  controller = null;
  $("send").disabled = false; $("stop").disabled = true;
}
$("send").onclick = send;
$("stop").onclick = () => controller && controller.abort();
$("clear").onclick = () => { history = []; $("log").innerHTML = ""; };
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});
$("key").addEventListener("change", loadModel);
loadModel();
</script>
</body></html>
)KILNHTML";
  return page;
}

}  // namespace kiln::serve
