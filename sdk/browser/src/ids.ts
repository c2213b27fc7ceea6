/** Event ids and request-id validation. */

/** A Helicone request id: UUID versions 1-5, RFC 4122 variant (same pattern as the schemas). */
const REQUEST_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/i;

export const isRequestId = (id: unknown): id is string => typeof id == "string" && REQUEST_ID.test(id);

/**
 * A random UUID v4. `crypto.randomUUID` exists only in secure contexts (https,
 * localhost), so plain-http pages fall back to `getRandomValues`, and very old
 * engines to `Math.random` (ids then only need to be unique, not secret).
 */
export function uuid(): string {
  const c = globalThis.crypto;
  if (c && c.randomUUID) return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && c.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = (Math.random() * 256) | 0;
  b[6] = (b[6]! & 15) | 64; // version 4
  b[8] = (b[8]! & 63) | 128; // RFC 4122 variant
  const h = Array.from(b, (x) => (x + 256).toString(16).slice(1)).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
