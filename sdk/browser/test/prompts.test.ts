import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createFeedback } from "../src/index.js";
import { isPrompt } from "../src/prompts.js";
import type { FeedbackClient, FeedbackOptions, FeedbackPrompt } from "../src/types.js";
import { fakeCollector, removeBeacon, RID, RID2 } from "./fakes.js";

const EP = "https://collect.example.com";
let clients: FeedbackClient[] = [];
const make = (o: Partial<FeedbackOptions> = {}) => {
  const c = createFeedback({ endpoint: EP, writeKey: "wk_1", storage: null, user_id: "u-1", ...o });
  clients.push(c);
  return c;
};

/** A prompt as the collector sends it (schemas/prompt.schema.json). */
const prompt = (request_id = RID, over: Partial<FeedbackPrompt> = {}): FeedbackPrompt => ({
  prompt_id: `p-${request_id}`,
  request_id,
  reason: "regenerated",
  user_id: "u-1",
  session_id: null,
  signal_at: "2026-11-22T10:00:00Z",
  expires_at: "2026-11-22T10:10:00Z",
  ...over,
});

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
});

describe("feedback prompts", () => {
  it("delivers the prompts of a batch answer once, to every subscriber", async () => {
    fakeCollector(
      { status: 202, json: { accepted: 1, invalid: 0, prompts: [prompt()] } },
      { status: 202, json: { accepted: 1, invalid: 0, prompts: [prompt()] } }, // offered again
    );
    const fb = make({ promptCheckMs: 0 });
    const a: FeedbackPrompt[] = [];
    const b: FeedbackPrompt[] = [];
    fb.onPrompt((p) => a.push(p));
    const off = fb.onPrompt((p) => b.push(p));
    fb.track(RID, "response_regenerated");
    await fb.flush();
    off();
    fb.track(RID2, "response_copied");
    await fb.flush();
    expect(a).toEqual([prompt()]);
    expect(b).toEqual([prompt()]);
  });

  it("checks promptCheckMs after an acknowledged batch, then twice more, for the tracked user and session", async () => {
    const c = fakeCollector();
    c.prompts.list = [prompt()];
    const got: FeedbackPrompt[] = [];
    const fb = make({ onPrompt: (p) => got.push(p), session_id: "s 1" });
    fb.track(RID, "response_regenerated");
    fb.track(RID, "page_left");
    await fb.flush();
    await vi.advanceTimersByTimeAsync(2999);
    expect(c.gets).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(c.gets).toEqual([`${EP}/v1/prompts?key=wk_1&user_id=u-1&session_id=s+1`]);
    expect(got.map((p) => p.request_id)).toEqual([RID]);
    await vi.advanceTimersByTimeAsync(6000 + 12000 + 60000);
    expect(c.gets).toHaveLength(3); // at 3, 9 and 21 s, then no more until the next batch
    expect(got).toHaveLength(1); // offered every time, delivered once
  });

  it("never asks without a subscriber, and skips malformed, expired and already-seen prompts", async () => {
    const c = fakeCollector();
    const fb = make();
    fb.track(RID, "response_regenerated");
    await fb.flush();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(c.gets).toEqual([]);
    const got: string[] = [];
    fb.onPrompt((p) => got.push(p.request_id));
    c.prompts.list = [
      { prompt_id: "x" }, // malformed
      prompt(RID, { reason: "bored" as FeedbackPrompt["reason"] }), // unknown reason
      prompt(RID2, { prompt_id: "old", expires_at: "2026-11-22T09:59:59Z" }), // expired
      prompt(RID),
      prompt(RID),
    ];
    await fb.checkPrompts();
    await fb.checkPrompts();
    expect(got).toEqual([RID]);
  });

  it("remembers delivered prompts across page loads in storage, and survives a throwing subscriber", async () => {
    const c = fakeCollector();
    c.prompts.list = [prompt()];
    const seen: string[] = [];
    const first = make({ storage: localStorage });
    first.onPrompt(() => {
      throw new Error("app bug");
    });
    first.onPrompt((p) => seen.push(p.prompt_id));
    await first.checkPrompts();
    const second = make({ storage: localStorage });
    second.onPrompt((p) => seen.push(p.prompt_id));
    await second.checkPrompts();
    expect(seen).toEqual([prompt().prompt_id]);
  });

  it("isPrompt accepts exactly the collector's shape", () => {
    expect(isPrompt(prompt())).toBe(true);
    for (const bad of [null, 1, "p", {}, { ...prompt(), request_id: 3 }, { ...prompt(), expires_at: undefined }])
      expect(isPrompt(bad)).toBe(false);
  });
});
