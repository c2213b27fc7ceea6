import { afterEach, describe, expect, it, vi } from "vitest";
import { isRequestId, uuid } from "../src/ids.js";
import { chunk, MAX_BODY_BYTES, retryAfterMs } from "../src/transport.js";
import type { FeedbackEvent } from "../src/types.js";
import { RID } from "./fakes.js";

const V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

afterEach(() => vi.unstubAllGlobals());

describe("uuid", () => {
  it("uses crypto.randomUUID when there is one", () => {
    vi.stubGlobal("crypto", { randomUUID: () => "from-randomUUID" });
    expect(uuid()).toBe("from-randomUUID");
  });

  it("falls back to getRandomValues (plain-http pages have no randomUUID)", () => {
    const getRandomValues = vi.fn((b: Uint8Array) => b.fill(0xff));
    vi.stubGlobal("crypto", { getRandomValues });
    expect(uuid()).toBe("ffffffff-ffff-4fff-bfff-ffffffffffff");
    expect(getRandomValues).toHaveBeenCalledOnce();
  });

  it("falls back to Math.random without crypto, still a unique v4", () => {
    vi.stubGlobal("crypto", undefined);
    const ids = new Set(Array.from({ length: 1000 }, uuid));
    expect(ids.size).toBe(1000);
    for (const id of ids) expect(id).toMatch(V4);
  });
});

describe("isRequestId", () => {
  it("accepts UUID v1-v5 of the RFC 4122 variant, any case, and nothing else", () => {
    expect(isRequestId(RID)).toBe(true);
    expect(isRequestId(RID.toUpperCase())).toBe(true);
    expect(isRequestId("c232ab00-9414-11ec-b3c8-9f6bdeced846")).toBe(true); // v1
    for (const bad of [
      "5f2b8c1e-3d4a-0b6c-9e7f-1a2b3c4d5e6f", // version 0
      "5f2b8c1e-3d4a-7b6c-9e7f-1a2b3c4d5e6f", // version 7
      "5f2b8c1e-3d4a-4b6c-7e7f-1a2b3c4d5e6f", // NCS variant
      "5f2b8c1e3d4a4b6c9e7f1a2b3c4d5e6f",
      ` ${RID}`,
      "",
      null,
      42,
    ])
      expect(isRequestId(bad)).toBe(false);
  });
});

describe("retryAfterMs", () => {
  const now = Date.parse("2026-11-22T10:00:00Z");
  it("reads seconds and HTTP dates", () => {
    expect(retryAfterMs("7", now)).toBe(7000);
    expect(retryAfterMs("0", now)).toBe(0);
    expect(retryAfterMs("Sun, 22 Nov 2026 10:01:00 GMT", now)).toBe(60_000);
  });
  it("ignores what it cannot use", () => {
    for (const h of [null, "", "soon", "-3", "Sun, 22 Nov 2026 09:00:00 GMT"]) expect(retryAfterMs(h, now)).toBeUndefined();
  });
});

describe("chunk", () => {
  const ev = (n: number, text = "x"): FeedbackEvent => ({
    event_id: `id-${n}`,
    type: "response_shown",
    request_id: RID,
    occurred_at: "2026-11-22T10:00:00.000Z",
    properties: { prompt_text: text },
  });
  const size = (c: FeedbackEvent[]) =>
    new TextEncoder().encode(JSON.stringify({ sent_at: "2026-11-22T10:00:00.000Z", events: c })).length;

  it("caps events per chunk", () => {
    const c = chunk(Array.from({ length: 7 }, (_, i) => ev(i)), 3);
    expect(c.map((x) => x.map((e) => e.event_id))).toEqual([["id-0", "id-1", "id-2"], ["id-3", "id-4", "id-5"], ["id-6"]]);
  });

  it("keeps every body under the byte limit, counting multibyte characters", () => {
    const evs = Array.from({ length: 30 }, (_, i) => ev(i, "日本".repeat(1500 + i * 13))); // ~9-10 KB each
    const chunks = chunk(evs, 500);
    expect(chunks.length).toBeGreaterThan(3);
    for (const c of chunks) expect(size(c)).toBeLessThanOrEqual(MAX_BODY_BYTES);
    // Greedy: each chunk would have gone over the limit with the next event.
    for (let i = 0; i + 1 < chunks.length; i++) expect(size([...chunks[i]!, chunks[i + 1]![0]!])).toBeGreaterThan(MAX_BODY_BYTES);
    expect(chunks.flat()).toEqual(evs);
  });

  it("gives an event over the limit a chunk of its own", () => {
    const big = ev(1, "y".repeat(MAX_BODY_BYTES));
    expect(chunk([ev(0), big, ev(2)], 50).map((c) => c.map((e) => e.event_id))).toEqual([["id-0"], ["id-1"], ["id-2"]]);
  });
});
