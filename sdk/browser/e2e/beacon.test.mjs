// @vitest-environment node
// Real-browser test of the unload path (a mocked route would skip the browser's
// keepalive rules): Chromium loads e2e/page.html, the page shows an answer, copies
// text inside it, emits page_left and navigates away; the dummy collector must get
// the events by beacon. Skipped when /usr/bin/chromium (or $CHROMIUM) is missing.
import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDummyCollector } from "./collector.mjs";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, run, serveStatic } from "./run.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const EVENT_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe.skipIf(!existsSync(CHROMIUM))("real browser: page hide beacon", () => {
  let collector;
  beforeAll(async () => {
    collector = await startDummyCollector();
  });
  afterAll(() => collector?.close());

  it("delivers shown, copied and page_left by sendBeacon as text/plain, without the copied text", async () => {
    const requestId = "6a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
    const result = await run({ endpoint: collector.endpoint, writeKey: "wk_e2e", requestId, executablePath: CHROMIUM });
    expect(result.errors).toEqual([]);
    expect(result.events.map((e) => e.type)).toEqual(["response_shown", "response_copied", "page_left"]);
    const ids = result.events.map((e) => e.event_id);
    expect(new Set(ids).size).toBe(3);

    const arrived = await collector.waitFor(
      (rs) => new Set(rs.flatMap((r) => r.batch.events.map((e) => e.event_id))).size >= ids.length,
      5000,
    );
    expect(arrived).toBe(true);
    const received = collector.received;
    const events = received.flatMap((r) => r.batch.events);
    // Every request: the write key, a text/plain body (no preflight), a batch sent_at,
    // and sent by beacon (Fetch: sendBeacon is mode no-cors; the SDK's fetch would be cors).
    for (const r of received) {
      expect(r.key).toBe("wk_e2e");
      expect(r.headers["content-type"]).toMatch(/^text\/plain/);
      expect(r.headers["sec-fetch-mode"]).toBe("no-cors");
      expect(Date.parse(r.batch.sent_at)).not.toBeNaN();
      expect(r.body).not.toContain("SECRET-COPIED-TEXT");
    }
    // Exactly the queued events, each once (visibilitychange and pagehide both fired).
    expect(events.map((e) => e.event_id).sort()).toEqual([...ids].sort());
    for (const e of events) {
      expect(e.event_id).toMatch(EVENT_ID);
      expect(e.request_id).toBe(requestId);
      expect(Date.parse(e.occurred_at)).toBeLessThanOrEqual(Date.parse(received[0].batch.sent_at));
    }
    expect(events.find((e) => e.type === "response_copied").properties).toEqual({});
  }, 30_000);
});

describe.skipIf(!existsSync(CHROMIUM))("real browser: fetch path and localStorage across page loads", () => {
  let collector, site, browser;
  beforeAll(async () => {
    collector = await startDummyCollector();
    site = await serveStatic();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 15000 });
  });
  afterAll(async () => {
    await browser?.close();
    await site?.close();
    await collector?.close();
  });

  it("sends text/plain without a preflight, keeps events through a 503 and a reload, resends the same ids", async () => {
    collector.answer = () => 503;
    const page = await browser.newPage();
    const q = new URLSearchParams({ endpoint: collector.endpoint, writeKey: "wk_e2e", flushIntervalMs: "100" });
    await page.goto(`${site.origin}/e2e/page.html?${q}`);
    await page.waitForFunction(() => window.fbReady === true);
    await page.click("#shown");
    await page.click("#thumbs-up");
    const ids = await page.evaluate(() => window.fb.pending().map((e) => e.event_id));
    expect(ids).toHaveLength(2);
    expect(await collector.waitFor((rs) => rs.some((r) => r.status === 503), 5000)).toBe(true);
    const first = collector.received[0];
    expect(first.headers["sec-fetch-mode"]).toBe("cors"); // the SDK's fetch, not a beacon
    expect(first.headers["content-type"]).toMatch(/^text\/plain/);
    // Refused with 503 + Retry-After: still queued, and stored.
    expect(await page.evaluate(() => window.fb.pending().length)).toBe(2);
    const stored = await page.evaluate(() =>
      Object.keys(localStorage).filter((k) => k.startsWith("fbq:wk_e2e:")).flatMap((k) => JSON.parse(localStorage.getItem(k))),
    );
    expect(stored.map((e) => e.event_id)).toEqual(ids);

    // Next page load: the collector is back; the new page adopts the stored queue and sends it.
    collector.answer = () => 202;
    const before = collector.received.length;
    await page.reload();
    await page.waitForFunction(() => window.fbReady === true);
    const resent = (rs) =>
      rs.slice(before).filter((r) => r.headers["sec-fetch-mode"] === "cors" && r.status === 202).flatMap((r) => r.batch.events);
    expect(await collector.waitFor((rs) => resent(rs).length >= 2, 5000)).toBe(true);
    expect(resent(collector.received).map((e) => e.event_id)).toEqual(ids);
    await page.waitForFunction(() => window.fb.pending().length === 0);
    expect(await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith("fbq:")))).toEqual([]);
    // text/plain POSTs are "simple" requests: the browser never asked for a preflight.
    expect(collector.preflights).toEqual([]);
    await page.close();
  }, 30_000);
});
