// A stand-in collector for the end-to-end run: records every POST /v1/events
// (headers and raw body) and answers 202 like DESIGN §11, with CORS for any origin.
import { createServer } from "node:http";

/** Starts on 127.0.0.1 (random port). Returns { endpoint, received, waitFor(pred, ms), close() }. */
export async function startDummyCollector() {
  const received = [];
  const waiters = new Set();
  const server = createServer((req, res) => {
    const origin = req.headers.origin;
    if (origin) {
      res.setHeader("Access-Control-Allow-Origin", origin);
      res.setHeader("Access-Control-Allow-Credentials", "true");
      res.setHeader("Vary", "Origin");
    }
    if (req.method === "OPTIONS") {
      res.setHeader("Access-Control-Allow-Methods", "POST");
      res.setHeader("Access-Control-Allow-Headers", "content-type, authorization");
      return res.writeHead(204).end();
    }
    const url = new URL(req.url, "http://x");
    if (req.method !== "POST" || url.pathname !== "/v1/events") return res.writeHead(404).end();
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      let batch = null;
      try {
        batch = JSON.parse(body);
      } catch {
        return res.writeHead(400).end();
      }
      received.push({ key: url.searchParams.get("key"), headers: req.headers, body, batch });
      const n = Array.isArray(batch.events) ? batch.events.length : 0;
      res.writeHead(202, { "content-type": "application/json" }).end(JSON.stringify({ accepted: n, invalid: 0 }));
      for (const w of waiters) w();
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const endpoint = `http://127.0.0.1:${server.address().port}`;
  return {
    endpoint,
    received,
    /** Resolves true once pred(received) holds, false after ms. */
    waitFor(pred, ms = 5000) {
      return new Promise((resolve) => {
        const check = () => {
          if (pred(received)) done(true);
        };
        const timer = setTimeout(() => done(false), ms);
        const done = (v) => {
          clearTimeout(timer);
          waiters.delete(check);
          resolve(v);
        };
        waiters.add(check);
        check();
      });
    },
    close: () => new Promise((r) => server.close(r)),
  };
}
