/** Test doubles: a scripted collector behind `fetch`, and a recording `sendBeacon`. */
import { vi } from "vitest";
import type { FeedbackError, FeedbackEvent } from "../src/types.js";

export interface Sent {
  url: string;
  body: string;
  keepalive: boolean;
  batch: { sent_at: string; events: FeedbackEvent[] };
}

/**
 * One scripted answer: a status (plus headers and JSON), `"network"` for a failed
 * request, or `"hang"` for one that only ends when its signal aborts.
 */
export type Reply = number | "network" | "hang" | { status: number; headers?: Record<string, string>; json?: unknown };

/**
 * Installs a fake `fetch`. Each request takes the next scripted reply; when the
 * script is empty it answers 202 with everything accepted.
 */
export function fakeCollector(...script: Reply[]) {
  const sent: Sent[] = [];
  /** GET /v1/prompts: the URLs asked, and what each answer holds (tests may change it). */
  const gets: string[] = [];
  const prompts: { list: unknown[] } = { list: [] };
  const fetch = vi.fn(async (url: string, init: RequestInit) => {
    if (init.method === undefined) {
      gets.push(url);
      return { status: 200, ok: true, headers: { get: () => null }, json: async () => ({ prompts: prompts.list }) };
    }
    const body = String(init.body);
    sent.push({ url, body, keepalive: !!init.keepalive, batch: JSON.parse(body) });
    const r = script.shift() ?? 202;
    if (r === "network") throw new TypeError("Failed to fetch");
    if (r === "hang")
      return new Promise<never>((_, reject) =>
        init.signal?.addEventListener("abort", () => reject(new DOMException("timed out", "TimeoutError"))),
      );
    const { status, headers = {}, json } = typeof r == "number" ? { status: r } : r;
    const events = JSON.parse(body).events.length;
    return {
      status,
      ok: status >= 200 && status < 300,
      headers: { get: (h: string) => headers[h] ?? null },
      json: async () => json ?? { accepted: events, invalid: 0 },
    };
  });
  vi.stubGlobal("fetch", fetch);
  return { sent, gets, prompts, fetch, events: () => sent.flatMap((s) => s.batch.events) };
}

/** Installs `navigator.sendBeacon`, recording each Blob; `accept` decides its return value. */
export function fakeBeacon(accept = () => true) {
  const beacons: { url: string; blob: Blob }[] = [];
  const fn = vi.fn((url: string, data: Blob) => {
    beacons.push({ url, blob: data });
    return accept();
  });
  Object.defineProperty(navigator, "sendBeacon", { value: fn, configurable: true, writable: true });
  return {
    beacons,
    fn,
    /** The parsed batches, after checking each Blob is `text/plain`. */
    async batches() {
      return Promise.all(
        beacons.map(async (b) => {
          if (!b.blob.type.startsWith("text/plain")) throw new Error(`beacon type ${b.blob.type}`);
          return { text: await b.blob.text(), batch: JSON.parse(await b.blob.text()) as Sent["batch"] };
        }),
      );
    },
  };
}

export function removeBeacon() {
  Object.defineProperty(navigator, "sendBeacon", { value: undefined, configurable: true, writable: true });
}

/** Collects `onError` reports. */
export function errors() {
  const list: FeedbackError[] = [];
  return { list, onError: (e: FeedbackError) => void list.push(e) };
}

export const RID = "5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e6f";
export const RID2 = "6a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
