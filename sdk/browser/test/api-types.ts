/**
 * Compile-time checks of the public API, run by `npm run typecheck` (not by vitest).
 * Each `@ts-expect-error` fails the type check when the line stops being an error.
 */
import { createFeedback, type FeedbackClient } from "../src/index.js";

const fb: FeedbackClient = createFeedback({ endpoint: "https://c.example.com", writeKey: "wk" });
const rid = "5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e6f";

fb.track(rid, "response_copied");
fb.track(rid, "response_shown", { prompt_text: "q" });
fb.track(rid, "ticket_opened", { ticket_id: "T-1" }, { user_id: "u" });
fb.track(rid, "score_reported", { scores: { a: 1, b: true } });
fb.track(null, "session_feedback_given", { rating: true }, { session_id: "s" });
// @ts-expect-error ticket_id is required
fb.track(rid, "ticket_opened");
// @ts-expect-error rating is a boolean
fb.track(rid, "feedback_given", { rating: 1 });
// @ts-expect-error no such event type
fb.track(rid, "response_liked");
// @ts-expect-error response_copied carries no properties (never the copied text)
fb.track(rid, "response_copied", { text: "copied" });
// @ts-expect-error unknown outcome
fb.suggestion(rid, "ignored");
fb.retained(rid, 311, 420);
fb.track(rid, "suggestion_retained", { retained_chars: 0, suggested_chars: 1 });
// @ts-expect-error suggested_chars is required
fb.track(rid, "suggestion_retained", { retained_chars: 3 });
