// @vitest-environment node
/**
 * The TypeScript event types must match the JSON schemas in `schemas/events/`
 * (generated from the worker's models): same event types, same property names,
 * same required ones. Reads `src/types.ts` as text, so it fails when either drifts.
 */
import { readdirSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

const root = new URL("../../../schemas/events/", import.meta.url);
const src = readFileSync(new URL("../src/types.ts", import.meta.url), "utf8");

interface Schema {
  $defs: Record<string, { properties: Record<string, unknown>; required?: string[] }>;
  properties: { properties: { $ref: string }; request_id: unknown; session_id: unknown };
  required: string[];
}

const schemas = Object.fromEntries(
  readdirSync(root)
    .filter((f) => f.endsWith(".schema.json"))
    .map((f) => [f.replace(".schema.json", ""), JSON.parse(readFileSync(new URL(f, root), "utf8")) as Schema]),
);

/** `name: { a?: T; b: U }` or `name: NoProperties` lines of `interface EventProperties`. */
function tsTypes(): Record<string, { name: string; required: boolean }[]> {
  const block = /export interface EventProperties \{([\s\S]*?)\n\}/.exec(src)![1]!;
  const out: Record<string, { name: string; required: boolean }[]> = {};
  for (const m of block.matchAll(/^\s*(\w+): (NoProperties|\{(.*)\});$/gm)) {
    out[m[1]!] = m[3]
      ? m[3].split(";").map((p) => p.trim()).filter(Boolean).map((p) => {
          const [, name, opt] = /^(\w+)(\??):/.exec(p)!;
          return { name: name!, required: !opt };
        })
      : [];
  }
  return out;
}

describe("types match schemas/events", () => {
  const ts = tsTypes();
  it("has exactly the schema's event types", () => {
    expect(Object.keys(ts).sort()).toEqual(Object.keys(schemas).sort());
    expect(Object.keys(ts)).toHaveLength(21);
  });

  for (const [type, s] of Object.entries(schemas)) {
    it(`${type}: same properties, same required ones`, () => {
      const def = s.$defs[s.properties.properties.$ref.split("/").pop()!]!;
      const want = Object.keys(def.properties)
        .map((name) => ({ name, required: (def.required ?? []).includes(name) }))
        .sort((a, b) => a.name.localeCompare(b.name));
      expect([...ts[type]!].sort((a, b) => a.name.localeCompare(b.name))).toEqual(want);
      // Envelope: request_id required except for session feedback, which needs session_id.
      expect(s.required.includes("request_id")).toBe(type != "session_feedback_given");
      expect(s.required.includes("session_id")).toBe(type == "session_feedback_given");
      expect(s.required).toEqual(expect.arrayContaining(["event_id", "occurred_at", "type"]));
      // `properties` is required exactly when one of its keys is (the SDK always sends it).
      expect(s.required.includes("properties")).toBe(want.some((p) => p.required));
    });
  }
});

describe("FeedbackPrompt matches schemas/prompt.schema.json", () => {
  const schema = JSON.parse(readFileSync(new URL("../../../schemas/prompt.schema.json", import.meta.url), "utf8")) as {
    properties: Record<string, { enum?: string[] }>;
    required: string[];
  };
  const block = /export interface FeedbackPrompt \{([\s\S]*?)\n\}/.exec(src)![1]!;
  const fields = [...block.matchAll(/^\s*(\w+): /gm)].map((m) => m[1]!);

  it("has exactly the schema's fields, all required", () => {
    expect(fields.sort()).toEqual(Object.keys(schema.properties).sort());
    expect([...schema.required].sort()).toEqual(fields.sort());
  });

  it("has exactly the schema's reasons", () => {
    const reasons = /export type PromptReason = (.*);/.exec(src)![1]!.split("|").map((r) => r.trim().replace(/"/g, ""));
    expect(reasons.sort()).toEqual([...schema.properties.reason!.enum!].sort());
  });
});
