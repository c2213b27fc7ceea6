/**
 * Wire format and the three ways out: `fetch` (normal flushes, answer read),
 * `sendBeacon` (page hiding), `fetch` with `keepalive` (where a beacon is refused).
 * Bodies are `text/plain` so neither needs a CORS preflight (DESIGN §11).
 */
import type { FeedbackEvent } from "./types.js";

/**
 * Most bytes in one body. Browsers allow 64 KiB of in-flight keepalive/beacon
 * body per page; staying under it (with room for a second small request) is
 * what lets an unload flush get out at all.
 */
export const MAX_BODY_BYTES = 64000;

const enc = /* @__PURE__ */ new TextEncoder();
const bytes = (s: string): number => enc.encode(s).length;

/**
 * Splits `events` (order kept) into chunks of at most `maxEvents` events whose
 * body stays under `maxBytes`. An event that alone is over the limit gets a
 * chunk of its own (a plain fetch can still carry it; the collector's limit is larger).
 */
export function chunk(events: FeedbackEvent[], maxEvents: number, maxBytes = MAX_BODY_BYTES): FeedbackEvent[][] {
  const out: FeedbackEvent[][] = [];
  let cur: FeedbackEvent[] = [];
  let size = 0;
  const overhead = bytes(body([]));
  for (const e of events) {
    const n = bytes(JSON.stringify(e)) + 1;
    if (cur.length && (cur.length >= maxEvents || overhead + size + n > maxBytes)) {
      out.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(e);
    size += n;
  }
  if (cur.length) out.push(cur);
  return out;
}

/** The batch body; `sent_at` is the device clock now, so each try carries its own send time. */
export const body = (events: FeedbackEvent[]): string =>
  JSON.stringify({ sent_at: new Date().toISOString(), events });

export interface Answer {
  /** HTTP status; 0 when the request failed (network, CORS, offline). */
  status: number;
  /** The raw `Retry-After` header (readable cross-origin only if the collector exposes it). */
  retryAfter: string | null;
  /** Events the collector counted `invalid` in a 2xx answer. */
  invalid: number;
  /** The `prompts` of a 2xx answer (unchecked: see prompts.ts). */
  prompts?: unknown;
}

/** A request that hangs this long counts as failed, so one stuck request cannot stall the queue. */
export const TIMEOUT_MS = 30000;

/** POSTs one body with `fetch`; never throws. */
export async function post(url: string, data: string): Promise<Answer> {
  try {
    const r = await fetch(url, {
      method: "POST",
      body: data,
      credentials: "omit",
      signal: typeof AbortSignal != "undefined" && AbortSignal.timeout ? AbortSignal.timeout(TIMEOUT_MS) : undefined,
    });
    let invalid = 0;
    let prompts: unknown;
    if (r.ok) {
      try {
        const j = await r.json();
        invalid = +j.invalid || 0;
        prompts = j.prompts;
      } catch {
        // A 2xx without the JSON body still means accepted.
      }
    }
    return { status: r.status, retryAfter: r.headers.get("Retry-After"), invalid, prompts };
  } catch {
    return { status: 0, retryAfter: null, invalid: 0 };
  }
}

/** GETs `url` (a simple request: no preflight) and returns its JSON `prompts`; never throws. */
export async function getPrompts(url: string): Promise<unknown> {
  try {
    const r = await fetch(url, { credentials: "omit" });
    return r.ok ? (await r.json()).prompts : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Hands one body to the browser for delivery after the page is gone: `sendBeacon`
 * with a `text/plain` Blob, else `fetch` with `keepalive`. True when the browser
 * took it; delivery itself is never confirmed, so callers keep the events queued.
 */
export function beacon(url: string, data: string): boolean {
  const n = typeof navigator != "undefined" ? navigator : undefined;
  try {
    if (n && n.sendBeacon && n.sendBeacon(url, new Blob([data], { type: "text/plain" }))) return true;
  } catch {
    // Some browsers throw instead of returning false; fall back below.
  }
  if (bytes(data) > MAX_BODY_BYTES) return false;
  try {
    fetch(url, { method: "POST", body: data, keepalive: true, credentials: "omit" }).catch(() => {});
    return true;
  } catch {
    return false;
  }
}

/** Milliseconds a `Retry-After` header asks for (seconds or an HTTP date), or undefined. */
export function retryAfterMs(h: string | null, now = Date.now()): number | undefined {
  if (!h) return undefined;
  const s = +h;
  const ms = s >= 0 ? s * 1000 : Date.parse(h) - now;
  return ms >= 0 ? ms : undefined;
}
