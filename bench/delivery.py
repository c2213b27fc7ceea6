"""Delivery benchmark: outbox decisions delivered by the worker, against a bare httpx loop.

Both sides post the same requests (per decision: one call with its request's whole state) to
the same local Helicone-compatible receiver, running as its own process, with the same
concurrency, in the same run:

    (a) bare: an httpx.AsyncClient and CONCURRENCY tasks taking decisions from a list
    (b) worker: ``feedback-worker run`` consuming the decisions from the outbox topic

Throughput is measured at the receiver, from the first to the last accepted call of each run
(so neither side's start-up counts).  httpx's async pool slows down as concurrency grows
(encode/httpx#3215), so the bare loop is also run at concurrency 8 and that rate is printed
for context; the ratio the issue asks for is at the same concurrency.

A second, paced phase sends one decision at a time at a steady rate and measures latency: for
the worker, receiver time minus the time the decision was produced to the outbox; for the bare
loop, receiver time minus the time the request was started.  Added latency is the worker's
percentile minus the bare loop's.  To show where it goes, the same paced records are also
timed through a plain aiokafka consumer with the fetch wait Faust hard-codes (1500 ms): on
Tansu a fetch is not answered as soon as a record arrives, which dominates the figure.

    python bench/delivery.py                     # embedded Tansu, 3,000 decisions, rate lifted
    python bench/delivery.py --decisions 1000 --concurrency 16
    python bench/delivery.py --rate 10           # with the production rate limit (10/s)
    python bench/delivery.py --bootstrap host:9092
    python bench/delivery.py --json out.json     # also write the figures as JSON

``run(...)`` returns the same figures as a dict (bench/report.py uses it).

This is a benchmark, not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# worker.helicone is imported for its side effect on httpcore (the sniffio import fix, see
# there), so the bare loop runs on the same footing as the worker's client.
from _common import fetch_latency  # type: ignore[import-not-found]  # noqa: E402

import worker.helicone  # noqa: E402, F401
from worker.devtools.broker import EmbeddedBroker, free_port  # noqa: E402
from worker.events import Decision, decision_id_for  # noqa: E402

KEY = "sk-helicone-bench-0000"


def make_decision(index: int, *, scores: bool) -> Decision:
    now = datetime.now(UTC)
    request_id = str(uuid.uuid4())
    start = now - timedelta(seconds=60)
    return Decision(
        decision_id=decision_id_for(request_id, "engagement", int(start.timestamp() * 1000)),
        target="request",
        request_id=request_id,
        session_id=None,
        rule="engagement",
        rating=index % 3 != 0,
        scores={"time_spent_s": index % 120, "copied": index % 2} if scores else {},
        window_start=start,
        window_end=now,
        decided_at=now,
        signals=[],
        rule_version=1,
    )


def calls_of(decision: Decision) -> list[tuple[str, dict[str, Any]]]:
    """The one call the worker makes for a decision that is its request's whole state."""
    scores = dict(decision.scores)
    if decision.rating is not None:
        scores["helicone-score-feedback"] = 1 if decision.rating else 0
    return [(f"/v1/request/{decision.request_id}/score", {"scores": scores})] if scores else []


# --------------------------------------------------------------------------- receiver


class ReceiverProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.devtools.receiver", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.delete(f"{self.url}/_admin/records", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the receiver did not start")

    def records(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/_admin/records", timeout=60)
        return list(response.json()["records"])

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_admin/records", timeout=10)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def span_rate(records: list[dict[str, Any]], decisions: int) -> tuple[float, float]:
    """(decisions/s, calls/s) from the first to the last accepted call."""
    times = [r["at_ms"] for r in records if r["status"] and 200 <= r["status"] < 300]
    elapsed_s = max(1, max(times) - min(times)) / 1000
    return decisions / elapsed_s, len(times) / elapsed_s


# --------------------------------------------------------------------------- bare loop


async def bare_run(url: str, decisions: list[Decision], concurrency: int) -> list[float]:
    """Post every decision's calls with ``concurrency`` tasks; returns each call's start time
    (wall clock, ms) by path, for the latency phase."""
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=5
    )
    headers = {"Authorization": f"Bearer {KEY}", "Accept": "application/json"}
    queue: asyncio.Queue[Decision] = asyncio.Queue()
    for decision in decisions:
        queue.put_nowait(decision)
    starts: list[float] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:

        async def work() -> None:
            while not queue.empty():
                decision = queue.get_nowait()
                for path, body in calls_of(decision):
                    starts.append(time.time() * 1000)
                    response = await client.post(path, json=body, headers=headers)
                    response.raise_for_status()

        await asyncio.gather(*(work() for _ in range(concurrency)))
    return starts


async def bare_paced(url: str, decisions: list[Decision], rate: float) -> dict[str, float]:
    """One decision every 1/rate s, each posted as soon as it is due: start time by path."""
    headers = {"Authorization": f"Bearer {KEY}", "Accept": "application/json"}
    started: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        tasks = []

        async def post(path: str, body: dict[str, Any]) -> None:
            started[path] = time.time() * 1000
            (await client.post(path, json=body, headers=headers)).raise_for_status()

        for decision in decisions:
            ((path, body),) = calls_of(decision)
            tasks.append(asyncio.create_task(post(path, body)))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    return started


# --------------------------------------------------------------------------- worker


async def produce(bootstrap: str, topic: str, decisions: list[Decision]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, key=d.request_id.encode(), value=d.model_dump_json().encode()  # type: ignore[union-attr]
            )
            for d in decisions
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_paced(
    bootstrap: str, topic: str, decisions: list[Decision], rate: float
) -> dict[str, float]:
    """Send one decision every 1/rate s, each acknowledged before the next; produce time by
    feedback path (taken just before the send)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    sent: dict[str, float] = {}
    try:
        for decision in decisions:
            ((path, _),) = calls_of(decision)
            sent[path] = time.time() * 1000
            await producer.send_and_wait(
                topic, key=decision.request_id.encode(),  # type: ignore[union-attr]
                value=decision.model_dump_json().encode(),
            )
            await asyncio.sleep(1 / rate)
    finally:
        await producer.stop()
    return sent


class Worker:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = int(env["WORKER_WEB_PORT"])
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "run"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}")
            try:
                if self.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError("worker not ready")

    def delivered(self) -> float:
        total = 0.0
        for line in self.get("/metrics").text.splitlines():
            if line.startswith("feedback_delivery_delivered_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_delivered(self, n: float, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while self.delivered() < n:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.delivered()} of {n} delivered")
            time.sleep(0.2)

    def peak_rss_mb(self) -> float | None:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- main


def run(
    *,
    decisions: int = 3_000,
    concurrency: int = 32,
    rate: float = 1e9,
    paced: int = 300,
    paced_rate: float = 20.0,
    partitions: int = 8,
    bootstrap: str | None = None,
    worker_env: dict[str, str] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the figures as a dict."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-dlv-")))
        if bootstrap is None:
            broker = EmbeddedBroker(log_path=workdir / "tansu.log")
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap_servers
        receiver = ReceiverProcess()
        stack.callback(receiver.stop)
        log(f"delivery: broker {bootstrap}, receiver {receiver.url}, {os.cpu_count()} CPUs")

        # (a) bare loop
        batch = [make_decision(i, scores=True) for i in range(decisions)]
        asyncio.run(bare_run(receiver.url, batch[:200], concurrency))  # warm up
        receiver.clear()
        asyncio.run(bare_run(receiver.url, batch, concurrency))
        bare_dps, bare_cps = span_rate(receiver.records(), len(batch))
        receiver.clear()
        asyncio.run(bare_run(receiver.url, batch, 8))
        bare8_dps, bare8_cps = span_rate(receiver.records(), len(batch))
        receiver.clear()
        log(f"delivery: bare httpx loop {bare_dps:,.1f} decisions/s "
            f"(concurrency 8: {bare8_dps:,.1f})")

        # (b) the worker
        sfx = uuid.uuid4().hex[:8]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", str(workdir)),
            "PYTHONPATH": str(ROOT),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_REBALANCE_TIMEOUT_S": "6",
            "KAFKA_SESSION_TIMEOUT_S": "10",
            "TOPIC_PARTITIONS": str(partitions),
            "WORKER_GROUP_ID": f"bench-{sfx}",
            "TOPIC_UI_EVENTS": f"ui-events-{sfx}",
            "TOPIC_OUTBOX": f"outbox-{sfx}",
            "TOPIC_DLQ": f"dlq-{sfx}",
            "TOPIC_INVALID": f"invalid-{sfx}",
            "TOPIC_LATE": f"late-{sfx}",
            "WORKER_WEB_PORT": str(free_port()),
            "WORKER_WEB_HOST": "127.0.0.1",
            "STATE_DIR": str(workdir / "state"),
            "HELICONE_API_KEY": KEY,
            "HELICONE_BASE_URL": receiver.url,
            "DELIVERY_CONCURRENCY": str(concurrency),
            "DELIVERY_RATE_PER_S": str(rate),
            **(worker_env or {}),
        }
        worker = Worker(env, workdir / "worker.log")
        stack.callback(worker.stop)
        worker.wait_ready()
        warm = [make_decision(i, scores=True) for i in range(200)]
        asyncio.run(produce(bootstrap, env["TOPIC_OUTBOX"], warm))
        worker.wait_delivered(len(warm))
        receiver.clear()
        asyncio.run(produce(bootstrap, env["TOPIC_OUTBOX"], batch))
        worker.wait_delivered(len(warm) + len(batch))
        records = receiver.records()
        worker_dps, worker_cps = span_rate(records, len(batch))
        paths = [r["path"] for r in records if r["status"] and r["status"] < 300]
        duplicates = len(paths) - len(set(paths))
        receiver.clear()
        log(f"delivery: worker {worker_dps:,.1f} decisions/s "
            f"(ratio {worker_dps / bare_dps:.2f})")

        # latency, paced: rating-only decisions, one call each
        paced_batch = [make_decision(i, scores=False) for i in range(paced)]
        bare_start = asyncio.run(bare_paced(receiver.url, paced_batch, paced_rate))
        at = {r["path"]: r["at_ms"] for r in receiver.records()}
        bare_lat = [at[p] - t for p, t in bare_start.items()]
        receiver.clear()
        paced_batch = [make_decision(i, scores=False) for i in range(paced)]
        produced = asyncio.run(
            produce_paced(bootstrap, env["TOPIC_OUTBOX"], paced_batch, paced_rate)
        )
        worker.wait_delivered(len(warm) + len(batch) + len(paced_batch))
        at = {r["path"]: r["at_ms"] for r in receiver.records()}
        worker_lat = [at[p] - t for p, t in produced.items()]
        rss = worker.peak_rss_mb()
        worker.stop()
        broker_lat = asyncio.run(
            fetch_latency(bootstrap, count=len(paced_batch), rate=paced_rate)
        )

    def lat(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(percentile(values, 0.5), 1),
            "p99_ms": round(percentile(values, 0.99), 1),
            "max_ms": round(max(values), 1),
            "mean_ms": round(statistics.fmean(values), 1),
        }

    return {
        "decisions": decisions,
        "concurrency": concurrency,
        "rate_limit_per_s": None if rate >= 1e6 else rate,
        "partitions": partitions,
        "bare_decisions_per_s": round(bare_dps, 1),
        "bare_calls_per_s": round(bare_cps, 1),
        "bare8_decisions_per_s": round(bare8_dps, 1),
        "bare8_calls_per_s": round(bare8_cps, 1),
        "worker_decisions_per_s": round(worker_dps, 1),
        "worker_calls_per_s": round(worker_cps, 1),
        "worker_vs_bare": round(worker_dps / bare_dps, 3),
        "worker_vs_bare8": round(worker_dps / bare8_dps, 3),
        "duplicate_calls": duplicates,
        "worker_peak_rss_mib": None if rss is None else round(rss),
        "paced": {
            "decisions": paced,
            "rate_per_s": paced_rate,
            "bare": lat(bare_lat),
            "worker": lat(worker_lat),
            "plain_consumer": lat(broker_lat),
        },
    }


def print_result(r: dict[str, Any]) -> None:
    """The human-readable summary of :func:`run`'s figures."""
    rate_label = "lifted" if r["rate_limit_per_s"] is None else f"{r['rate_limit_per_s']:g}/s"
    print(f"\n{r['decisions']} decisions (2 calls each), concurrency {r['concurrency']}, "
          f"rate limit {rate_label}, {r['partitions']} partitions")
    print(f"  bare httpx loop : {r['bare_decisions_per_s']:8.1f} decisions/s  "
          f"{r['bare_calls_per_s']:8.1f} calls/s")
    print(f"  (bare, conc. 8) : {r['bare8_decisions_per_s']:8.1f} decisions/s  "
          f"{r['bare8_calls_per_s']:8.1f} calls/s   httpx's best concurrency here, for context")
    print(f"  worker          : {r['worker_decisions_per_s']:8.1f} decisions/s  "
          f"{r['worker_calls_per_s']:8.1f} calls/s   (duplicate calls: {r['duplicate_calls']})")
    print(f"  ratio worker/bare: {r['worker_vs_bare']:.2f}  (target >= 0.8 with the rate "
          f"limit lifted); against the concurrency-8 loop: {r['worker_vs_bare8']:.2f}")
    if r["worker_peak_rss_mib"] is not None:
        print(f"  worker peak RSS : {r['worker_peak_rss_mib']:.0f} MiB")
    paced = r["paced"]
    print(f"\nlatency, {paced['decisions']} decisions paced at {paced['rate_per_s']:g}/s (ms):")
    for name, key in (("bare (call start -> received)", "bare"),
                      ("worker (outbox produce -> received)", "worker"),
                      ("plain consumer (produce -> consumed)", "plain_consumer")):
        v = paced[key]
        print(f"  {name:38s} p50 {v['p50_ms']:6.1f}  p99 {v['p99_ms']:6.1f}  "
              f"max {v['max_ms']:6.1f}  mean {v['mean_ms']:6.1f}")

    def added(q: str) -> float:
        return float(paced["worker"][q] - paced["bare"][q])

    def own(q: str) -> float:
        return added(q) - float(paced["plain_consumer"][q])

    print(f"  added by the worker                    p50 {added('p50_ms'):6.1f}  "
          f"p99 {added('p99_ms'):6.1f}")
    print(f"    of which not the consumer's fetch    p50 {own('p50_ms'):6.1f}  "
          f"p99 {own('p99_ms'):6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=3_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1e9,
                        help="DELIVERY_RATE_PER_S for the worker (default: lifted)")
    parser.add_argument("--paced", type=int, default=300, help="decisions in the latency phase")
    parser.add_argument("--paced-rate", type=float, default=20.0, help="decisions/s, paced")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--bootstrap", default=None, help="use this broker, not embedded Tansu")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra setting for the worker (repeatable), e.g. LOG_LEVEL=WARNING")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    args = parser.parse_args()
    result = run(
        decisions=args.decisions, concurrency=args.concurrency, rate=args.rate,
        paced=args.paced, paced_rate=args.paced_rate, partitions=args.partitions,
        bootstrap=args.bootstrap,
        worker_env=dict(item.split("=", 1) for item in args.worker_env),
        log=print,
    )
    print_result(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
