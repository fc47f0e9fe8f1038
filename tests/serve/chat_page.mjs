// The chat page (`/` of `kiln serve`) in headless Chromium (Debian's, driven by npm
// puppeteer-core; both installed by scripts/setup.sh):  node chat_page.mjs BASE_URL SCREENSHOT
// Sets a system prompt and the sampling controls, sends a message and checks the DOM: the user
// message, an assistant answer that arrived in several updates and equals the server's own
// (unstreamed, greedy) answer, and the request the page sent. Then sends a message too long to
// finish, presses Stop mid-stream and checks the page shows it stopped and the server's /metrics
// falls to no running request. Saves a screenshot of the page at SCREENSHOT and prints "ALL OK";
// any failed check throws (exit status 1) with what differed.
import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = process.env.KILN_SOURCE_DIR || path.resolve(here, "../..");
const require = createRequire(path.join(root, "data/serve_refs/package.json"));
const { default: puppeteer } = await import(require.resolve("puppeteer-core"));

const [base, screenshot] = process.argv.slice(2);
const chromium = process.env.KILN_CHROMIUM || "/usr/bin/chromium";
const wait = { timeout: 120000 };  // generous: the machine may be busy; nothing is timed

// kiln:num_requests_running from /metrics.
async function running() {
  const text = await (await fetch(base + "/metrics")).text();
  const m = text.match(/^kiln:num_requests_running\{[^}]*\} (\S+)$/m);
  assert.ok(m, "kiln:num_requests_running is in /metrics");
  return Number(m[1]);
}

// headless: true is Chromium's --headless=new; --no-sandbox because CI runs as root.
const browser = await puppeteer.launch({
  executablePath: chromium, headless: true, args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1000, height: 640 });
  const pageErrors = [], bodies = [], elsewhere = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("request", (r) => {
    if (r.url().endsWith("/v1/chat/completions")) bodies.push(JSON.parse(r.postData()));
    if (!r.url().startsWith(base + "/")) elsewhere.push(r.url());  // not self-contained
  });

  // Waits for `fn` in the page; on timeout, says what the chat showed.
  const until = async (fn) => {
    try {
      await page.waitForFunction(fn, wait);
    } catch (e) {
      const log = await page.$eval("#log", (l) => l.innerHTML.slice(0, 2000));
      throw new Error(`${e.message}: waiting for ${fn}; the chat shows ${log}`);
    }
  };
  await page.goto(base + "/", { waitUntil: "load" });
  await until(() => document.getElementById("model").textContent === "tiny");

  // The length of an assistant bubble's text at each change, in order: each `textContent = ...`
  // puts a new text node in the bubble (records come in batches, so read the node, not the bubble).
  await page.evaluate(() => {
    window.updates = [];
    new MutationObserver((records) => {
      for (const r of records)
        if (r.target.classList && r.target.classList.contains("assistant"))
          for (const n of r.addedNodes) window.updates.push(n.data.length);
    }).observe(document.getElementById("log"), { childList: true, subtree: true });
  });

  const fill = async (id, value) => {
    await page.$eval("#" + id, (e) => { e.value = ""; });
    await page.type("#" + id, String(value));
  };
  const system = "You are kiln, a terse assistant.";
  await fill("system", system);
  await fill("temperature", 0);
  await fill("top_p", 0.9);
  await fill("max_tokens", 24);
  await fill("input", "Hello kiln, how are you?");
  await page.click("#send");

  // The first answer: wait for the request to finish, then read the DOM.
  await until(() => document.querySelector(".msg.assistant[data-done], .msg.error"));
  const first = await page.evaluate(() => ({
    users: [...document.querySelectorAll(".msg.user")].map((e) => e.textContent),
    answers: [...document.querySelectorAll(".msg.assistant")].map((e) => e.textContent),
    done: document.querySelector(".msg.assistant").dataset.done,
    errors: document.querySelectorAll(".msg.error").length,
    send: document.getElementById("send").disabled,
    stop: document.getElementById("stop").disabled,
    input: document.getElementById("input").value,
    updates: window.updates,
  }));
  assert.deepEqual(first.users, ["Hello kiln, how are you?"]);
  assert.equal(first.errors, 0);
  assert.equal(first.done, "1");
  assert.equal(first.answers.length, 1);
  assert.ok(first.answers[0].length > 0, "the answer is empty");
  assert.equal(first.input, "");
  assert.deepEqual([first.send, first.stop], [false, true], "Send enabled, Stop disabled after");
  // Each update of the bubble longer than the one before, the last the whole answer. (How many
  // depends on how the network hands the page 24 quick tokens; the long answer below counts them.)
  const grew = first.updates.filter((n) => n > 0);
  for (let i = 1; i < grew.length; ++i) assert.ok(grew[i] > grew[i - 1], JSON.stringify(grew));
  assert.equal(grew.at(-1), first.answers[0].length);

  // The controls reached the request; the greedy answer equals the server's unstreamed one.
  assert.equal(bodies.length, 1);
  const sent = bodies[0];
  assert.equal(sent.stream, true);
  assert.deepEqual(sent.messages, [
    { role: "system", content: system },
    { role: "user", content: "Hello kiln, how are you?" },
  ]);
  assert.deepEqual([sent.temperature, sent.top_p, sent.max_tokens], [0, 0.9, 24]);
  const whole = await (await fetch(base + "/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...sent, stream: false }),
  })).json();
  assert.equal(first.answers[0], whole.choices[0].message.content);

  // The second message asks for more tokens than the tiny model makes before the test ends, so
  // it is still running when its bubble has grown twice: streamed, not shown at the end. Stop
  // pressed then ends it.
  await fill("max_tokens", 60000);
  await fill("input", "Tell me everything.");
  await page.evaluate(() => { window.updates = []; });
  await page.click("#send");
  await until(() => window.updates.filter((n) => n > 0).length >= 2);
  const streamed = await page.evaluate(() => window.updates);
  const growing = streamed.filter((n) => n > 0);
  for (let i = 1; i < growing.length; ++i) assert.ok(growing[i] > growing[i - 1], String(growing));
  assert.equal(await page.$eval("#stop", (b) => b.disabled), false, "Stop enabled while streaming");
  assert.equal(await running(), 1, "the second request runs while its answer streams");
  assert.equal(bodies.length, 2);
  assert.equal(bodies[1].messages.length, 4, "system, user, assistant, user");
  await page.click("#stop");
  await until(() => document.querySelector(".msg.assistant:nth-child(4)[data-done]"));
  const second = await page.evaluate(() => {
    const a = document.querySelectorAll(".msg.assistant")[1];
    return {
      done: a.dataset.done, className: a.className, length: a.textContent.length,
      marker: getComputedStyle(a, "::after").content,
      send: document.getElementById("send").disabled,
      stop: document.getElementById("stop").disabled,
    };
  });
  assert.equal(second.done, "stopped");
  assert.equal(second.className, "msg assistant");
  assert.equal(second.marker, '" [stopped]"', "the bubble shows it was stopped");
  assert.ok(second.length >= growing[1] && second.length < 60000, String(second.length));
  assert.deepEqual([second.send, second.stop], [false, true], "Send enabled, Stop disabled after");

  // Stop closed the connection, so the server cancels the request (bounded polling).
  let n = -1;
  for (let i = 0; i < 1200 && (n = await running()) !== 0; ++i)
    await new Promise((r) => setTimeout(r, 100));
  assert.equal(n, 0, "the stopped request still runs on the server");

  assert.deepEqual(pageErrors, []);
  assert.deepEqual(elsewhere, [], "the page loads nothing from elsewhere");
  await page.screenshot({ path: screenshot });
  console.log("screenshot: " + screenshot);
  console.log("ALL OK");
} finally {
  await browser.close();
}
