#!/usr/bin/env node
// Feedback prompts in a real Chromium: the page (e2e/page.html?prompts=1) shows an
// answer, the user regenerates it, the SDK flushes by fetch; then it waits until the
// SDK hands a prompt to the page's onPrompt subscriber (from a batch answer or the
// GET /v1/prompts it makes after each acknowledged batch). Prints JSON
// {prompts, errors, pending}. Exits 1 when no prompt came within --timeout-ms.
//
//   node e2e/prompts.mjs --endpoint URL --write-key KEY --request-id UUID --user-id ID
//     [--page-port N] [--timeout-ms 30000]
// The collector must allow the page's origin http://127.0.0.1:<page port>.
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, serveStatic } from "./run.mjs";

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
};

const site = await serveStatic(Number(arg("page-port", "0")));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: CHROMIUM_ARGS,
  headless: true,
  timeout: 15000,
});
let report;
try {
  const page = await browser.newPage();
  const q = new URLSearchParams({
    endpoint: arg("endpoint"),
    writeKey: arg("write-key"),
    requestId: arg("request-id"),
    userId: arg("user-id"),
    prompts: "1",
    flushIntervalMs: "200",
  });
  await page.goto(`${site.origin}/e2e/page.html?${q}`);
  await page.waitForFunction(() => window.fbReady === true);
  await page.click("#shown");
  await page.click("#regenerate");
  await page.evaluate(() => window.fb.flush());
  const timeout = Number(arg("timeout-ms", "30000"));
  const came = await page
    .waitForFunction(() => window.fbPrompts.length > 0, null, { timeout, polling: 200 })
    .then(() => true, () => false);
  report = await page.evaluate(() => ({
    prompts: window.fbPrompts,
    errors: window.fbErrors,
    pending: window.fb.pending().map((e) => e.type),
  }));
  report.came = came;
} finally {
  await browser.close();
  await site.close();
}
console.log(JSON.stringify(report));
process.exit(report.came ? 0 : 1);
