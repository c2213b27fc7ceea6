"""Delivery against a rate-limited Helicone: ingestion must not notice (issue 14's figures).

One broker, one input topic of N realistic events (default 200,000 over 20,000 requests,
event times in the past so windows close on stream time), read by two workers one after the
other, each in its own consumer group, in the same run:

    (a) baseline: FEEDBACK_DRY_RUN=true (delivery logs, posts nothing)
    (b) delivering to a local Helicone-compatible receiver (its own process) that allows
        LIMIT x 300 calls per 5-minute fixed window, as Helicone's limiter counts (429 +
        Retry-After, RateLimit-* headers), with DELIVERY_RATE_PER_S=LIMIT

Figures (b against a):

* ingest rate: events/s from the first event counted to the last (target >= 0.95);
* windows decided once caught up (target >= 0.95);
* calls per request whose state has a rating and scores (target 1.0; the older two-call form
  made 2);
* drain: accepted calls per second over ``--drain-s`` seconds after ingestion, as a share
  of LIMIT (target >= 0.9);
* 429s over the same span, once the rate has adapted (the first 10 s after ingestion are left
  out), as a share of calls (target <= 1 %).

    python bench/helicone_limits.py                      # embedded Tansu, 200,000 events
    python bench/helicone_limits.py --events 50000 --limit 5
    python bench/helicone_limits.py --json out.json

This is a benchmark, not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from _common import (  # type: ignore[import-not-found]
    ROOT,
    WorkerProcess,
    create_topic,
    publish,
    worker_env,
    write_json,
)
from pipeline import WINDOW_ENV, make_events  # type: ignore[import-not-found]

from worker.devtools.broker import EmbeddedBroker, free_port

KEY = "sk-helicone-bench-limits"
#: Left out of the 429 share: the rate starts at the budget and learns the window's phase.
_ADAPT_S = 10.0


class LimitedReceiver:
    """``python -m worker.devtools.receiver`` with a fixed-window limit, as its own process."""

    def __init__(self, limit: int, log_path: Path, window_s: int = 300) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.devtools.receiver", "--port", str(self.port),
             "--rate-limit", str(limit * window_s), "--rate-window-s", str(window_s),
             "--read-rate-limit", "none"],
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/_admin/records", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the receiver did not start")

    def records(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.url}/_admin/records", timeout=60).json()["records"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._log.close()


def ingest(worker: WorkerProcess, total: int) -> dict[str, Any]:
    """Ingest rate and, once no partition lags, the windows decided."""
    t0 = worker.wait_metric("feedback_events_total", 1)
    t1 = worker.wait_metric("feedback_events_total", total)
    figures: dict[str, Any] = {"ingest_per_s": round(total / (t1 - t0), 1), "ingest_end": t1}
    stable, last, deadline = 0, -1.0, time.perf_counter() + 300
    while time.perf_counter() < deadline and stable < 3:
        decided = worker.metric("feedback_decisions_total")
        lag = worker.metric_max("feedback_consumer_lag_records")
        stable = stable + 1 if decided == last and lag == 0 else 0
        last = decided
        time.sleep(1)
    figures["windows_decided"] = int(last)
    return figures


def run(
    *,
    events: int = 200_000,
    requests: int = 20_000,
    partitions: int = 8,
    limit: int = 5,
    drain_s: float = 60.0,
    window_s: int = 300,
    bootstrap: str | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the figures as a dict."""
    result: dict[str, Any] = {"events": events, "requests": requests, "limit_per_s": limit,
                              "window_s": window_s}
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-limits-")))
        if bootstrap is None:
            broker = EmbeddedBroker(log_path=work / "tansu.log")
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap_servers
        topic = f"bench-limits-{uuid.uuid4().hex[:8]}"
        now_ms = int(time.time() * 1000)
        records = make_events(events, requests, start_ms=now_ms - 3 * 3_600_000,
                              spread_ms=2 * 3_600_000, seed=11)
        asyncio.run(create_topic(bootstrap, topic, partitions))
        asyncio.run(publish(bootstrap, topic, records))
        total = len(records)
        log(f"helicone-limits: published {total:,} events over {requests:,} requests")

        # Delivery must not pace the dry run either: lift its rate so only ingest counts.
        dry_env = worker_env(bootstrap, topic=topic, partitions=partitions,
                             state_dir=work / "state-dry", extra=WINDOW_ENV)
        dry = WorkerProcess(dry_env, work / "worker-dry.log")
        try:
            a = ingest(dry, total)
        finally:
            dry.stop()
        log(f"helicone-limits: (a) dry run   : {a['ingest_per_s']:>9,.0f} events/s, "
            f"{a['windows_decided']:,} windows decided")

        receiver = LimitedReceiver(limit, work / "receiver.log", window_s)
        stack.callback(receiver.stop)
        live_env = worker_env(
            bootstrap, topic=topic, partitions=partitions, state_dir=work / "state-live",
            extra={**WINDOW_ENV, "FEEDBACK_DRY_RUN": "false", "HELICONE_API_KEY": KEY,
                   "HELICONE_BASE_URL": receiver.url, "DELIVERY_RATE_PER_S": str(limit)},
        )
        live = WorkerProcess(live_env, work / "worker-live.log")
        try:
            b = ingest(live, total)
            log(f"helicone-limits: (b) {limit} calls/s : {b['ingest_per_s']:>9,.0f} events/s, "
                f"{b['windows_decided']:,} windows decided")
            ingest_end_wall_ms = time.time() * 1000 - (time.perf_counter() - b["ingest_end"]) * 1000
            until = time.perf_counter() + _ADAPT_S + drain_s
            while time.perf_counter() < until:
                live.check_alive()
                time.sleep(1)
            backlog = live.metric("feedback_delivery_backlog")
            oldest = live.metric_max("feedback_delivery_backlog_oldest_seconds")
            rate_now = live.metric_max("feedback_delivery_rate_per_second")
        finally:
            live.stop()

        calls = receiver.records()
        start_ms = ingest_end_wall_ms + _ADAPT_S * 1000
        span = [r for r in calls if start_ms <= r["at_ms"] < start_ms + drain_s * 1000]
        accepted = [r for r in span if r["status"] and 200 <= r["status"] < 300]
        throttled = [r for r in span if r["status"] == 429]
        per_request = Counter(r["path"] for r in calls if r["status"] and r["status"] < 300)
        both = [
            path for path, body in ((r["path"], r["body"]) for r in calls)
            if isinstance(body, dict) and "helicone-score-feedback" in body.get("scores", {})
            and len(body["scores"]) > 1
        ]
        calls_per_both = (
            sum(per_request[p] for p in set(both)) / len(set(both)) if both else float("nan")
        )
        result.update(
            dry_ingest_per_s=a["ingest_per_s"],
            live_ingest_per_s=b["ingest_per_s"],
            ingest_ratio=round(b["ingest_per_s"] / a["ingest_per_s"], 3),
            dry_windows=a["windows_decided"],
            live_windows=b["windows_decided"],
            windows_ratio=round(b["windows_decided"] / max(1, a["windows_decided"]), 3),
            calls_per_request_with_rating_and_scores=round(calls_per_both, 3),
            requests_with_rating_and_scores=len(set(both)),
            drain_s=drain_s,
            drain_calls_per_s=round(len(accepted) / drain_s, 2),
            drain_share=round(len(accepted) / drain_s / limit, 3),
            throttled_share=round(len(throttled) / max(1, len(span)), 4),
            calls_in_span=len(span),
            backlog_at_end=int(backlog),
            oldest_undelivered_s=round(oldest, 1),
            rate_at_end_per_s=round(rate_now, 2),
        )
    log(f"helicone-limits: ingest (b)/(a) = {result['ingest_ratio']:.2f} (target >= 0.95); "
        f"windows (b)/(a) = {result['windows_ratio']:.2f} (target >= 0.95)")
    log(f"helicone-limits: calls per request with a rating and scores: "
        f"{result['calls_per_request_with_rating_and_scores']} over "
        f"{result['requests_with_rating_and_scores']:,} requests (target 1.0)")
    log(f"helicone-limits: drain {result['drain_calls_per_s']} calls/s of {limit} = "
        f"{result['drain_share']:.2f} (target >= 0.9); 429s {result['throttled_share']:.2%} of "
        f"{result['calls_in_span']} calls (target <= 1 %)")
    log(f"helicone-limits: at the end: backlog {result['backlog_at_end']:,} requests, oldest "
        f"{result['oldest_undelivered_s']} s, rate {result['rate_at_end_per_s']} calls/s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--limit", type=int, default=5, help="Helicone's calls per second")
    parser.add_argument("--drain-s", type=float, default=60.0)
    parser.add_argument("--window-s", type=int, default=300,
                        help="the receiver's fixed rate-limit window (Helicone: 300)")
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = run(events=args.events, requests=args.requests, partitions=args.partitions,
                 limit=args.limit, drain_s=args.drain_s, window_s=args.window_s,
                 bootstrap=args.bootstrap)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
