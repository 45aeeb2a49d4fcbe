#!/usr/bin/env node
/*
 * Debian's Chromium, headless, driven with playwright-core, for the browser
 * tests of the admin page and of the Socket.IO Admin UI
 * (tests/support/browser.py). playwright-core brings no browser of its
 * own: it is pointed at CHROMIUM (default /usr/bin/chromium).
 *
 * Protocol: JSON lines. Commands on stdin: {id, cmd, ...}; answers on
 * stdout: {id, ok: true, value} or {id, ok: false, error}; the first line
 * is {ready: true, version} (or {ready: false, error}).
 *
 *   {cmd: "goto", url}                       navigate, wait for the load event
 *   {cmd: "click", selector}                 click (waits until it is visible and enabled)
 *   {cmd: "fill", selector, value}           type into an input
 *   {cmd: "waitFor", expression, timeout}    until the expression is truthy in the page; its value
 *   {cmd: "text", selector}                  the element's text
 *   {cmd: "eval", expression}                evaluate in the page (promises awaited)
 *   {cmd: "download", selector}              click, wait for the download; {name, text}
 *   {cmd: "screenshot", path, fullPage}      a PNG of the page
 *   {cmd: "quit"}
 *
 * Every request to another origin than the pages' own loopback servers is
 * aborted (the tests run offline; the official Admin UI names a font CDN)
 * and counted: {cmd: "external"} answers the URLs aborted so far. Page
 * errors and failed requests are printed on stderr for the test's log.
 *
 * Environment: CHROMIUM, WIDTH/HEIGHT of the viewport (default 1440x900),
 * LANG_TAG (default en-US).
 */
"use strict";
const fs = require("fs");
const readline = require("readline");
const { chromium } = require("playwright-core");

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WIDTH = Number(process.env.WIDTH || 1440);
const HEIGHT = Number(process.env.HEIGHT || 900);

function out(obj) { process.stdout.write(JSON.stringify(obj) + "\n"); }

const external = [];

async function main() {
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars",
        "--disable-background-networking", "--disable-component-update"],
    });
  } catch (e) {
    out({ ready: false, error: String(e && e.message || e) });
    process.exit(1);
  }
  const context = await browser.newContext({
    viewport: { width: WIDTH, height: HEIGHT },
    deviceScaleFactor: 1,
    locale: process.env.LANG_TAG || "en-US",
    acceptDownloads: true,
    // The admin page forbids eval (script-src 'self'); the driver evaluates
    // its checks as strings. The CSP itself is checked by test_admin_api.
    bypassCSP: true,
  });
  await context.route("**/*", (route) => {
    const url = new URL(route.request().url());
    const local = ["127.0.0.1", "localhost", "[::1]"].includes(url.hostname);
    if (local || url.protocol === "data:" || url.protocol === "blob:") return route.continue();
    external.push(url.href);
    return route.abort();
  });
  const page = await context.newPage();
  page.on("pageerror", (e) => process.stderr.write(`page error: ${e.message}\n`));
  page.on("console", (m) => { if (process.env.BROWSER_CONSOLE) process.stderr.write(`console: ${m.text()}\n`); });
  out({ ready: true, version: browser.version() });

  const commands = {
    async goto({ url }) { await page.goto(url, { waitUntil: "load" }); return page.url(); },
    async click({ selector }) { await page.click(selector, { timeout: 10000 }); return null; },
    async fill({ selector, value }) { await page.fill(selector, value, { timeout: 10000 }); return null; },
    async waitFor({ expression, timeout }) {
      const handle = await page.waitForFunction(expression, null, { timeout: Number(timeout || 10000), polling: "raf" });
      return handle.jsonValue();
    },
    async text({ selector }) { return page.textContent(selector, { timeout: 10000 }); },
    eval: ({ expression }) => page.evaluate(expression),
    async download({ selector }) {
      const [download] = await Promise.all([page.waitForEvent("download", { timeout: 10000 }), page.click(selector)]);
      const file = await download.path();
      return { name: download.suggestedFilename(), text: fs.readFileSync(file, "utf-8") };
    },
    async screenshot({ path, fullPage }) { await page.screenshot({ path, fullPage: !!fullPage }); return path; },
    external: async () => external.slice(),
    async quit() { await browser.close(); setImmediate(() => process.exit(0)); return null; },
  };

  let queue = Promise.resolve();
  readline.createInterface({ input: process.stdin }).on("line", (line) => {
    if (!line.trim()) return;
    let request;
    try { request = JSON.parse(line); } catch (e) { return; }
    // One command at a time, in order.
    queue = queue.then(async () => {
      const command = commands[request.cmd];
      if (!command) return out({ id: request.id, ok: false, error: `unknown command ${request.cmd}` });
      try {
        out({ id: request.id, ok: true, value: await command(request) });
      } catch (e) {
        out({ id: request.id, ok: false, error: String(e && e.message || e) });
      }
    });
  }).on("close", async () => { try { await browser.close(); } finally { process.exit(0); } });
}

main();
