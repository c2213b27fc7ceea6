"""Pipeline benchmark: the worker's events/s against two baselines measured in the same run.

    (a) raw aiokafka consumption + JSON parsing of the topic    (the client's limit)
    (b) a bare Faust agent that only decodes each record         (the framework's limit)
    (c) the worker: ingest + windows + rules + decisions to the outbox

All three read the same topic of N realistic, mixed events (default 200,000 over 20,000
requests, keyed by request id, event times in the past so windows close on stream time).  It
prints the three rates, c/b and c/a, the worker's peak RSS, and then runs a *live* phase
(events stamped with the current time, at a steady rate) to measure the decision delay:
outbox record time - (window end + grace), p50/p99.

    python bench/pipeline.py                       # embedded Tansu broker
    python bench/pipeline.py --events 50000        # quicker
    python bench/pipeline.py --bootstrap host:9092 # an Apache Kafka cluster

This is a benchmark, not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.devtools.broker import EmbeddedBroker, free_port  # noqa: E402
from worker.devtools.traffic import iso  # noqa: E402

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
            events.append((t, request_id.encode(), orjson.dumps(event)))
    events.sort(key=lambda e: e[0])
    return [(key, value) for _, key, value in events[:n_events]]


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def publish(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, max_batch_size=262_144)
    await producer.start()
    t0 = time.perf_counter()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(records) / (time.perf_counter() - t0)


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


def bare_faust(bootstrap: str, topic: str, total: int, partitions: int) -> float:
    """(b): a bare Faust agent in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "_bare_faust.py"), bootstrap, topic,
             str(total), str(partitions), str(out)],
            cwd=tmp, check=True, timeout=900,
        )
        result = json.loads(out.read_text())
        return float(result["events"] / result["seconds"])


class Worker:
    """``feedback-worker run`` in its own process, watched through /metrics."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, state: Path) -> None:
        self.port = free_port()
        sfx = uuid.uuid4().hex[:8]
        self.outbox = f"bench-outbox-{sfx}"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "TOPIC_UI_EVENTS": topic,
            "TOPIC_OUTBOX": self.outbox,
            "TOPIC_INVALID": f"bench-invalid-{sfx}",
            "TOPIC_LATE": f"bench-late-{sfx}",
            "TOPIC_DLQ": f"bench-dlq-{sfx}",
            "WORKER_GROUP_ID": f"bench-{sfx}",
            "TOPIC_PARTITIONS": str(partitions),
            "WORKER_WEB_PORT": str(self.port),
            "WORKER_WEB_HOST": "127.0.0.1",
            "STATE_DIR": str(state),
            "FEEDBACK_DRY_RUN": "true",
            "KAFKA_REBALANCE_TIMEOUT_S": "6",
            "KAFKA_SESSION_TIMEOUT_S": "10",
            "LOG_LEVEL": "WARNING",
            **WINDOW_ENV,
        }
        self.process = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=env)

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
            and line[len(name)] in "{ "
        )

    def wait(self, name: str, at_least: float, timeout_s: float = 900) -> float:
        """Poll ``name`` every 200 ms; return the perf_counter time it reached ``at_least``."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            try:
                if self.metric(name) >= at_least:
                    return time.perf_counter()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{name} did not reach {at_least}")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


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


async def live_phase(bootstrap: str, topic: str, rate: int, seconds: int) -> tuple[int, int]:
    """Publish events stamped with the current time at ``rate``/s; return start and end (ms).

    Each second's answers were shown about 4 s ago and their signals follow within 4 s, so
    no event claims to be from the future and stream time tracks the wall clock."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    start_ms = int(time.time() * 1000)
    try:
        for second in range(seconds):
            now_ms = int(time.time() * 1000)
            batch = make_events(rate, max(1, rate // 4), start_ms=now_ms - 4_000, spread_ms=100,
                                seed=1_000 + second)
            for key, value in batch:
                await producer.send(topic, key=key, value=value)
            await producer.flush()
            await asyncio.sleep(max(0.0, 1 - (time.time() * 1000 - now_ms) / 1000))
    finally:
        await producer.stop()
    return start_ms, int(time.time() * 1000)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--live-rate", type=int, default=1_000, help="events/s in the live phase")
    parser.add_argument("--live-seconds", type=int, default=30)
    args = parser.parse_args()

    with ExitStack() as stack:
        bootstrap = args.bootstrap
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap_servers
        topic = f"bench-ui-events-{uuid.uuid4().hex[:8]}"
        now_ms = int(time.time() * 1000)
        records = make_events(args.events, args.requests, start_ms=now_ms - 3 * 3_600_000,
                              spread_ms=2 * 3_600_000, seed=7)
        asyncio.run(create_topic(bootstrap, topic, args.partitions))
        publish_rate = asyncio.run(publish(bootstrap, topic, records))
        total = len(records)
        print(f"published {total:,} events over {args.requests:,} requests "
              f"({publish_rate:,.0f}/s) to {args.partitions} partitions")

        rate_a = asyncio.run(raw_aiokafka(bootstrap, topic, total, args.partitions))
        print(f"(a) raw aiokafka + JSON parse : {rate_a:>10,.0f} events/s")
        rate_b = bare_faust(bootstrap, topic, total, args.partitions)
        print(f"(b) bare faust agent, decode  : {rate_b:>10,.0f} events/s")

        state = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        worker = Worker(bootstrap, topic, args.partitions, state)
        try:
            t0 = worker.wait("feedback_events_total", 1)
            t1 = worker.wait("feedback_events_total", total)
            rate_c = total / (t1 - t0)
            print(f"(c) feedback-worker           : {rate_c:>10,.0f} events/s")
            print(f"c/b = {rate_c / rate_b:.2f}   c/a = {rate_c / rate_a:.3f}")
            decisions = worker.metric("feedback_decisions_total")
            print(f"decisions written so far: {decisions:,.0f}")

            since, until = asyncio.run(
                live_phase(bootstrap, topic, args.live_rate, args.live_seconds)
            )
            time.sleep(float(WINDOW_ENV["IDLE_CLOSE_S"]) + 25)  # let the last windows close
            grace_ms = int(float(WINDOW_ENV["WINDOW_GRACE_S"]) * 1000)
            decided = asyncio.run(outbox_delays(bootstrap, worker.outbox, since, grace_ms))
            # Windows due while traffic still flowed close on stream time; the ones due after
            # the last event close on the idle timer (IDLE_CLOSE_S later, by design).
            flowing = [d for end, d in decided if end + grace_ms < until - 1_000]
            idle = [d for end, d in decided if end + grace_ms >= until - 1_000]
            print(f"live phase: {args.live_rate}/s for {args.live_seconds} s, "
                  f"{len(decided)} windows decided")
            print(f"decision delay (written - window end - grace), closed while traffic flowed: "
                  f"p50 {pct(flowing, .5):.0f} ms, p99 {pct(flowing, .99):.0f} ms "
                  f"(n={len(flowing)})")
            print(f"  closed by the idle timer after traffic stopped: n={len(idle)}, "
                  f"p50 {pct(idle, .5):.0f} ms (IDLE_CLOSE_S={WINDOW_ENV['IDLE_CLOSE_S']})")
            print(f"worker peak RSS: {worker.peak_rss_mib():.0f} MiB")
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
