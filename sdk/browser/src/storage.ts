/**
 * The persisted side of the queue. Each client instance (one per tab) writes its
 * unacknowledged events under its own key `<prefix><instance id>`, so two tabs
 * never overwrite each other. On start a client adopts (reads and removes) every
 * key under the prefix: queues left by closed tabs and earlier page loads, and
 * also those of tabs still open, which keep their copy in memory and write it
 * back. Adopting a live tab's queue can send an event twice, never lose it; the
 * server drops duplicates by `event_id`.
 *
 * Storage may be missing or throw (Safari private mode, quota, disabled
 * cookies): then events live in memory only, and `save` returns false.
 */
import type { FeedbackEvent, KeyValueStorage } from "./types.js";

/** Reads and removes every queue stored under `prefix`. Unreadable entries are skipped. */
export function adopt(kv: KeyValueStorage | null, prefix: string): FeedbackEvent[] {
  const out: FeedbackEvent[] = [];
  if (!kv) return out;
  try {
    const keys: string[] = [];
    for (let i = 0; i < kv.length; i++) {
      const k = kv.key(i);
      if (k && k.startsWith(prefix)) keys.push(k);
    }
    for (const k of keys) {
      try {
        const v: unknown = JSON.parse(kv.getItem(k) || "[]");
        if (Array.isArray(v)) out.push(...(v as FeedbackEvent[]));
      } catch {
        // Not ours or corrupt: nothing we could send.
      }
      kv.removeItem(k);
    }
  } catch {
    // Storage unusable: nothing to adopt.
  }
  return out;
}

/** Writes `events` under `key` (removes the key when empty). False when storage refused. */
export function save(kv: KeyValueStorage | null, key: string, events: FeedbackEvent[]): boolean {
  if (!kv) return true;
  try {
    if (events.length) kv.setItem(key, JSON.stringify(events));
    else kv.removeItem(key);
    return true;
  } catch {
    return false;
  }
}
