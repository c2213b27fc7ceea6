/**
 * Feedback prompts (docs/feedback-prompts.md): the worker notices that a user
 * seems dissatisfied with an answer, the collector hands the prompt to the
 * browser, and the app asks for a thumbs only then.
 *
 * Invariants:
 * - A prompt reaches the subscribers at most once per browser while its id is
 *   among the last `SEEN_MAX` delivered (kept in storage when there is one): the
 *   collector offers a prompt on every answer until it expires, from every replica.
 * - A malformed or expired prompt is never delivered; without subscribers nothing
 *   is marked delivered, so a later subscriber still gets it.
 * - A throwing subscriber breaks neither the other subscribers nor the queue.
 */
import type { FeedbackPrompt, KeyValueStorage } from "./types.js";

const SEEN_MAX = 50;
const REASONS = ["correction", "regenerated", "human_requested", "quick_exit"];

/** True for a prompt as the collector sends it (the fields the app relies on). */
export function isPrompt(p: unknown): p is FeedbackPrompt {
  const o = p as Record<string, unknown> | null;
  return (
    !!o &&
    typeof o.prompt_id == "string" &&
    typeof o.request_id == "string" &&
    REASONS.includes(o.reason as string) &&
    typeof o.expires_at == "string"
  );
}

export function promptHub(kv: KeyValueStorage | null, key: string) {
  const subs = new Set<(p: FeedbackPrompt) => void>();
  let seen: string[] = [];
  try {
    const v: unknown = JSON.parse((kv && kv.getItem(key)) || "[]");
    if (Array.isArray(v)) seen = v.filter((x) => typeof x == "string");
  } catch {
    // Unreadable: start afresh (at worst a prompt is shown twice).
  }
  return {
    subs,
    /** Hands every new, unexpired prompt of `list` (a collector answer's `prompts`) to the subscribers. */
    deliver(list: unknown): void {
      if (!subs.size || !Array.isArray(list)) return;
      for (const p of list) {
        if (!isPrompt(p) || seen.includes(p.prompt_id) || !(Date.parse(p.expires_at) > Date.now())) continue;
        seen = seen.concat(p.prompt_id).slice(-SEEN_MAX);
        try {
          kv?.setItem(key, JSON.stringify(seen));
        } catch {
          // Storage full or blocked: remembered in memory for this page.
        }
        for (const f of subs)
          try {
            f(p);
          } catch {
            // The app's callback failed; the others still get the prompt.
          }
      }
    },
  };
}
