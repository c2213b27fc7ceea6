// A stand-in collector for the end-to-end run: records every POST /v1/events
// (headers and raw body) and answers like DESIGN §11 (202 by default), with CORS for
// any origin. `answer(req)` may return another status, e.g. 503 to force retries.
import { createServer } from "node:http";

/**
 * Starts on 127.0.0.1 (random port). Returns { endpoint, received, preflights,
 * waitFor(pred, ms), close() }; set `.answer = (req) => status` to script answers.
 */
export async function startDummyCollector() {
  const received = [];
  const preflights = [];
  const waiters = new Set();
  const server = createServer((req, res) => {
    const origin = req.headers.origin;
    if (origin) {
      res.setHeader("Access-Control-Allow-Origin", origin);
      res.setHeader("Access-Control-Allow-Credentials", "true");
      res.setHeader("Vary", "Origin");
    }
    if (req.method === "OPTIONS") {
      preflights.push({ url: req.url, headers: req.headers });
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
      const status = collector.answer(req);
      received.push({ key: url.searchParams.get("key"), headers: req.headers, body, batch, status });
      const n = Array.isArray(batch.events) ? batch.events.length : 0;
      if (status === 202)
        res.writeHead(202, { "content-type": "application/json" }).end(JSON.stringify({ accepted: n, invalid: 0 }));
      else res.writeHead(status, { "retry-after": "60", "access-control-expose-headers": "Retry-After" }).end();
      for (const w of waiters) w();
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const endpoint = `http://127.0.0.1:${server.address().port}`;
  const collector = {
    answer: () => 202,
    endpoint,
    received,
    preflights,
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
  return collector;
}
