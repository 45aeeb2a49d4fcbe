#!/usr/bin/env node
/*
 * A headless Chromium driven over the DevTools protocol, for the browser
 * tests of the admin page (tests/support/browser.py).
 *
 * Why not playwright or selenium: the DevTools protocol is a WebSocket
 * that Chromium opens itself, and the `ws` package is already installed
 * here (socket.io-client depends on it); a few commands (navigate,
 * evaluate, wait for a condition, screenshot) are all the tests need, so
 * there is nothing more to download (playwright-core would fetch its own
 * browser builds or pin a protocol version; selenium needs chromedriver).
 *
 * Protocol: JSON lines. Commands on stdin: {id, cmd, ...}; answers on
 * stdout: {id, ok: true, value} or {id, ok: false, error}; first line
 * {ready: true, version}.
 *
 *   {cmd: "goto", url}                      navigate, wait for the load event
 *   {cmd: "eval", expression}               evaluate (promises awaited); the value
 *   {cmd: "waitFor", expression, timeout}   until the expression is truthy (polled in the page)
 *   {cmd: "screenshot", path}               a PNG of the page
 *   {cmd: "quit"}
 *
 * Environment: CHROMIUM (default /usr/bin/chromium), WIDTH/HEIGHT of the
 * window (default 1440x900).
 */
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");
const readline = require("readline");
const WebSocket = require("ws");

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WIDTH = Number(process.env.WIDTH || 1440);
const HEIGHT = Number(process.env.HEIGHT || 900);

const profile = fs.mkdtempSync(path.join(os.tmpdir(), "crm_im-chromium-"));
const args = [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
  "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--metrics-recording-only", "--mute-audio",
  "--hide-scrollbars", "--force-device-scale-factor=1", "--lang=en-US",
  `--window-size=${WIDTH},${HEIGHT}`, `--user-data-dir=${profile}`, "--remote-debugging-port=0", "about:blank",
];
const chrome = spawn(CHROMIUM, args, { stdio: ["ignore", "ignore", "pipe"] });
let stderr = "";
let ws = null;
let nextId = 1;
const pending = new Map();
let sessionId = null;
const loadWaiters = [];

function out(obj) { process.stdout.write(JSON.stringify(obj) + "\n"); }

function cleanup() {
  try { chrome.kill("SIGKILL"); } catch (e) { /* gone */ }
  try { fs.rmSync(profile, { recursive: true, force: true }); } catch (e) { /* busy */ }
}
process.on("exit", cleanup);
chrome.on("exit", (code) => {
  if (!ws) out({ ready: false, error: `chromium exited (${code}): ${stderr.slice(-2000)}` });
  process.exit(ws ? 0 : 1);
});

function send(method, params, withSession = true) {
  const id = nextId++;
  const message = { id, method, params: params || {} };
  if (withSession && sessionId) message.sessionId = sessionId;
  ws.send(JSON.stringify(message));
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject, method }));
}

chrome.stderr.on("data", (data) => {
  stderr += data.toString();
  const match = /DevTools listening on (ws:\/\/\S+)/.exec(stderr);
  if (match && !ws) connect(match[1]);
});

async function connect(url) {
  ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 });
  ws.on("message", (raw) => {
    const message = JSON.parse(raw.toString());
    if (message.id && pending.has(message.id)) {
      const waiter = pending.get(message.id);
      pending.delete(message.id);
      if (message.error) waiter.reject(new Error(`${waiter.method}: ${message.error.message}`));
      else waiter.resolve(message.result);
    } else if (message.method === "Page.loadEventFired") {
      loadWaiters.splice(0).forEach((w) => w());
    } else if (message.method === "Runtime.consoleAPICalled" && process.env.BROWSER_CONSOLE) {
      process.stderr.write("console: " + JSON.stringify(message.params.args.map((a) => a.value)) + "\n");
    } else if (message.method === "Runtime.exceptionThrown") {
      process.stderr.write("page exception: " + JSON.stringify(message.params.exceptionDetails.exception || message.params.exceptionDetails.text) + "\n");
    }
  });
  ws.on("open", async () => {
    try {
      const version = await send("Browser.getVersion", {}, false);
      const { targetId } = await send("Target.createTarget", { url: "about:blank" }, false);
      ({ sessionId } = await send("Target.attachToTarget", { targetId, flatten: true }, false));
      await send("Page.enable");
      await send("Runtime.enable");
      await send("Emulation.setDeviceMetricsOverride", { width: WIDTH, height: HEIGHT, deviceScaleFactor: 1, mobile: false });
      out({ ready: true, version: version.product });
    } catch (e) {
      out({ ready: false, error: String(e) });
      process.exit(1);
    }
  });
  ws.on("close", () => process.exit(0));
}

async function evaluate(expression) {
  const result = await send("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true, userGesture: true });
  if (result.exceptionDetails) {
    const e = result.exceptionDetails;
    throw new Error((e.exception && (e.exception.description || e.exception.value)) || e.text);
  }
  return result.result.value;
}

const commands = {
  async goto({ url }) {
    const loaded = new Promise((resolve) => loadWaiters.push(resolve));
    const result = await send("Page.navigate", { url });
    if (result.errorText) throw new Error(`navigation failed: ${result.errorText}`);
    await loaded;
    return url;
  },
  eval: ({ expression }) => evaluate(expression),
  waitFor({ expression, timeout }) {
    const ms = Number(timeout || 10000);
    // Polled in the page on every animation frame (and at least every
    // 50 ms): no sleep on the test's side.
    return evaluate(`new Promise((resolve, reject) => {
      const deadline = Date.now() + ${ms};
      const check = () => {
        let value;
        try { value = (${expression}); } catch (e) { value = undefined; }
        if (value) return resolve(value);
        if (Date.now() > deadline) return reject(new Error("timed out waiting for: " + ${JSON.stringify(expression)}));
        setTimeout(check, 50);
      };
      check();
    })`);
  },
  async screenshot({ path: file }) {
    const { data } = await send("Page.captureScreenshot", { format: "png", captureBeyondViewport: false });
    fs.writeFileSync(file, Buffer.from(data, "base64"));
    return file;
  },
  async quit() {
    setImmediate(() => { cleanup(); process.exit(0); });
    return null;
  },
};

readline.createInterface({ input: process.stdin }).on("line", async (line) => {
  if (!line.trim()) return;
  let request;
  try { request = JSON.parse(line); } catch (e) { return; }
  const command = commands[request.cmd];
  if (!command) return out({ id: request.id, ok: false, error: `unknown command ${request.cmd}` });
  try {
    out({ id: request.id, ok: true, value: await command(request) });
  } catch (e) {
    out({ id: request.id, ok: false, error: e.message });
  }
}).on("close", () => { cleanup(); process.exit(0); });
