// @vitest-environment node
/**
 * Server-side rendering imports and even creates the client where there is no
 * window, document, navigator.sendBeacon or localStorage: nothing may throw, and
 * events still go out by fetch.
 */
import { afterEach, expect, it, vi } from "vitest";
import { createFeedback } from "../src/index.js";
import { fakeCollector, RID } from "./fakes.js";

afterEach(() => vi.unstubAllGlobals());

it("works without DOM globals", async () => {
  expect(typeof window).toBe("undefined");
  const c = fakeCollector();
  const fb = createFeedback({ endpoint: "https://c.example.com", writeKey: "wk" });
  expect(fb.shown(RID, "q")).toMatch(/^[0-9a-f-]{36}$/);
  fb.beacon(); // no sendBeacon: falls back to fetch with keepalive
  await fb.flush();
  await fb.shutdown();
  expect(c.sent.map((s) => s.keepalive)).toEqual([true, false]);
  expect(fb.pending()).toEqual([]);
});
