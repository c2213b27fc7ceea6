/**
 * The client: one queue, three exits (timer or batch size -> fetch; page hiding
 * -> beacon; failures -> retry with backoff), mirrored to storage.
 *
 * Invariants:
 * - An event leaves the queue only when the collector acknowledged it (2xx) or
 *   refused it for good (reported through `onError`), or when the queue is over
 *   `maxQueue` (oldest first, reported). A beacon is not an acknowledgement.
 * - `event_id` and `occurred_at` are fixed at `track`; retries resend the same
 *   event, only the batch `sent_at` is new on every try.
 * - At most one fetch flush runs at a time; while a retry delay (backoff or
 *   `Retry-After`) is pending, flushes wait for it. Only the beacon ignores it,
 *   because the page is going away.
 * - The stored copy is rewritten after every change of the queue.
 */
import { adopt, save } from "./storage.js";
import { beacon as sendBeacon, body, chunk, getPrompts, post, retryAfterMs } from "./transport.js";
import { isRequestId, uuid } from "./ids.js";
import { promptHub } from "./prompts.js";
import type {
  EventContext,
  EventType,
  FeedbackClient,
  FeedbackError,
  FeedbackEvent,
  FeedbackOptions,
  KeyValueStorage,
} from "./types.js";

const PREFIX = "fbq:";

function defaultStorage(): KeyValueStorage | null {
  try {
    return globalThis.localStorage || null;
  } catch {
    return null; // Access can throw (blocked cookies, sandboxed iframes).
  }
}

/** Creates a client; see `FeedbackOptions` for the defaults. */
export function createFeedback(o: FeedbackOptions): FeedbackClient {
  const ep = o.endpoint.replace(/\/+$/, "");
  const wk = encodeURIComponent(o.writeKey);
  const url = `${ep}/v1/events?key=${wk}`;
  const interval = o.flushIntervalMs ?? 5000;
  const maxBatch = o.maxBatch ?? 50;
  const maxQueue = o.maxQueue ?? 500;
  const base = o.retryBaseMs ?? 1000;
  const cap = o.retryMaxMs ?? 60000;
  const kv = o.storage === undefined ? defaultStorage() : o.storage;
  const prefix = `${PREFIX}${o.writeKey}:`;
  const key = prefix + uuid();
  /** Tells the app; a throwing `onError` must not break tracking or the queue. */
  const report = (e: FeedbackError) => {
    try {
      o.onError ? o.onError(e) : console.warn(`[feedback] ${e.message}`, e.events);
    } catch {
      // The app's callback failed; the queue stays consistent either way.
    }
  };

  let queue: FeedbackEvent[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running: Promise<void> | undefined;
  let retryAt = 0; // epoch ms before which no fetch flush starts
  let fails = 0; // consecutive failed tries, for the backoff exponent
  let lastShown: string | undefined;
  let stopped = false;
  let beaconed = new Set<string>(); // event ids handed to the browser since the page was last visible

  const persist = () => save(kv, key, queue);
  const hub = promptHub(kv, `fbp:${o.writeKey}`);
  if (o.onPrompt) hub.subs.add(o.onPrompt);
  const checkMs = o.promptCheckMs ?? 3000;
  let checking: ReturnType<typeof setTimeout> | undefined;
  let who: EventContext = { user_id: o.user_id, session_id: o.session_id };

  /**
   * Checks for prompts `ms`, then 2x and 4x that, after an acknowledged batch (the
   * worker needs a moment to decide); a newer batch starts the series again.
   */
  function check(ms: number): void {
    if (checking !== undefined) clearTimeout(checking);
    checking = stopped || ms > checkMs * 4 ? undefined : setTimeout(() => {
      void checkPrompts();
      check(ms * 2);
    }, ms);
  }

  /** One GET of this client's pending prompts (the last user and session it tracked). */
  async function checkPrompts(): Promise<void> {
    const q = new URLSearchParams({ key: o.writeKey });
    if (who.user_id) q.set("user_id", who.user_id);
    if (who.session_id) q.set("session_id", who.session_id);
    if (hub.subs.size && (who.user_id || who.session_id)) hub.deliver(await getPrompts(`${ep}/v1/prompts?${q}`));
  }

  /** Appends, enforcing `maxQueue` by dropping (and reporting) the oldest. */
  function add(events: FeedbackEvent[]): void {
    queue = queue.concat(events);
    const over = queue.length - maxQueue;
    if (over > 0) {
      const dropped = queue.splice(0, over);
      report({ reason: "queue_full", message: `queue full (${maxQueue}): dropped ${over} oldest events`, events: dropped });
    }
    persist();
  }

  /** Takes `events` out of the queue (by id: the queue may have changed meanwhile). */
  function remove(events: FeedbackEvent[]): void {
    const ids = new Set(events.map((e) => e.event_id));
    queue = queue.filter((e) => !ids.has(e.event_id));
    persist();
  }

  function schedule(ms: number): void {
    if (timer !== undefined || stopped) return;
    timer = setTimeout(() => {
      timer = undefined;
      void flush();
    }, ms);
  }

  /** Sends one chunk; false when it must be retried later (the retry is scheduled). */
  async function send(events: FeedbackEvent[]): Promise<boolean> {
    const a = await post(url, body(events));
    const s = a.status;
    if (s >= 200 && s < 300) {
      fails = 0;
      remove(events);
      hub.deliver(a.prompts);
      if (checkMs > 0 && hub.subs.size) check(checkMs);
      if (a.invalid > 0)
        report({ reason: "invalid", status: s, message: `collector found ${a.invalid} of ${events.length} events invalid`, events });
      return true;
    }
    if (s == 413 && events.length > 1) {
      const h = events.length >> 1;
      return (await send(events.slice(0, h))) && send(events.slice(h));
    }
    if (s >= 400 && s < 500 && s != 408 && s != 429) {
      remove(events);
      report({
        reason: s == 413 ? "too_large" : "refused",
        status: s,
        message: `collector refused ${events.length} events: HTTP ${s}`,
        events,
      });
      return true;
    }
    // Network error, timeout, 408, 429, 5xx: keep them and try again later. A
    // Retry-After is honoured, but never below one second (no tight loop on "0").
    const ra = retryAfterMs(a.retryAfter);
    const wait = ra != null ? Math.max(ra, 1000) : Math.min(cap, base * 2 ** fails) * (0.5 + Math.random() / 2);
    fails++;
    retryAt = Date.now() + wait;
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    schedule(wait);
    return false;
  }

  async function run(): Promise<void> {
    for (;;) {
      const wait = retryAt - Date.now();
      if (wait > 0) return schedule(wait);
      if (!queue.length) return;
      for (const c of chunk(queue.slice(0, maxBatch), maxBatch)) if (!(await send(c))) return;
    }
  }

  function flush(): Promise<void> {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    return (running ||= run().finally(() => (running = undefined)));
  }

  /**
   * Beacons every queued event not beaconed since the page was last visible
   * (`visibilitychange` and `pagehide` both fire on close; one copy is enough).
   */
  function beacon(): void {
    for (const c of chunk(queue.filter((e) => !beaconed.has(e.event_id)), maxBatch))
      if (sendBeacon(url, body(c))) for (const e of c) beaconed.add(e.event_id);
  }

  function track(requestId: string | null, type: EventType, properties?: object, ctx?: EventContext): string | null {
    const e: FeedbackEvent = {
      event_id: uuid(),
      type,
      occurred_at: new Date().toISOString(),
      properties: { ...properties },
    };
    const session = ctx?.session_id ?? o.session_id;
    const user = ctx?.user_id ?? o.user_id;
    if (requestId != null) e.request_id = requestId;
    if (session) e.session_id = session;
    if (user) e.user_id = user;
    if (user || session) who = { user_id: user, session_id: session };
    const bad =
      type == "session_feedback_given"
        ? !session && "a session_id"
        : !isRequestId(requestId) && `a request id (UUID v1-v5), got ${JSON.stringify(requestId)}`;
    if (bad) {
      report({ reason: "invalid", message: `${type} refused: needs ${bad}`, events: [e] });
      return null;
    }
    add([e]);
    if (queue.length >= maxBatch) void flush();
    else schedule(interval);
    return e.event_id;
  }

  /** Returns a remover for listeners added to `el`. */
  function listen(el: EventTarget, types: string[], fn: (ev: Event) => void): () => void {
    for (const t of types) el.addEventListener(t, fn);
    return () => {
      for (const t of types) el.removeEventListener(t, fn);
    };
  }

  const w = typeof window != "undefined" ? window : undefined;
  const d = typeof document != "undefined" ? document : undefined;
  const onHide = (ev: Event) => {
    if (ev.type == "pagehide" && o.autoPageLeft && lastShown) client.pageLeft();
    if (ev.type == "pagehide" || d?.visibilityState == "hidden") {
      persist();
      beacon();
    } else beaconed = new Set();
  };
  const onOnline = () => {
    retryAt = 0;
    void flush();
  };
  const unlisten = [
    w ? listen(w, ["pagehide"], onHide) : undefined,
    d ? listen(d, ["visibilitychange"], onHide) : undefined,
    w ? listen(w, ["online"], onOnline) : undefined,
  ];

  const client: FeedbackClient = {
    track: track as FeedbackClient["track"],
    flush,
    beacon,
    async shutdown() {
      await flush();
      stopped = true;
      if (timer !== undefined) clearTimeout(timer);
      if (checking !== undefined) clearTimeout(checking);
      for (const u of unlisten) u?.();
    },
    pending: () => queue.slice(),
    onPrompt(fn) {
      hub.subs.add(fn);
      return () => void hub.subs.delete(fn);
    },
    checkPrompts,
    shown(requestId, promptText) {
      lastShown = requestId;
      return track(requestId, "response_shown", promptText == null ? {} : { prompt_text: promptText.slice(0, 16384) });
    },
    rate: (requestId, up) => track(requestId, "feedback_given", { rating: up }),
    rateSession: (sessionId, up) => track(null, "session_feedback_given", { rating: up }, { session_id: sessionId }),
    suggestion: (requestId, outcome) => track(requestId, `suggestion_${outcome}`),
    retained: (requestId, retainedChars, suggestedChars) =>
      track(requestId, "suggestion_retained", { retained_chars: retainedChars, suggested_chars: suggestedChars }),
    pageLeft: (requestId = lastShown) => track(requestId ?? null, "page_left"),
    // The handler ignores the event object: the copied text is never read.
    watchCopy: (el, requestId) => listen(el, ["copy"], () => track(requestId, "response_copied")),
    watchLinks: (el, requestId) =>
      listen(el, ["click", "auxclick"], (ev) => {
        const a = (ev.target as Element | null)?.closest?.("a[href]") as HTMLAnchorElement | null;
        if (a) track(requestId, "link_clicked", { url: a.href.slice(0, 2048) });
      }),
  };

  // Queues left by earlier page loads and other tabs (see storage.ts).
  const adopted = adopt(kv, prefix);
  if (adopted.length) {
    add(adopted);
    schedule(0);
  }
  return client;
}
