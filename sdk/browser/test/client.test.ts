import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createFeedback } from "../src/index.js";
import type { FeedbackClient, FeedbackOptions } from "../src/types.js";
import { errors, fakeBeacon, fakeCollector, removeBeacon, RID, RID2, UUID } from "./fakes.js";

const EP = "https://collect.example.com/";
let clients: FeedbackClient[] = [];
/** A client on the fake collector; shut down after the test so its window listeners go. */
const make = (o: Partial<FeedbackOptions> = {}) => {
  const c = createFeedback({ endpoint: EP, writeKey: "wk_1", storage: null, ...o });
  clients.push(c);
  return c;
};
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

beforeEach(() => {
  vi.useFakeTimers({ now: new Date("2026-11-22T10:00:00Z") });
  localStorage.clear();
  removeBeacon();
});
afterEach(async () => {
  fakeCollector();
  await Promise.all(clients.map((c) => c.shutdown()));
  clients = [];
  vi.useRealTimers();
  vi.unstubAllGlobals();
  vi.restoreAllMocks();
});

describe("track and batching", () => {
  it("stamps event_id and occurred_at at the call, sends sent_at at send time, text/plain to /v1/events?key=", async () => {
    const c = fakeCollector();
    const fb = make({ flushIntervalMs: 3000, session_id: "s-1", user_id: "u-1" });
    const id = fb.shown(RID, "How do I rotate my key?");
    expect(id).toMatch(UUID);
    await vi.advanceTimersByTimeAsync(1000);
    fb.track(RID, "response_copied");
    await vi.advanceTimersByTimeAsync(1999);
    expect(c.sent).toHaveLength(0); // not before the interval
    await vi.advanceTimersByTimeAsync(1);
    expect(c.sent).toHaveLength(1);
    const { url, body, batch } = c.sent[0]!;
    expect(url).toBe("https://collect.example.com/v1/events?key=wk_1");
    expect(typeof body).toBe("string"); // a string body is sent as text/plain: no CORS preflight
    expect(batch.sent_at).toBe("2026-11-22T10:00:03.000Z");
    expect(batch.events).toEqual([
      {
        event_id: id,
        type: "response_shown",
        request_id: RID,
        session_id: "s-1",
        user_id: "u-1",
        occurred_at: "2026-11-22T10:00:00.000Z",
        properties: { prompt_text: "How do I rotate my key?" },
      },
      expect.objectContaining({ type: "response_copied", occurred_at: "2026-11-22T10:00:01.000Z", properties: {} }),
    ]);
    expect(fb.pending()).toEqual([]);
  });

  it("sends at once when maxBatch events wait, drains the queue, never more than maxBatch per request", async () => {
    const c = fakeCollector();
    const fb = make({ maxBatch: 3, flushIntervalMs: 60_000 });
    fb.rate(RID, true);
    fb.rate(RID, true);
    await vi.advanceTimersByTimeAsync(59_999);
    expect(c.sent).toHaveLength(0);
    for (let i = 0; i < 5; i++) fb.rate(RID, i % 2 == 0);
    await vi.advanceTimersByTimeAsync(0);
    expect(c.sent.map((s) => s.batch.events.length)).toEqual([3, 3, 1]);
    const ids = c.events().map((e) => e.event_id);
    expect(new Set(ids).size).toBe(7);
  });

  it("splits a flush into bodies under 64 KiB, counting bytes not characters, order kept", async () => {
    const c = fakeCollector();
    const fb = make({ maxBatch: 50 });
    // 40 events of ~6000 UTF-8 bytes (3000 two-byte chars): ~240 KB in all.
    for (let i = 0; i < 40; i++) fb.shown(RID, `${i} ` + "é".repeat(3000));
    await fb.flush();
    expect(c.sent.length).toBeGreaterThan(3);
    for (const s of c.sent) expect(new TextEncoder().encode(s.body).length).toBeLessThan(64 * 1024);
    expect(c.events().map((e) => (e.properties.prompt_text as string).split(" ")[0])).toEqual(
      Array.from({ length: 40 }, (_, i) => String(i)),
    );
  });

  it("truncates prompt_text to the schema's 16384 characters", async () => {
    const c = fakeCollector();
    const fb = make();
    fb.shown(RID, "x".repeat(20000));
    await fb.flush();
    expect((c.events()[0]!.properties.prompt_text as string).length).toBe(16384);
  });
});

describe("validation", () => {
  it("refuses request ids that are not UUID v1-v5, through onError, and queues nothing", () => {
    const e = errors();
    const fb = make(e);
    expect(fb.track("not-a-uuid", "response_copied")).toBeNull();
    expect(fb.rate("5f2b8c1e-3d4a-6b6c-9e7f-1a2b3c4d5e6f", true)).toBeNull(); // version 6
    expect(fb.track(null, "page_left")).toBeNull();
    expect(fb.pageLeft()).toBeNull(); // no answer shown yet
    expect(fb.rateSession("", true)).toBeNull();
    expect(fb.pending()).toEqual([]);
    expect(e.list.map((x) => x.reason)).toEqual(["invalid", "invalid", "invalid", "invalid", "invalid"]);
    expect(e.list[0]!.message).toContain("not-a-uuid");
    expect(fb.rate(RID.toUpperCase(), true)).toMatch(UUID);
    expect(fb.rateSession("chat-42", false)).toMatch(UUID);
    const s = fb.pending()[1]!;
    expect(s).toMatchObject({ type: "session_feedback_given", session_id: "chat-42", properties: { rating: false } });
    expect(s.request_id).toBeUndefined();
  });

  it("warns on the console when no onError is given", () => {
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    make().track("nope", "response_copied");
    expect(warn).toHaveBeenCalledOnce();
    expect(String(warn.mock.calls[0]![0])).toContain("response_copied refused");
  });
});

describe("retries", () => {
  it("honours Retry-After on 503 and 429 and resends the same event_ids with a new sent_at", async () => {
    const c = fakeCollector(
      { status: 503, headers: { "Retry-After": "7" } },
      { status: 429, headers: { "Retry-After": "2" } },
    );
    const fb = make({ retryBaseMs: 100 });
    fb.shown(RID);
    fb.rate(RID, true);
    const ids = fb.pending().map((e) => e.event_id);
    await fb.flush();
    expect(c.sent).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(6999);
    await fb.flush(); // an explicit flush waits for Retry-After too
    expect(c.sent).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(c.sent).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1999);
    expect(c.sent).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(c.sent).toHaveLength(3);
    for (const s of c.sent) expect(s.batch.events.map((e) => e.event_id)).toEqual(ids);
    expect(c.sent.map((s) => s.batch.sent_at)).toEqual([
      "2026-11-22T10:00:00.000Z",
      "2026-11-22T10:00:07.000Z",
      "2026-11-22T10:00:09.000Z",
    ]);
    expect(c.sent[2]!.batch.events[0]!.occurred_at).toBe("2026-11-22T10:00:00.000Z");
    expect(fb.pending()).toEqual([]);
  });

  it("accepts Retry-After as an HTTP date", async () => {
    const c = fakeCollector({ status: 503, headers: { "Retry-After": "Sun, 22 Nov 2026 10:00:30 GMT" } });
    const fb = make();
    fb.rate(RID, true);
    await fb.flush();
    await vi.advanceTimersByTimeAsync(29_999);
    expect(c.sent).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(c.sent).toHaveLength(2);
  });

  it("backs off exponentially with jitter on network errors and 5xx, up to retryMaxMs", async () => {
    const c = fakeCollector("network", 500, 502, 408, 504, 500);
    const random = vi.spyOn(Math, "random").mockReturnValue(0.999999); // jitter factor ~1
    const fb = make({ retryBaseMs: 1000, retryMaxMs: 8000 });
    fb.rate(RID, true);
    await fb.flush();
    const times: number[] = [];
    let t = 0;
    while (c.sent.length < 7 && t < 100_000) {
      const n = c.sent.length;
      await vi.advanceTimersByTimeAsync(100);
      t += 100;
      if (c.sent.length > n) times.push(t);
    }
    // Delays 1 s, 2 s, 4 s, 8 s, then capped at 8 s.
    expect(times.map((x, i) => x - (times[i - 1] ?? 0))).toEqual([1000, 2000, 4000, 8000, 8000, 8000]);
    expect(fb.pending()).toEqual([]);
    random.mockReturnValue(0);
    // Jitter: with random() = 0 the wait is half the backoff.
    fakeCollector(500);
    fb.rate(RID, false);
    await fb.flush();
    const f = vi.mocked(fetch);
    await vi.advanceTimersByTimeAsync(499);
    expect(f).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(f).toHaveBeenCalledTimes(2);
  });

  it("gives up on a request that hangs after 30 s and retries it", async () => {
    const c = fakeCollector("hang");
    vi.spyOn(Math, "random").mockReturnValue(0.999999);
    // happy-dom's AbortSignal.timeout runs on real timers; put it on the fake clock.
    vi.spyOn(AbortSignal, "timeout").mockImplementation((ms) => {
      const ctl = new AbortController();
      setTimeout(() => ctl.abort(new DOMException("timed out", "TimeoutError")), ms);
      return ctl.signal;
    });
    const fb = make({ retryBaseMs: 1000 });
    const id = fb.rate(RID, true);
    void fb.flush();
    await vi.advanceTimersByTimeAsync(29_999);
    expect(c.sent).toHaveLength(1);
    expect(fb.pending()).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1 + 1000);
    expect(c.sent).toHaveLength(2);
    expect(c.sent[1]!.batch.events[0]!.event_id).toBe(id);
    expect(fb.pending()).toEqual([]);
  });

  it("waits at least a second on Retry-After: 0 (no tight loop)", async () => {
    const c = fakeCollector({ status: 429, headers: { "Retry-After": "0" } });
    const fb = make();
    fb.rate(RID, true);
    await fb.flush();
    await vi.advanceTimersByTimeAsync(999);
    expect(c.sent).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(c.sent).toHaveLength(2);
  });

  it("survives an onError that throws", async () => {
    const c = fakeCollector(401);
    const fb = make({
      onError: () => {
        throw new Error("app bug");
      },
    });
    expect(fb.track("bad", "response_copied")).toBeNull();
    fb.rate(RID, true);
    await fb.flush();
    fb.rate(RID, false);
    await fb.flush();
    expect(c.sent).toHaveLength(2);
    expect(fb.pending()).toEqual([]);
  });

  it("drops 400/401/403 without retrying and says what was refused", async () => {
    for (const status of [400, 401, 403]) {
      const c = fakeCollector(status);
      const e = errors();
      const fb = make(e);
      fb.rate(RID, true);
      await fb.flush();
      await vi.advanceTimersByTimeAsync(120_000);
      expect(c.sent).toHaveLength(1);
      expect(fb.pending()).toEqual([]);
      expect(e.list).toHaveLength(1);
      expect(e.list[0]).toMatchObject({ reason: "refused", status, events: [{ type: "feedback_given" }] });
      expect(e.list[0]!.message).toContain(`HTTP ${status}`);
    }
  });

  it("splits a batch on 413, and reports a single event that is still too large", async () => {
    const c = fakeCollector(413, 202, 413);
    const e = errors();
    const fb = make(e);
    fb.rate(RID, true);
    fb.rate(RID2, false);
    await fb.flush();
    expect(c.sent.map((s) => s.batch.events.length)).toEqual([2, 1, 1]);
    expect(e.list).toHaveLength(1);
    expect(e.list[0]).toMatchObject({ reason: "too_large", status: 413, events: [{ request_id: RID2 }] });
    expect(fb.pending()).toEqual([]);
  });

  it("reports events the collector counted invalid in its 202", async () => {
    fakeCollector({ status: 202, json: { accepted: 1, invalid: 1 } });
    const e = errors();
    const fb = make(e);
    fb.rate(RID, true);
    fb.rate(RID, false);
    await fb.flush();
    expect(e.list).toHaveLength(1);
    expect(e.list[0]).toMatchObject({ reason: "invalid", status: 202 });
    expect(e.list[0]!.message).toContain("1 of 2");
  });

  it("retries at once when the browser comes back online", async () => {
    const c = fakeCollector("network");
    const fb = make({ retryBaseMs: 30_000 });
    fb.rate(RID, true);
    await fb.flush();
    window.dispatchEvent(new Event("online"));
    await vi.advanceTimersByTimeAsync(0);
    expect(c.sent).toHaveLength(2);
    expect(fb.pending()).toEqual([]);
    await fb.shutdown();
  });
});

describe("localStorage queue", () => {
  const key = (k: string) => Object.keys(localStorage).filter((x) => x.startsWith(k));

  it("keeps unacknowledged events across page loads and sends them from the next one", async () => {
    const c = fakeCollector("network");
    const first = make({ storage: localStorage });
    const id = first.shown(RID, "q");
    await first.flush();
    expect(key("fbq:wk_1:")).toHaveLength(1);
    // "Reload": a new client on the same storage adopts the stored queue.
    const second = make({ storage: localStorage });
    expect(second.pending().map((e) => e.event_id)).toEqual([id]);
    expect(key("fbq:wk_1:")).toHaveLength(1); // adopted, and written back under the new client's key
    await vi.advanceTimersByTimeAsync(0);
    expect(c.sent.at(-1)!.batch.events.map((e) => e.event_id)).toEqual([id]);
    expect(second.pending()).toEqual([]);
    expect(key("fbq:wk_1:")).toHaveLength(0); // acknowledged: gone from storage
    await first.shutdown();
    await second.shutdown();
  });

  it("does not adopt another write key's queue", () => {
    fakeCollector("network");
    make({ storage: localStorage, writeKey: "other" }).rate(RID, true);
    expect(make({ storage: localStorage }).pending()).toEqual([]);
  });

  it("is bounded: the oldest events are dropped and reported", () => {
    fakeCollector();
    const e = errors();
    const fb = make({ storage: localStorage, maxQueue: 3, flushIntervalMs: 60_000, ...e });
    const ids = [0, 1, 2, 3, 4].map((i) => fb.rate(RID, i % 2 == 0));
    expect(fb.pending().map((x) => x.event_id)).toEqual(ids.slice(2));
    const stored = JSON.parse(localStorage.getItem(key("fbq:wk_1:")[0]!)!);
    expect(stored.map((x: { event_id: string }) => x.event_id)).toEqual(ids.slice(2));
    expect(e.list.map((x) => [x.reason, x.events.map((v) => v.event_id)])).toEqual([
      ["queue_full", [ids[0]]],
      ["queue_full", [ids[1]]],
    ]);
  });

  it("bounds adopted queues too", () => {
    fakeCollector("network");
    for (let i = 0; i < 3; i++) make({ storage: localStorage, maxQueue: 10 }).rate(RID, true);
    const e = errors();
    const fb = make({ storage: localStorage, maxQueue: 2, ...e });
    expect(fb.pending()).toHaveLength(2);
    expect(e.list[0]).toMatchObject({ reason: "queue_full" });
    expect(e.list[0]!.events).toHaveLength(1);
  });

  it("keeps working in memory when storage throws", async () => {
    const c = fakeCollector();
    const broken = {
      length: 0,
      key: () => null,
      getItem: () => null,
      setItem: () => {
        throw new DOMException("quota", "QuotaExceededError");
      },
      removeItem: () => {},
    };
    const fb = make({ storage: broken });
    fb.rate(RID, true);
    await fb.flush();
    expect(c.events()).toHaveLength(1);
  });
});

describe("helpers", () => {
  it("copy inside the element sends response_copied and never the copied text", async () => {
    const c = fakeCollector();
    document.body.innerHTML = `<div id="answer"><p>SECRET-ANSWER-TEXT</p></div><p id="outside">other</p>`;
    const el = document.getElementById("answer")!;
    const fb = make();
    const stop = fb.watchCopy(el, RID);
    const p = el.querySelector("p")!;
    const sel = window.getSelection()!;
    const range = document.createRange();
    range.selectNodeContents(p);
    sel.removeAllRanges();
    sel.addRange(range);
    p.dispatchEvent(new Event("copy", { bubbles: true }));
    document.getElementById("outside")!.dispatchEvent(new Event("copy", { bubbles: true }));
    stop();
    p.dispatchEvent(new Event("copy", { bubbles: true })); // after stop(): not counted
    await fb.flush();
    expect(c.events().map((e) => [e.type, e.request_id, e.properties])).toEqual([["response_copied", RID, {}]]);
    expect(c.sent[0]!.body).not.toContain("SECRET");
  });

  it("link clicks inside the element send link_clicked with the URL", async () => {
    const c = fakeCollector();
    document.body.innerHTML = `<div id="answer">See <a href="https://docs.example.com/keys"><b>docs</b></a> and <span>text</span></div>`;
    const el = document.getElementById("answer")!;
    const fb = make();
    fb.watchLinks(el, RID);
    el.querySelector("b")!.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    el.querySelector("span")!.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    el.querySelector("a")!.dispatchEvent(new MouseEvent("auxclick", { bubbles: true, button: 1 }));
    await fb.flush();
    expect(c.events().map((e) => [e.type, e.properties])).toEqual([
      ["link_clicked", { url: "https://docs.example.com/keys" }],
      ["link_clicked", { url: "https://docs.example.com/keys" }],
    ]);
  });

  it("suggestions, thumbs and page_left default to the last shown answer", async () => {
    const c = fakeCollector();
    const fb = make();
    fb.suggestion(RID, "shown");
    fb.suggestion(RID, "accepted");
    fb.suggestion(RID, "modified");
    fb.suggestion(RID, "rejected");
    fb.retained(RID, 311, 420);
    fb.shown(RID2);
    fb.pageLeft();
    fb.track(RID, "results_shown", { result_count: 3 });
    fb.track(RID, "score_reported", { scores: { groundedness: 87, toxic: false } });
    await fb.flush();
    expect(c.events().map((e) => [e.type, e.request_id])).toEqual([
      ["suggestion_shown", RID],
      ["suggestion_accepted", RID],
      ["suggestion_modified", RID],
      ["suggestion_rejected", RID],
      ["suggestion_retained", RID],
      ["response_shown", RID2],
      ["page_left", RID2],
      ["results_shown", RID],
      ["score_reported", RID],
    ]);
    expect(c.events().find((e) => e.type == "suggestion_retained")!.properties).toEqual({
      retained_chars: 311,
      suggested_chars: 420,
    });
    for (const e of c.events()) {
      expect(e.event_id).toMatch(UUID);
      expect(e.occurred_at).toMatch(ISO);
    }
  });
});

describe("page hide", () => {
  it("pagehide beacons the queue as text/plain and keeps it until a fetch is acknowledged", async () => {
    const c = fakeCollector();
    const b = fakeBeacon();
    const fb = make({ flushIntervalMs: 5000 });
    fb.shown(RID, "prompt");
    fb.rate(RID, true);
    window.dispatchEvent(new Event("pagehide"));
    const [one, ...rest] = await b.batches();
    expect(rest).toEqual([]);
    expect(b.beacons[0]!.url).toBe("https://collect.example.com/v1/events?key=wk_1");
    expect(one!.batch.sent_at).toMatch(ISO);
    expect(one!.batch.events.map((e) => e.type)).toEqual(["response_shown", "feedback_given"]);
    expect(c.sent).toHaveLength(0);
    // A beacon is never confirmed: the events stay queued, and the next fetch resends the same ids.
    expect(fb.pending()).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(5000);
    expect(c.events().map((e) => e.event_id)).toEqual(one!.batch.events.map((e) => e.event_id));
    expect(fb.pending()).toEqual([]);
  });

  it("visibilitychange to hidden beacons; the pagehide after it does not send the same events again", async () => {
    fakeCollector();
    const b = fakeBeacon();
    const fb = make({ autoPageLeft: true });
    fb.shown(RID);
    const vis = vi.spyOn(document, "visibilityState", "get").mockReturnValue("hidden");
    document.dispatchEvent(new Event("visibilitychange"));
    window.dispatchEvent(new Event("pagehide"));
    const batches = await b.batches();
    expect(batches.map((x) => x.batch.events.map((e) => e.type))).toEqual([["response_shown"], ["page_left"]]);
    // Visible again, then hidden: whatever is still unacknowledged goes out again.
    vis.mockReturnValue("visible");
    document.dispatchEvent(new Event("visibilitychange"));
    vis.mockReturnValue("hidden");
    document.dispatchEvent(new Event("visibilitychange"));
    expect((await b.batches()).at(-1)!.batch.events.map((e) => e.type)).toEqual(["response_shown", "page_left"]);
    expect(fb.pending()[1]!.request_id).toBe(RID);
  });

  it("falls back to fetch with keepalive when sendBeacon refuses or is missing", async () => {
    const c = fakeCollector();
    const b = fakeBeacon(() => false);
    const fb = make();
    fb.rate(RID, true);
    window.dispatchEvent(new Event("pagehide"));
    expect(b.fn).toHaveBeenCalledOnce();
    expect(c.sent).toHaveLength(1);
    expect(c.sent[0]!.keepalive).toBe(true);
    removeBeacon();
    fb.rate(RID, false);
    fb.beacon(); // only what was not beaconed yet
    expect(c.sent).toHaveLength(2);
    expect(c.sent[1]!.keepalive).toBe(true);
    expect(c.sent[1]!.batch.events.map((e) => e.properties.rating)).toEqual([false]);
    // Visible again (happy-dom's state): no send, but the page may hide again later,
    // so the next beacon carries everything still unacknowledged.
    document.dispatchEvent(new Event("visibilitychange"));
    expect(c.sent).toHaveLength(2);
    fb.beacon();
    expect(c.sent[2]!.batch.events.map((e) => e.properties.rating)).toEqual([true, false]);
  });

  it("beacons in chunks under 64 KiB", async () => {
    fakeCollector();
    const b = fakeBeacon();
    const fb = make({ maxBatch: 500, maxQueue: 500 });
    for (let i = 0; i < 30; i++) fb.shown(RID, "p".repeat(10_000));
    fb.beacon();
    const batches = await b.batches();
    expect(batches.length).toBeGreaterThanOrEqual(5);
    for (const x of batches) expect(new TextEncoder().encode(x.text).length).toBeLessThan(64 * 1024);
    expect(batches.flatMap((x) => x.batch.events)).toHaveLength(30);
  });

  it("shutdown flushes and removes its listeners", async () => {
    const c = fakeCollector();
    const b = fakeBeacon();
    const fb = make();
    fb.rate(RID, true);
    await fb.shutdown();
    expect(c.events()).toHaveLength(1);
    fb.rate(RID, true);
    window.dispatchEvent(new Event("pagehide"));
    expect(b.fn).not.toHaveBeenCalled();
  });
});
