/**
 * feedback-worker browser SDK: turns UI interactions into events for the
 * collector (`POST ${endpoint}/v1/events`). Zero runtime dependencies.
 */
export { createFeedback } from "./client.js";
export { isRequestId } from "./ids.js";
export type * from "./types.js";
