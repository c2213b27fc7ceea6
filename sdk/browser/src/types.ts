/**
 * Public types. The event shapes mirror the JSON schemas in `schemas/events/`
 * (generated from the worker's pydantic models); `test/types.test.ts` fails when
 * the two drift apart.
 */

/** An event type with no properties. */
export type NoProperties = Record<string, never>;

/** Properties per event type (DESIGN §3). Optional keys may be left out. */
export interface EventProperties {
  response_shown: { prompt_text?: string | null };
  message_sent: { text?: string | null };
  response_copied: NoProperties;
  response_shared: NoProperties;
  link_clicked: { url?: string | null };
  response_regenerated: NoProperties;
  human_requested: NoProperties;
  page_left: NoProperties;
  suggestion_shown: NoProperties;
  suggestion_accepted: NoProperties;
  suggestion_modified: NoProperties;
  suggestion_rejected: NoProperties;
  suggestion_retained: { retained_chars: number; suggested_chars: number };
  results_shown: { result_count: number; result_ids?: string[] | null };
  result_clicked: { result_id?: string | null; position?: number | null };
  ticket_opened: { ticket_id: string };
  ticket_resolved: { ticket_id: string };
  ticket_reopened: { ticket_id: string };
  feedback_given: { rating: boolean };
  session_feedback_given: { rating: boolean };
  score_reported: { scores: Record<string, number | boolean> };
}

export type EventType = keyof EventProperties;

/** Who and where: defaults come from the client options, a call may override them. */
export interface EventContext {
  /** 1-128 chars; required for `session_feedback_given`. */
  session_id?: string;
  /** 1-128 chars. */
  user_id?: string;
}

/** One event as it is queued, stored and sent (the batch adds `sent_at`). */
export interface FeedbackEvent extends EventContext {
  /** UUID stamped at the call; the same on every retry, so the server can drop duplicates. */
  event_id: string;
  type: EventType;
  /** Helicone request id, UUID v1-v5; absent only for `session_feedback_given`. */
  request_id?: string;
  /** Device clock at the call, RFC 3339 (`toISOString()`, UTC offset `Z`). */
  occurred_at: string;
  properties: Record<string, unknown>;
}

/**
 * Why events did not reach the collector. Every refused or dropped event is
 * reported through `onError` (default: `console.warn`), never dropped silently.
 * - `invalid`: refused before queuing (bad request id, missing session id), or
 *   counted `invalid` by the collector in a 202 answer.
 * - `refused`: the collector answered 400/401/403 (or another non-retryable 4xx).
 * - `too_large`: one event alone is over the collector's body limit (413).
 * - `queue_full`: the local queue hit `maxQueue`; the oldest events were dropped.
 */
export interface FeedbackError {
  reason: "invalid" | "refused" | "too_large" | "queue_full";
  /** HTTP status, when the collector answered. */
  status?: number;
  message: string;
  events: FeedbackEvent[];
}

/** Why the worker thinks the user is dissatisfied with an answer. */
export type PromptReason = "correction" | "regenerated" | "human_requested" | "quick_exit";

/**
 * "Ask this user for a thumbs on this answer now" (schemas/prompt.schema.json).
 * At most one per user (else session) per the worker's `PROMPT_COOLDOWN_S`.
 */
export interface FeedbackPrompt {
  /** Stable per answer: the SDK delivers each at most once. */
  prompt_id: string;
  /** The answer to ask about; pass it to `rate()`. */
  request_id: string;
  reason: PromptReason;
  user_id: string | null;
  session_id: string | null;
  /** RFC 3339: when the sign of dissatisfaction happened. */
  signal_at: string;
  /** RFC 3339: do not ask after this. */
  expires_at: string;
}

/** The subset of `Storage` the queue needs (so tests and apps can pass their own). */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
  key(index: number): string | null;
  readonly length: number;
}

export interface FeedbackOptions extends EventContext {
  /** The collector's base URL, e.g. `https://collect.example.com`. */
  endpoint: string;
  /** Publishable write key; sent as `?key=`. */
  writeKey: string;
  /** Send queued events this long after the first one arrives. Default 5000. */
  flushIntervalMs?: number;
  /** Send as soon as this many events wait; also the most events per request. Default 50. */
  maxBatch?: number;
  /** Most events kept (memory and storage); the oldest go first. Default 500. */
  maxQueue?: number;
  /** Where unacknowledged events survive page loads. Default `localStorage`; `null` for none. */
  storage?: KeyValueStorage | null;
  /** First retry delay before jitter. Default 1000. */
  retryBaseMs?: number;
  /** Longest retry delay. Default 60000. */
  retryMaxMs?: number;
  /** Emit `page_left` for the last shown answer on `pagehide`. Default false. */
  autoPageLeft?: boolean;
  /** Told about every event that is refused or dropped. Default: `console.warn`. */
  onError?: (error: FeedbackError) => void;
  /** Subscribes to feedback prompts from the start (as `client.onPrompt`). */
  onPrompt?: (prompt: FeedbackPrompt) => void;
  /**
   * While anyone subscribes to prompts: ask the collector for them this long
   * after each acknowledged batch, and again after 2x and 4x as long (three GETs:
   * the worker needs a moment to decide); a newer batch starts again.
   * Default 3000; 0 for never (prompts then come only with batch answers).
   */
  promptCheckMs?: number;
}

/** `track`'s arguments after the type: properties are optional only when every key is. */
export type TrackArgs<T extends EventType> = {} extends EventProperties[T]
  ? [properties?: EventProperties[T], context?: EventContext]
  : [properties: EventProperties[T], context?: EventContext];

export type SuggestionOutcome = "shown" | "accepted" | "modified" | "rejected";

export interface FeedbackClient {
  /**
   * Queue one event. Returns its `event_id`, or `null` when it was refused
   * (reported through `onError`). `requestId` is `null` only for `session_feedback_given`.
   */
  track<T extends EventType>(requestId: string | null, type: T, ...args: TrackArgs<T>): string | null;
  /** Send what is queued now (respecting a pending `Retry-After`). Resolves when done or backing off. */
  flush(): Promise<void>;
  /** Send by beacon what is queued, as on `pagehide`. Events stay queued until acknowledged. */
  beacon(): void;
  /** Flush, then stop timers and listeners. Unsent events stay in storage for the next page load. */
  shutdown(): Promise<void>;
  /** Events waiting for an acknowledgement (a copy). */
  pending(): FeedbackEvent[];
  /**
   * Calls `fn` with each feedback prompt for this client's user (else session),
   * once; returns a function that unsubscribes. Ask for a thumbs then, and send
   * it with `rate(prompt.request_id, up)`.
   */
  onPrompt(fn: (prompt: FeedbackPrompt) => void): () => void;
  /** Asks the collector for pending prompts now (needs a `user_id` or `session_id`). */
  checkPrompts(): Promise<void>;

  /** An answer was displayed; `promptText` is the user's prompt (truncated to 16384 chars). */
  shown(requestId: string, promptText?: string): string | null;
  /** Thumbs up (`true`) or down (`false`) on one answer. */
  rate(requestId: string, up: boolean): string | null;
  /** A rating of a whole session. */
  rateSession(sessionId: string, up: boolean): string | null;
  /** A code suggestion was shown, accepted, modified or rejected. */
  suggestion(requestId: string, outcome: SuggestionOutcome): string | null;
  /**
   * Some seconds after an accept (or a kept edit), how many of the suggestion's
   * `suggestedChars` characters are still there (`retainedChars`, integers,
   * `suggestedChars` >= 1). The application measures it; the worker turns it into
   * the score `retained_pct`.
   */
  retained(requestId: string, retainedChars: number, suggestedChars: number): string | null;
  /** The user left; `requestId` defaults to the last answer passed to `shown`. */
  pageLeft(requestId?: string): string | null;
  /**
   * `response_copied` whenever the user copies inside `el`. Only the fact is sent,
   * never the copied text (the handler reads neither selection nor clipboard).
   * Returns a function that removes the listener.
   */
  watchCopy(el: EventTarget, requestId: string): () => void;
  /** `link_clicked` with the link's URL for clicks (and middle clicks) on links inside `el`. */
  watchLinks(el: EventTarget, requestId: string): () => void;
}
