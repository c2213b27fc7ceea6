#!/usr/bin/env node
// Drives the SDK in a real Chromium against a collector: serves e2e/page.html from
// a local http server on 127.0.0.1, shows an answer, copies text inside it, emits
// page_left, then navigates away so the page-hide beacon carries the events.
// Prints JSON of what it did (request id, event ids, types).
//
//   node e2e/run.mjs --endpoint http://127.0.0.1:8088 --write-key wk_test [--request-id UUID] [--page-port 8765] [--thumbs-up]
//   FEEDBACK_ENDPOINT=... FEEDBACK_WRITE_KEY=... E2E_PAGE_PORT=8765 node e2e/run.mjs
// The page's origin is http://127.0.0.1:<page port> (random unless given): a real
// collector refuses other origins with 403, so give a fixed port and allow it there
// (COLLECTOR_ALLOWED_ORIGINS=http://127.0.0.1:8765). Beacons carry the Origin header too.
// Without an endpoint it starts the dummy collector of collector.mjs, also prints
// what that received, and exits 1 unless every event arrived ("delivered"). Needs `npm run build` first and /usr/bin/chromium
// (or CHROMIUM=/path); playwright-core downloads no browser.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startDummyCollector } from "./collector.mjs";

const ROOT = fileURLToPath(new URL("..", import.meta.url)); // sdk/browser/
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".map": "application/json" };
export const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"];

/** Serves files under sdk/browser/ read-only on 127.0.0.1 (`port` 0: a random one). */
export async function serveStatic(port = 0) {
  const server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    const file = ROOT + path.replace(/^[/\\]+/, "");
    if (!file.startsWith(ROOT) || file.includes(`${sep}node_modules${sep}`)) return res.writeHead(403).end();
    try {
      const data = await readFile(file);
      res.writeHead(200, { "content-type": TYPES[extname(file)] || "application/octet-stream" }).end(data);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve, reject) => server.once("error", reject).listen(port, "127.0.0.1", resolve));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

/**
 * One run. Returns { requestId, pageUrl, events: [{event_id, type}], errors } where
 * events are those queued when the page was hidden (so expected at the collector).
 */
export async function run({
  endpoint,
  writeKey,
  requestId = "5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e6f",
  executablePath = process.env.CHROMIUM || "/usr/bin/chromium",
  pagePort = 0,
  thumbsUp = false,
} = {}) {
  if (!endpoint || !writeKey) throw new Error("endpoint and writeKey are required");
  const site = await serveStatic(pagePort);
  const browser = await chromium.launch({ executablePath, args: CHROMIUM_ARGS, headless: true, timeout: 15000 });
  try {
    const page = await browser.newPage();
    const q = new URLSearchParams({ endpoint, writeKey, requestId });
    const pageUrl = `${site.origin}/e2e/page.html?${q}`;
    await page.goto(pageUrl);
    await page.waitForFunction(() => window.fbReady === true, null, { timeout: 5000 });
    await page.click("#shown");
    await page.click("#copy");
    if (thumbsUp) await page.click("#thumbs-up");
    await page.click("#leave");
    const events = await page.evaluate(() => window.fb.pending().map((e) => ({ event_id: e.event_id, type: e.type })));
    const errors = await page.evaluate(() => window.fbErrors);
    // Leaving the page fires pagehide (and visibilitychange): the SDK hands the queue to sendBeacon.
    await page.goto("about:blank");
    return { requestId, pageOrigin: site.origin, pageUrl, events, errors };
  } finally {
    await browser.close();
    await site.close();
  }
}

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === normalize(process.argv[1])) {
  let endpoint = arg("endpoint") || process.env.FEEDBACK_ENDPOINT;
  const writeKey = arg("write-key") || process.env.FEEDBACK_WRITE_KEY || "wk_e2e";
  const dummy = endpoint ? null : await startDummyCollector();
  if (dummy) endpoint = dummy.endpoint;
  const result = await run({
    endpoint,
    writeKey,
    requestId: arg("request-id") || process.env.E2E_REQUEST_ID || undefined,
    pagePort: Number(arg("page-port") || process.env.E2E_PAGE_PORT || 0),
    thumbsUp: process.argv.includes("--thumbs-up"),
  });
  if (dummy) {
    const ids = new Set(result.events.map((e) => e.event_id));
    result.delivered = await dummy.waitFor(
      (rs) => new Set(rs.flatMap((r) => r.batch.events.map((e) => e.event_id)).filter((id) => ids.has(id))).size === ids.size,
      5000,
    );
    result.collector = dummy.received.map((r) => ({ contentType: r.headers["content-type"], secFetchMode: r.headers["sec-fetch-mode"], batch: r.batch }));
    await dummy.close();
  }
  console.log(JSON.stringify({ endpoint, ...result }, null, 2));
  if (result.delivered === false) process.exitCode = 1;
}
