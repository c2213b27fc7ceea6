"""Collector benchmark: events/s and latency through ``feedback-worker collect``, against raw
aiokafka produce of the same events measured in the same run (issue 15).

The collector runs as its own process (``feedback-worker collect``) on a fresh embedded Tansu
broker (or ``--bootstrap``).  The events are realistic, valid mixed events (the pipeline
benchmark's journeys), posted as JSON batches of 20 with a batch ``sent_at``; every POST waits
for its ``202`` (which the collector sends only after the broker acknowledged every record).

    throughput  (a) raw aiokafka: one producer, acks=all, every event sent as fast as it goes,
                    acknowledgements awaited at the end (the client's limit).
                (b) context: the same producer, 16 tasks each sending a batch of 20 and awaiting
                    its acks before the next: the collector's write pattern without HTTP.
                (c) the collector: 16 concurrent aiohttp clients, one batch of 20 per POST.
                Run as a c a c a c a c a c a (``--rounds 5``): each of the 5 collector passes
                against the mean of the raw passes around it.  Figure: the median of those 5
                ratios (>= 0.5); one pass slowed by the rest of this shared machine moves it
                less than with 3.
    latency     50 batches/s of 20 (1,000 events/s), open loop (each batch is posted on its
                schedule whether or not earlier ones were answered), for ``--seconds``:
                POST -> 202 latency, p50/p99/max (target p99 <= 50 ms).  Baseline: the same
                pace of batches of 20 produced by raw aiokafka (acks=all), send -> all acked.
                The two alternate in ``--segments`` (3) segments each, so both sides meet
                the same load from the rest of this shared machine.
    memory      the collector's RSS (VmRSS, sampled every 0.5 s while under that load, and VmHWM)
                from /proc/<pid>/status: stated, no target.

**Tansu rejects the idempotent producer** (no InitProducerId, DESIGN 2), so on the embedded
broker the collector runs with ``COLLECTOR_IDEMPOTENT_PRODUCER=false`` (still acks=all); the
raw baseline is not idempotent either.  Both sides use the worker's default producer linger and
batch size.  The raw baseline leaves partitioning to aiokafka's default partitioner; the
collector computes the same partitions itself (worker/partitioner.py, a faster
murmur2) and passes ``partition=``: the same placement, less CPU.  The per-address rate
limit is lifted (``COLLECTOR_RATE_PER_S``), since every client here has the same address.

    python bench/collector.py                      # embedded Tansu, 40,000 events, 30 s paced
    python bench/collector.py --events 10000 --seconds 10
    python bench/collector.py --bootstrap host:9092 --idempotent   # a real Kafka cluster
    python bench/collector.py --json out.json      # also write the figures as JSON

``run(...)`` returns the same figures as a dict (bench/report.py uses it).

This is a benchmark, not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
from _common import (  # type: ignore[import-not-found]
    ROOT,
    BenchTimeout,
    WorkerDied,
    create_topic,
    machine_cpu,
    pct,
    process_cpu_s,
    process_rss_mib,
    write_json,
)
from aiokafka import AIOKafkaProducer
from pipeline import make_events  # type: ignore[import-not-found]

from worker.config import Settings
from worker.devtools.broker import EmbeddedBroker, free_port
from worker.devtools.traffic import iso

WRITE_KEY = "wk-bench-collector"
BATCH = 20
CLIENTS = 16
PACED_BATCHES_PER_S = 50


# --------------------------------------------------------------------------- the collector


class CollectorProcess:
    """``feedback-worker collect`` as a child process; its output goes to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = int(env["COLLECTOR_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "collect"],
            env=env, cwd=str(ROOT), stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
            raise WorkerDied(f"the collector exited with code {code}; log {self.log_path}:\n"
                             + tail)

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise BenchTimeout(f"the collector was not ready after {timeout_s:.0f} s")

    def rss_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MiB."""
        self.check_alive()
        return process_rss_mib(self.process.pid)  # type: ignore[no-any-return]

    def cpu_s(self) -> float:
        return float(process_cpu_s(self.process.pid))

    def stop(self, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)


def collector_env(bootstrap: str, *, topic: str, invalid: str, partitions: int,
                  idempotent: bool) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC_UI_EVENTS": topic,
        "TOPIC_INVALID": invalid,
        "TOPIC_PARTITIONS": str(partitions),
        "COLLECTOR_WRITE_KEYS": WRITE_KEY,
        "COLLECTOR_HOST": "127.0.0.1",
        "COLLECTOR_PORT": str(free_port()),
        # Tansu has no InitProducerId (DESIGN 2); on a real cluster pass --idempotent.
        "COLLECTOR_IDEMPOTENT_PRODUCER": "true" if idempotent else "false",
        # Every benchmark client has the address 127.0.0.1: lift the per-address limit.
        "COLLECTOR_RATE_PER_S": "1000000",
        "LOG_LEVEL": "WARNING",
    }


# --------------------------------------------------------------------------- payloads


def batches_of(records: list[tuple[bytes, bytes]], size: int = BATCH) -> list[bytes]:
    """Request bodies of ``size`` events each, with a batch ``sent_at`` (serialized up front,
    so the clients spend their CPU on HTTP, not on JSON)."""
    sent_at = iso(int(time.time() * 1000))
    bodies = []
    for start in range(0, len(records), size):
        events = [orjson.loads(value) for _, value in records[start:start + size]]
        bodies.append(orjson.dumps({"sent_at": sent_at, "events": events}))
    return bodies


def _producer(bootstrap: str, idempotent: bool) -> AIOKafkaProducer:
    """The raw baseline's producer: acks=all and the worker's default linger and batch size,
    as the collector's own producer has."""
    defaults = Settings(kafka_bootstrap_servers=bootstrap)
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=idempotent,
        linger_ms=defaults.kafka_producer_linger_ms,
        max_batch_size=defaults.kafka_producer_batch_bytes,
    )


# --------------------------------------------------------------------------- throughput


async def raw_produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]],
                      idempotent: bool) -> float:
    """(a) Every record sent as fast as the producer takes it, all acks awaited; events/s."""
    producer = _producer(bootstrap, idempotent)
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
        await asyncio.gather(*futures)
        return len(records) / (time.perf_counter() - t0)
    finally:
        await producer.stop()


async def raw_batches(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]],
                      idempotent: bool, clients: int = CLIENTS) -> float:
    """(b) ``clients`` tasks, each sending a batch of 20 and awaiting its acks; events/s."""
    producer = _producer(bootstrap, idempotent)
    await producer.start()
    queue: asyncio.Queue[list[tuple[bytes, bytes]]] = asyncio.Queue()
    for start in range(0, len(records), BATCH):
        queue.put_nowait(records[start:start + BATCH])

    async def client() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            futures = [await producer.send(topic, key=k, value=v) for k, v in batch]
            await asyncio.gather(*futures)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return len(records) / (time.perf_counter() - t0)
    finally:
        await producer.stop()


async def through_collector(url: str, bodies: list[bytes], clients: int = CLIENTS
                            ) -> tuple[float, dict[int, int], int]:
    """(c) ``clients`` concurrent clients, one batch per POST, each awaiting its answer.

    Returns (accepted events/s, answers by status, events accepted)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    statuses: dict[int, int] = {}
    accepted = 0
    headers = {"Authorization": f"Bearer {WRITE_KEY}", "Content-Type": "application/json"}

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(f"{url}/v1/events", data=body, headers=headers) as response:
                answer = await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 202:
                    accepted += int(orjson.loads(answer)["accepted"])

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        # warm the connections (and the collector's first-request paths) outside the timing
        async with session.get(f"{url}/healthz") as response:
            await response.read()
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return accepted / elapsed, statuses, accepted


# --------------------------------------------------------------------------- latency


async def paced_collector(url: str, bodies: list[bytes], rate: float
                          ) -> tuple[list[float], dict[int, int], float]:
    """Post ``bodies`` at ``rate`` batches/s on a fixed schedule (open loop); returns each
    POST -> answer latency (ms), answers by status, and the largest lag of a send behind its
    schedule (ms: the client itself falling behind would hide latency)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    behind = 0.0
    headers = {"Authorization": f"Bearer {WRITE_KEY}", "Content-Type": "application/json"}

    async def post(session: aiohttp.ClientSession, body: bytes) -> None:
        t0 = time.perf_counter()
        async with session.post(f"{url}/v1/events", data=body, headers=headers) as response:
            await response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
        latencies.append((time.perf_counter() - t0) * 1000)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{url}/healthz") as response:
            await response.read()
        tasks = []
        start = time.perf_counter() + 0.1
        for i, body in enumerate(bodies):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                behind = max(behind, -wait * 1000)
            tasks.append(asyncio.create_task(post(session, body)))
        await asyncio.gather(*tasks)
    return latencies, statuses, behind


async def paced_raw(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]],
                    rate: float, idempotent: bool) -> list[float]:
    """Baseline: batches of 20 produced at ``rate``/s, send -> every record acked (ms)."""
    producer = _producer(bootstrap, idempotent)
    await producer.start()
    latencies: list[float] = []

    async def one(batch: list[tuple[bytes, bytes]]) -> None:
        t0 = time.perf_counter()
        futures = [await producer.send(topic, key=k, value=v) for k, v in batch]
        await asyncio.gather(*futures)
        latencies.append((time.perf_counter() - t0) * 1000)

    try:
        tasks = []
        start = time.perf_counter() + 0.1
        for i, first in enumerate(range(0, len(records), BATCH)):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(records[first:first + BATCH])))
        await asyncio.gather(*tasks)
    finally:
        await producer.stop()
    return latencies


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": round(pct(values, 0.5), 1),
        "p99_ms": round(pct(values, 0.99), 1),
        "max_ms": round(max(values), 1) if values else math.nan,
    }


# --------------------------------------------------------------------------- run


def run(
    *,
    events: int = 40_000,
    seconds: int = 30,
    partitions: int = 8,
    clients: int = CLIENTS,
    rounds: int = 5,
    segments: int = 3,
    bootstrap: str | None = None,
    idempotent: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the figures as a dict."""
    events = max(BATCH, events - events % BATCH)
    paced_batches = PACED_BATCHES_PER_S * seconds
    result: dict[str, Any] = {
        "events": events, "batch": BATCH, "clients": clients, "partitions": partitions,
        "idempotent_producer": idempotent, "cpus": os.cpu_count(),
    }
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-coll-")))
        if bootstrap is None:
            broker = EmbeddedBroker(log_path=work / "tansu.log")
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap_servers
        suffix = uuid.uuid4().hex[:8]
        raw_topic, coll_topic = f"bench-raw-{suffix}", f"bench-coll-{suffix}"
        now_ms = int(time.time() * 1000)
        total = events + paced_batches * BATCH
        # about 10 events per journey: enough journeys that ``total`` events exist
        records = make_events(total, max(1, total // 5), start_ms=now_ms - 3_600_000,
                              spread_ms=1_800_000, seed=15)
        if len(records) < total:
            raise RuntimeError(f"made {len(records):,} events of {total:,}")
        burst, paced = records[:events], records[events:]
        bodies = batches_of(burst)
        paced_bodies = batches_of(paced)
        asyncio.run(create_topic(bootstrap, raw_topic, partitions))

        # a first, untimed produce: connections, metadata and the broker's topic warm
        asyncio.run(raw_produce(bootstrap, raw_topic, burst[:2_000], idempotent))
        rate_b = asyncio.run(raw_batches(bootstrap, raw_topic, burst, idempotent, clients))
        log(f"collector: (b) raw aiokafka, {clients} tasks x batch of {BATCH} : "
            f"{rate_b:>9,.0f} events/s (context)")

        env = collector_env(bootstrap, topic=coll_topic, invalid=f"{coll_topic}-invalid",
                            partitions=partitions, idempotent=idempotent)
        collector = CollectorProcess(env, work / "collector.log")
        try:
            collector.wait_ready()
            result["rss_idle_mib"] = round(collector.rss_mib()[0], 1)
            url = collector.url
            # warm-up: the first batches pay for imports, connections and metadata
            asyncio.run(through_collector(url, bodies[:50], clients))
            # Rounds a c a c ... a: each collector pass is set against the mean of the raw
            # passes just before and after it, so a load change on this shared machine hits
            # both sides of a ratio; the figure is the median of the rounds' ratios.
            raw_rates = [asyncio.run(raw_produce(bootstrap, raw_topic, burst, idempotent))]
            log(f"collector: (a) raw aiokafka produce, acks=all         : "
                f"{raw_rates[-1]:>9,.0f} events/s")
            coll_rates: list[float] = []
            ratios: list[float] = []
            statuses: dict[int, int] = {}
            accepted = 0
            cpu_s = client_s = elapsed = 0.0
            for i in range(rounds):
                cpu0, own0, t0 = collector.cpu_s(), time.process_time(), time.perf_counter()
                rate_c, answers, got = asyncio.run(through_collector(url, bodies, clients))
                elapsed += time.perf_counter() - t0
                cpu_s += collector.cpu_s() - cpu0
                client_s += time.process_time() - own0
                collector.check_alive()
                for status, n in answers.items():
                    statuses[status] = statuses.get(status, 0) + n
                accepted += got
                coll_rates.append(rate_c)
                log(f"collector: (c) collector, {clients} clients x POST of {BATCH}, round "
                    f"{i + 1}: {rate_c:>9,.0f} events/s  answers {answers}")
                raw_rates.append(asyncio.run(raw_produce(bootstrap, raw_topic, burst,
                                                         idempotent)))
                ratios.append(rate_c / ((raw_rates[-2] + raw_rates[-1]) / 2))
                log(f"collector: (a) raw aiokafka produce, acks=all         : "
                    f"{raw_rates[-1]:>9,.0f} events/s   round ratio c/a {ratios[-1]:.3f}")
            rate_a, rate_c = statistics.median(raw_rates), statistics.median(coll_rates)
            ratio = statistics.median(ratios)
            burst_cores, client_cores = cpu_s / elapsed, client_s / elapsed
            log(f"collector: c/a = {ratio:.3f} (median of {rounds} rounds; target >= 0.5); "
                f"medians: collector {rate_c:,.0f}, raw {rate_a:,.0f} events/s; c/b = "
                f"{rate_c / rate_b:.3f}; cores busy during (c): collector {burst_cores:.2f}, "
                f"clients {client_cores:.2f}")
            result.update(
                rounds=rounds,
                raw_produce_per_s=round(rate_a, 1),
                raw_produce_runs_per_s=[round(r, 1) for r in raw_rates],
                raw_batches_per_s=round(rate_b, 1),
                collector_per_s=round(rate_c, 1),
                collector_runs_per_s=[round(r, 1) for r in coll_rates],
                collector_vs_raw=round(ratio, 4),
                collector_vs_raw_rounds=[round(r, 4) for r in ratios],
                collector_vs_raw_batches=round(rate_c / rate_b, 4),
                answers=statuses,
                accepted=accepted,
                collector_cores_busy=round(burst_cores, 3),
                clients_cores_busy=round(client_cores, 3),
            )

            # paced phase, with the collector's RSS and CPU sampled meanwhile
            rss: list[float] = []
            stop_sampling = threading.Event()

            def sample() -> None:
                while not stop_sampling.wait(0.5):
                    try:
                        rss.append(collector.rss_mib()[0])
                    except (OSError, WorkerDied):
                        return

            # The paced phase alternates collector and raw segments, so a load spike from
            # elsewhere on this shared machine lands on both sides, not on one.
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            latencies: list[float] = []
            baseline: list[float] = []
            paced_statuses: dict[int, int] = {}
            behind = coll_cpu = coll_s = 0.0
            busy0, total0 = machine_cpu()
            step = -(-len(paced_bodies) // segments)
            try:
                for first in range(0, len(paced_bodies), step):
                    cpu0, t0 = collector.cpu_s(), time.perf_counter()
                    got, answers, late = asyncio.run(
                        paced_collector(url, paced_bodies[first:first + step],
                                        PACED_BATCHES_PER_S)
                    )
                    coll_cpu += collector.cpu_s() - cpu0
                    coll_s += time.perf_counter() - t0
                    latencies += got
                    behind = max(behind, late)
                    for status, n in answers.items():
                        paced_statuses[status] = paced_statuses.get(status, 0) + n
                    collector.check_alive()
                    baseline += asyncio.run(paced_raw(
                        bootstrap, raw_topic, paced[first * BATCH:(first + step) * BATCH],
                        PACED_BATCHES_PER_S, idempotent,
                    ))
            finally:
                stop_sampling.set()
                sampler.join()
            busy1, total1 = machine_cpu()
            cores = coll_cpu / coll_s
            _, peak = collector.rss_mib()
            collector.check_alive()
        finally:
            result["collector_exit_code"] = collector.stop()
        paced_result = {
            "batches_per_s": PACED_BATCHES_PER_S,
            "events_per_s": PACED_BATCHES_PER_S * BATCH,
            "seconds": seconds,
            "segments": segments,
            "machine_cores_busy": round((busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1),
                                        2),
            "answers": paced_statuses,
            "client_behind_schedule_max_ms": round(behind, 1),
            "collector": _summary(latencies),
            "raw_produce": _summary(baseline),
            "collector_rss_mib": round(sum(rss) / len(rss), 1) if rss else math.nan,
            "collector_rss_max_mib": round(max(rss), 1) if rss else math.nan,
            "collector_peak_rss_mib": round(peak, 1),
            "collector_cores_busy": round(cores, 3),
        }
        result["paced"] = paced_result
        c, r = paced_result["collector"], paced_result["raw_produce"]
        log(f"collector: paced {PACED_BATCHES_PER_S} batches/s of {BATCH} for {seconds} s: "
            f"POST -> 202 p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms, max "
            f"{c['max_ms']:.1f} ms (target p99 <= 50 ms); answers {paced_statuses}; client "
            f"behind schedule by at most {behind:.0f} ms; whole machine "
            f"{paced_result['machine_cores_busy']:.2f} cores busy")
        log(f"collector: baseline, raw aiokafka batch of {BATCH} send -> acked (alternating "
            f"with the collector in {segments} segments each): p50 "
            f"{r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms")
        log(f"collector: RSS under that load: mean {paced_result['collector_rss_mib']:.0f} "
            f"MiB, max {paced_result['collector_rss_max_mib']:.0f} MiB (idle after start "
            f"{result['rss_idle_mib']:.0f} MiB, VmHWM {peak:.0f} MiB); CPU "
            f"{cores:.2f} cores")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000, help="events in the burst")
    parser.add_argument("--seconds", type=int, default=30, help="length of the paced phase")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--rounds", type=int, default=5,
                        help="collector passes, each between two raw passes")
    parser.add_argument("--segments", type=int, default=3,
                        help="paced phase: alternating collector and raw segments of each")
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--idempotent", action="store_true",
                        help="idempotent producers (not on Tansu)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    args = parser.parse_args()
    result = run(events=args.events, seconds=args.seconds, partitions=args.partitions,
                 clients=args.clients, rounds=args.rounds, segments=args.segments,
                 bootstrap=args.bootstrap,
                 idempotent=args.idempotent)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
