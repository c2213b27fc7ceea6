#!/usr/bin/env node
// Drives the SDK in a real Chromium against a collector: serves e2e/page.html from
// a local http server on 127.0.0.1, shows an answer, copies text inside it, emits
// page_left, then navigates away so the page-hide beacon carries the events.
// Prints JSON of what it did (request id, event ids, types).
//
//   node e2e/run.mjs --endpoint http://127.0.0.1:8088 --write-key wk_test [--request-id UUID] [--page-port 8765] [--thumbs-up]
//   Journeys (see JOURNEYS and run() below): --journey copy-thumbs|read|regenerate|outage
//   Options (override the journey's): --thumbs-up --no-copy --link --regenerate --flush
//     --auto-page-left --second-tab --close --wait-ms N --flush-interval-ms N
//     --retry-base-ms N --retry-max-ms N --until-file PATH (writes PATH.queued, then waits
//     for PATH and until every tab's queue is acknowledged before leaving)
//   FEEDBACK_ENDPOINT=... FEEDBACK_WRITE_KEY=... E2E_PAGE_PORT=8765 node e2e/run.mjs
// The page's origin is http://127.0.0.1:<page port> (random unless given): a real
// collector refuses other origins with 403, so give a fixed port and allow it there
// (COLLECTOR_ALLOWED_ORIGINS=http://127.0.0.1:8765). Beacons carry the Origin header too.
// Without an endpoint it starts the dummy collector of collector.mjs, also prints
// what that received, and exits 1 unless every event arrived ("delivered"). Needs `npm run build` first and /usr/bin/chromium
// (or CHROMIUM=/path); playwright-core downloads no browser.
import { createServer } from "node:http";
import { existsSync } from "node:fs";
import { readFile, rename, writeFile } from "node:fs/promises";
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

/** Journeys by name (`--journey NAME`); explicit options override them. */
export const JOURNEYS = {
  // The default: shown, copied, (thumbs up with --thumbs-up), page_left, leave: all by beacon.
  "copy-thumbs": {},
  // Shown, copied, a link clicked; the queue is flushed by fetch (and acknowledged); the user
  // reads for `waitMs` after the answer was shown and navigates away: only page_left, made by
  // the SDK on pagehide, goes by the unload beacon.
  read: { link: true, flush: true, waitMs: 2300, autoPageLeft: true },
  // Shown, regenerated at once, the tab closed: page_left by the SDK on pagehide.
  regenerate: { copy: false, regenerate: true, autoPageLeft: true, exit: "close" },
  // Shown, copied, thumbs up, page_left while the collector is unreachable (fetch fails, the
  // events stay queued and in localStorage); a second tab adopts the stored queue (so both
  // tabs send the same events: at-least-once); once `untilFile` exists both tabs retry until
  // their queues are acknowledged, then leave.
  outage: { thumbsUp: true, flush: true, retryBaseMs: 200, retryMaxMs: 500, secondTab: true },
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitUntil(what, check, timeoutMs, everyMs = 100) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

const queued = (page) => page.evaluate(() => window.fb.pending().map((e) => ({ event_id: e.event_id, type: e.type })));

/**
 * One run. Returns { requestId, pageUrl, events: [{event_id, type}], errors, ... } where
 * events are those the page tracked before leaving (the SDK's page_left on pagehide, with
 * `autoPageLeft`, is made as the page goes, so it is not among them), `pendingAfterFlush`
 * (with `flush`) and `pendingAtLeave` what was still unacknowledged then (so expected to
 * come by the unload beacon), and `shownToLeaveMs` the time from the answer shown to leaving.
 *
 * Steps: open the page; click shown, then copy, link, regenerate, thumbs up as asked; with
 * `flush` await `fb.flush()`; wait until `waitMs` after shown; click page_left (unless
 * `autoPageLeft`); with `secondTab` open the page again in the same browser context (it
 * adopts the first tab's stored queue); with `untilFile` write `<untilFile>.queued`, wait
 * for `untilFile` to exist, then until every tab's queue is empty; leave every tab by
 * navigating away (`exit: "navigate"`) or closing it (`exit: "close"`).
 */
export async function run({
  endpoint,
  writeKey,
  requestId = "5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e6f",
  executablePath = process.env.CHROMIUM || "/usr/bin/chromium",
  pagePort = 0,
  journey,
  ...options
} = {}) {
  if (!endpoint || !writeKey) throw new Error("endpoint and writeKey are required");
  if (journey !== undefined && !(journey in JOURNEYS)) throw new Error(`unknown journey ${journey}`);
  const o = {
    copy: true, link: false, regenerate: false, thumbsUp: false, flush: false, waitMs: 0,
    autoPageLeft: false, secondTab: false, untilFile: undefined, exit: "navigate",
    flushIntervalMs: undefined, retryBaseMs: undefined, retryMaxMs: undefined, drainTimeoutMs: 30000,
    ...JOURNEYS[journey ?? "copy-thumbs"],
    ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)),
  };
  const site = await serveStatic(pagePort);
  const browser = await chromium.launch({ executablePath, args: CHROMIUM_ARGS, headless: true, timeout: 15000 });
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    const q = new URLSearchParams({ endpoint, writeKey, requestId });
    if (o.autoPageLeft) q.set("autoPageLeft", "1");
    for (const k of ["flushIntervalMs", "retryBaseMs", "retryMaxMs"]) if (o[k] !== undefined) q.set(k, String(o[k]));
    const pageUrl = `${site.origin}/e2e/page.html?${q}`;
    const open = async (p) => {
      await p.goto(pageUrl);
      await p.waitForFunction(() => window.fbReady === true, null, { timeout: 5000 });
    };
    await open(page);
    const tracked = new Map();
    const note = async () => {
      for (const e of await queued(page)) tracked.set(e.event_id, e);
    };
    await page.click("#shown");
    const shownAt = Date.now();
    if (o.copy) await page.click("#copy");
    if (o.link) await page.click("#answer-link");
    if (o.regenerate) await page.click("#regenerate");
    if (o.thumbsUp) await page.click("#thumbs-up");
    await note();
    const result = { requestId, pageOrigin: site.origin, pageUrl, journey: journey ?? "copy-thumbs" };
    if (o.flush) {
      await page.evaluate(() => window.fb.flush());
      result.pendingAfterFlush = await queued(page);
    }
    await sleep(shownAt + o.waitMs - Date.now());
    if (!o.autoPageLeft) await page.click("#leave");
    await note();
    const pages = [page];
    if (o.secondTab) {
      const second = await context.newPage();
      await open(second);
      pages.push(second);
      result.secondTabAdopted = await queued(second);
    }
    if (o.untilFile) {
      result.queuedBeforeUntilFile = await Promise.all(pages.map(queued));
      // Written whole, then renamed: whoever waits for it never reads half a file.
      await writeFile(`${o.untilFile}.queued.tmp`, JSON.stringify(result.queuedBeforeUntilFile));
      await rename(`${o.untilFile}.queued.tmp`, `${o.untilFile}.queued`);
      await waitUntil(o.untilFile, () => existsSync(o.untilFile), 60000);
      await waitUntil(
        "every tab's queue to be acknowledged",
        async () => (await Promise.all(pages.map(queued))).every((p) => p.length === 0),
        o.drainTimeoutMs,
      );
    }
    result.events = [...tracked.values()];
    result.errors = (await Promise.all(pages.map((p) => p.evaluate(() => window.fbErrors)))).flat();
    result.pendingAtLeave = await queued(page);
    result.shownToLeaveMs = Date.now() - shownAt;
    // Leaving fires pagehide (and visibilitychange): the SDK hands its queue to sendBeacon.
    for (const p of pages) {
      if (o.exit === "close") await p.close({ runBeforeUnload: true });
      else await p.goto("about:blank");
    }
    return result;
  } finally {
    await browser.close();
    await site.close();
  }
}

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}

/** A boolean flag: true when given, else undefined (the journey's choice stands). */
const flag = (name) => (process.argv.includes(`--${name}`) ? true : undefined);
const num = (name) => (arg(name) === undefined ? undefined : Number(arg(name)));

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
    journey: arg("journey"),
    thumbsUp: flag("thumbs-up"),
    copy: process.argv.includes("--no-copy") ? false : undefined,
    link: flag("link"),
    regenerate: flag("regenerate"),
    flush: flag("flush"),
    autoPageLeft: flag("auto-page-left"),
    secondTab: flag("second-tab"),
    waitMs: num("wait-ms"),
    flushIntervalMs: num("flush-interval-ms"),
    retryBaseMs: num("retry-base-ms"),
    retryMaxMs: num("retry-max-ms"),
    untilFile: arg("until-file"),
    exit: process.argv.includes("--close") ? "close" : undefined,
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
