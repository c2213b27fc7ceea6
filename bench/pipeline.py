"""Pipeline benchmark: the worker's events/s against two baselines measured in the same run.

    (a) raw aiokafka consumption + JSON parsing of the topic    (the client's limit)
    (b) a bare Faust agent that only decodes each record         (the framework's limit)
    (c) the worker: ingest + windows + rules + decisions to the outbox

All three read the same topic of N realistic, mixed events (default 200,000 over 20,000
requests, keyed by request id, event times in the past so windows close on stream time).  It
prints the three rates, c/b and c/a, the worker's peak RSS, and then runs a *live* phase
(each event published when the wall clock reaches its event time, checked every 25 ms) to
measure the decision delay: outbox record time - (window end + grace), p50/p99, separately
for windows closed by stream time (while traffic flowed) and by the idle timer (after it
stopped).

    python bench/pipeline.py                       # embedded Tansu broker
    python bench/pipeline.py --events 50000        # quicker
    python bench/pipeline.py --bootstrap host:9092 # an Apache Kafka cluster
    python bench/pipeline.py --json out.json       # also write the figures as JSON

``run(...)`` returns the same figures as a dict (bench/report.py uses it).

This is a benchmark, not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
from _common import (  # type: ignore[import-not-found]
    ROOT,
    WorkerProcess,
    create_topic,
    fetch_latency,
    pct,
    publish,
    worker_env,
    write_json,
)
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from worker.devtools.broker import EmbeddedBroker
from worker.devtools.traffic import iso

#: Event types by journey kind: the opener first, then the signals drawn for the rest.
KINDS: dict[str, tuple[str, list[str]]] = {
    "chat": ("response_shown", ["message_sent", "response_copied", "link_clicked",
                                "response_shared", "page_left", "response_regenerated"]),
    "code": ("suggestion_shown", ["suggestion_accepted", "suggestion_modified",
                                  "suggestion_rejected"]),
    "search": ("results_shown", ["result_clicked"]),
    "support": ("ticket_opened", ["ticket_resolved", "ticket_reopened"]),
}
#: Short windows, so the burst's event-time span closes most of them during the run.
WINDOW_ENV = {
    "ENGAGEMENT_WINDOW_S": "5",
    "CODE_WINDOW_S": "3",
    "CLICKS_WINDOW_S": "10",
    "TICKET_WINDOW_S": "20",
    "WINDOW_GRACE_S": "1",
    "IDLE_CLOSE_S": "2",
    # Delivery runs in the same worker (dry run). Its token bucket (10 calls/s by default)
    # would otherwise make the outbox back up into the shared consumer and throttle ingest:
    # this bench measures ingest and windows, so the limit is lifted.
    "DELIVERY_RATE_PER_S": "100000",
}


def make_events(
    n_events: int, n_requests: int, *, start_ms: int, spread_ms: int, seed: int
) -> list[tuple[bytes, bytes]]:
    """``n_events`` events over ``n_requests`` requests, in event-time order, as (key, value)."""
    timed = make_timed_events(n_events, n_requests, start_ms=start_ms, spread_ms=spread_ms,
                              seed=seed)
    return [(key, value) for _, key, value in timed]


def make_timed_events(
    n_events: int, n_requests: int, *, start_ms: int, spread_ms: int, seed: int
) -> list[tuple[int, bytes, bytes]]:
    """As :func:`make_events`, with each event's time (ms) first."""
    rng = random.Random(seed)
    per_request = max(1, n_events // n_requests)
    events: list[tuple[int, bytes, bytes]] = []
    for _ in range(n_requests):
        request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        kind = rng.choice(list(KINDS))
        opener, signals = KINDS[kind]
        t0 = start_ms + rng.randrange(spread_ms)
        for i in range(per_request):
            t = t0 if i == 0 else t0 + rng.randrange(1, 4_000)
            type_ = opener if i == 0 else rng.choice(signals)
            event: dict[str, Any] = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "type": type_,
                "request_id": request_id,
                "session_id": f"s-{request_id[:8]}",
                "occurred_at": iso(t),
            }
            if type_ == "results_shown":
                event["properties"] = {"result_count": 10}
            elif type_ == "result_clicked":
                event["properties"] = {"result_id": f"doc-{rng.randrange(10)}"}
            elif type_.startswith("ticket_"):
                event["properties"] = {"ticket_id": "T-1"}
            elif type_ == "response_shown":
                event["properties"] = {"prompt_text": "How do I rotate my API key?"}
            elif type_ == "message_sent":
                event["properties"] = {"text": rng.choice(["thanks!", "and for the EU?"])}
            # b"%s" % copies: orjson 3.13's result keeps a ~4 KiB buffer however short it is
            events.append((t, request_id.encode(), b"%s" % orjson.dumps(event)))
    events.sort(key=lambda e: e[0])
    return events[:n_events]


async def raw_aiokafka(bootstrap: str, topic: str, total: int, partitions: int) -> float:
    """(a): assign every partition, read from the start, parse each value."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        seen, t0 = 0, 0.0
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                if seen == 0 and records:
                    t0 = time.perf_counter()
                for record in records:
                    orjson.loads(record.value)
                seen += len(records)
        return total / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


def bare_faust(bootstrap: str, topic: str, total: int, partitions: int, work: Path) -> float:
    """(b): a bare Faust agent in its own process (its output goes to bare-faust.log)."""
    tmp = work / "bare"
    tmp.mkdir()
    out = tmp / "result.json"
    with open(work / "bare-faust.log", "wb") as log:
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "_bare_faust.py"), bootstrap, topic,
             str(total), str(partitions), str(out)],
            cwd=tmp, check=True, timeout=900, stdout=log, stderr=subprocess.STDOUT,
        )
    result = json.loads(out.read_text())
    return float(result["events"] / result["seconds"])


async def outbox_delays(
    bootstrap: str, topic: str, since_ms: int, grace_ms: int
) -> list[tuple[int, float]]:
    """(window end, decision delay in ms) for window decisions that ended after ``since_ms``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    delays: list[tuple[int, float]] = []
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer.topics()
            parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in parts])
        await consumer.seek_to_beginning()
        while True:
            batch = await consumer.getmany(timeout_ms=1500, max_records=10_000)
            if not batch:
                break
            for records in batch.values():
                for record in records:
                    decision = orjson.loads(record.value)
                    end_ms = _ms(decision["window_end"])
                    if decision["window_start"] != decision["window_end"] and end_ms > since_ms:
                        delays.append((end_ms, record.timestamp - end_ms - grace_ms))
    finally:
        await consumer.stop()
    return delays


def _ms(stamp: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


async def live_phase(
    bootstrap: str, topic: str, rate: int, seconds: int, step_ms: int = 25
) -> tuple[int, int, int]:
    """Publish ``rate``/s events for ``seconds``, each at (within ``step_ms`` of) its own event
    time; return start and end (ms) and the number of events sent.

    Every event goes out when the wall clock reaches its event time, as a frontend would send
    it: a journey's signals are not published together with its opener.  Otherwise a window
    cut short by a decisive signal (its end is the signal's time) would be decided only when
    the signal was published, seconds after its end + grace, and that delay would be the
    benchmark's, not the worker's.  Small steps matter for the same reason: stream time
    advances only when events arrive."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    start_ms = int(time.time() * 1000) + 500
    # Openers over the first seconds - 4 s, so that every journey's signals (up to 4 s after
    # its opener) still fall inside the phase.
    spread_ms = max(step_ms, (seconds - 4) * 1000)
    total = rate * seconds
    events = make_timed_events(total, max(1, total // 4), start_ms=start_ms,
                               spread_ms=spread_ms, seed=1_000)
    sent = 0
    try:
        while sent < len(events):
            now_ms = int(time.time() * 1000)
            due = sent
            while due < len(events) and events[due][0] <= now_ms:
                due += 1
            for _, key, value in events[sent:due]:
                await producer.send(topic, key=key, value=value)
            if due > sent:
                await producer.flush()
                sent = due
            await asyncio.sleep(step_ms / 1000)
    finally:
        await producer.stop()
    return start_ms, int(time.time() * 1000), sent


def run(
    *,
    events: int = 200_000,
    requests: int = 20_000,
    partitions: int = 8,
    bootstrap: str | None = None,
    live_rate: int = 1_000,
    live_seconds: int = 30,
    live_step_ms: int = 25,
    log: Any = print,
) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the figures as a dict."""
    result: dict[str, Any] = {"events": events, "requests": requests, "partitions": partitions}
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pipe-")))
        if bootstrap is None:
            broker = EmbeddedBroker(log_path=work / "tansu.log")
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap_servers
        topic = f"bench-ui-events-{uuid.uuid4().hex[:8]}"
        now_ms = int(time.time() * 1000)
        records = make_events(events, requests, start_ms=now_ms - 3 * 3_600_000,
                              spread_ms=2 * 3_600_000, seed=7)
        asyncio.run(create_topic(bootstrap, topic, partitions))
        publish_rate = asyncio.run(publish(bootstrap, topic, records))
        total = result["events"] = len(records)
        result["publish_per_s"] = round(publish_rate, 1)
        log(f"pipeline: published {total:,} events over {requests:,} requests "
            f"({publish_rate:,.0f}/s) to {partitions} partitions")

        rate_a = asyncio.run(raw_aiokafka(bootstrap, topic, total, partitions))
        log(f"pipeline: (a) raw aiokafka + JSON parse : {rate_a:>10,.0f} events/s")
        rate_b = bare_faust(bootstrap, topic, total, partitions, work)
        log(f"pipeline: (b) bare faust agent, decode  : {rate_b:>10,.0f} events/s")

        env = worker_env(bootstrap, topic=topic, partitions=partitions,
                         state_dir=work / "state", extra=WINDOW_ENV)
        worker = WorkerProcess(env, work / "worker.log")
        try:
            t0 = worker.wait_metric("feedback_events_total", 1)
            t1 = worker.wait_metric("feedback_events_total", total)
            rate_c = total / (t1 - t0)
            log(f"pipeline: (c) feedback-worker           : {rate_c:>10,.0f} events/s")
            log(f"pipeline: c/b = {rate_c / rate_b:.2f}   c/a = {rate_c / rate_a:.3f}")
            result.update(
                raw_aiokafka_per_s=round(rate_a, 1),
                bare_faust_per_s=round(rate_b, 1),
                worker_per_s=round(rate_c, 1),
                worker_vs_bare_faust=round(rate_c / rate_b, 3),
                worker_vs_raw_aiokafka=round(rate_c / rate_a, 4),
                decisions_after_burst=worker.metric("feedback_decisions_total"),
            )

            # Measure the delay in a steady state, not while the worker still works off the
            # burst (its dry-run delivery of the burst's decisions reads the outbox through
            # the same consumer): wait until no partition it owns has a lag.
            settle_s = _wait_caught_up(worker, timeout_s=180)
            log(f"pipeline: worker caught up {settle_s:.1f} s after the burst")
            result["caught_up_after_burst_s"] = round(settle_s, 1)
            late0 = worker.metric("feedback_events_late_total")
            lags: list[float] = []
            lag_s: list[float] = []
            stop_sampling = threading.Event()

            def sample_lag() -> None:  # is the worker keeping up during the live phase?
                while not stop_sampling.wait(0.5):
                    with contextlib.suppress(httpx.HTTPError):
                        lags.append(worker.metric_max("feedback_consumer_lag_records"))
                        lag_s.append(worker.metric_max("feedback_consumer_lag_seconds"))

            sampler = threading.Thread(target=sample_lag, daemon=True)
            sampler.start()
            try:
                since, until, sent = asyncio.run(
                    live_phase(bootstrap, topic, live_rate, live_seconds, live_step_ms)
                )
            finally:
                stop_sampling.set()
                sampler.join()
            # let the last windows close (idle timer), checking that the worker stays up
            deadline = time.perf_counter() + float(WINDOW_ENV["IDLE_CLOSE_S"]) + 25
            while time.perf_counter() < deadline:
                worker.check_alive()
                time.sleep(0.5)
            grace_ms = int(float(WINDOW_ENV["WINDOW_GRACE_S"]) * 1000)
            decided = asyncio.run(outbox_delays(bootstrap, env["TOPIC_OUTBOX"], since, grace_ms))
            # Windows due while traffic still flowed close on stream time; the ones due after
            # the last event close on the idle timer (IDLE_CLOSE_S later, by design).
            flowing = [d for end, d in decided if end + grace_ms < until - 1_000]
            idle = [d for end, d in decided if end + grace_ms >= until - 1_000]
            result["live"] = {
                "rate_per_s": live_rate,
                "seconds": live_seconds,
                "step_ms": live_step_ms,
                "events_sent": sent,
                "windows_decided": len(decided),
                "grace_s": float(WINDOW_ENV["WINDOW_GRACE_S"]),
                "idle_close_s": float(WINDOW_ENV["IDLE_CLOSE_S"]),
                "max_partition_lag_records": max(lags, default=math.nan),
                "mean_partition_lag_records": round(sum(lags) / len(lags), 1) if lags else None,
                "max_partition_lag_s": max(lag_s, default=math.nan),
                "late_events": worker.metric("feedback_events_late_total") - late0,
                "stream_time": _summary(flowing),
                "idle_timer": _summary(idle),
            }
            log(f"pipeline: live phase {live_rate}/s for {live_seconds} s in {live_step_ms} ms "
                f"steps, {len(decided)} windows decided")
            log(f"pipeline: worker lag during the live phase (largest partition): max "
                f"{result['live']['max_partition_lag_records']:.0f} records, mean "
                f"{result['live']['mean_partition_lag_records']} records, max "
                f"{result['live']['max_partition_lag_s']:.1f} s; late events "
                f"{result['live']['late_events']:.0f}")
            log(f"pipeline: decision delay past window end + grace, closed by stream time: "
                f"p50 {pct(flowing, .5):.0f} ms, p99 {pct(flowing, .99):.0f} ms "
                f"(n={len(flowing)})")
            log(f"pipeline:   closed by the idle timer after traffic stopped: "
                f"p50 {pct(idle, .5):.0f} ms, p99 {pct(idle, .99):.0f} ms (n={len(idle)}, "
                f"IDLE_CLOSE_S={WINDOW_ENV['IDLE_CLOSE_S']})")
            # same-run baseline: what the broker alone adds before any consumer sees a record
            probe = asyncio.run(fetch_latency(bootstrap))
            result["live"]["broker_fetch_latency"] = _summary(probe)
            log(f"pipeline: baseline, plain aiokafka consumer produce -> consume latency: "
                f"p50 {pct(probe, .5):.0f} ms, p99 {pct(probe, .99):.0f} ms")
            rss, peak = worker.rss_mib()
            result["worker_rss_mib"], result["worker_peak_rss_mib"] = round(rss), round(peak)
            log(f"pipeline: worker RSS {rss:.0f} MiB, peak {peak:.0f} MiB")
        finally:
            result["worker_exit_code"] = worker.stop()
    return result


def _wait_caught_up(worker: WorkerProcess, *, timeout_s: float) -> float:
    """Seconds until the burst is worked off: no partition the worker owns has a lag, no
    window is open (every window of the burst lies in the past, so all of them close) and
    no decision waits for delivery, twice in a row, 1 s apart.  A lag of zero alone is not
    enough: windows held by watermarks close, and their decisions are delivered, after the
    last event is read, and the live phase would measure that tail instead of steady state.
    """
    t0 = time.perf_counter()
    zero = 0
    while time.perf_counter() - t0 < timeout_s:
        worker.check_alive()
        try:
            busy = (worker.metric_max("feedback_consumer_lag_records")
                    + worker.metric("feedback_windows_open")
                    + worker.metric("feedback_delivery_backlog"))
        except httpx.HTTPError:
            busy = 1
        zero = zero + 1 if busy == 0 else 0
        if zero >= 2:
            return time.perf_counter() - t0
        time.sleep(1)
    return time.perf_counter() - t0  # still behind: the live phase starts anyway


def _summary(delays_ms: list[float]) -> dict[str, Any]:
    return {
        "n": len(delays_ms),
        "p50_ms": round(pct(delays_ms, 0.5), 1),
        "p99_ms": round(pct(delays_ms, 0.99), 1),
        "max_ms": round(max(delays_ms), 1) if delays_ms else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--live-rate", type=int, default=1_000, help="events/s in the live phase")
    parser.add_argument("--live-seconds", type=int, default=30)
    parser.add_argument("--live-step-ms", type=int, default=25,
                        help="publish every this many ms in the live phase (same average rate)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    args = parser.parse_args()
    result = run(events=args.events, requests=args.requests, partitions=args.partitions,
                 bootstrap=args.bootstrap, live_rate=args.live_rate,
                 live_seconds=args.live_seconds, live_step_ms=args.live_step_ms)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
