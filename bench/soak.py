"""Soak: steady mixed load with faults for a while; fails if anything grows without bound.

    python bench/soak.py --minutes 10              # what `make soak` runs (MINUTES=10)
    python bench/soak.py --minutes 1.5 --rate 100  # a quick look
    python bench/soak.py --minutes 30 --workers 2 --out /tmp/soak.json

What runs (all on this machine):

* the embedded Tansu broker (:class:`worker.devtools.broker.EmbeddedBroker`);
* the Helicone-compatible receiver (:mod:`worker.devtools.receiver`) on a thread of this
  process, so its faults can be switched and its records read directly;
* ``--workers`` real ``feedback-worker run`` processes (one consumer group, their own state
  dirs), delivering for real to the receiver (not dry run), with the demo's short windows
  (:data:`worker.commands.demo.DEMO_SETTINGS`: windows of 4-10 s, 1 s grace, 2 s idle close), so
  windows open and close all the time;
* ``--rate`` records per second for ``--minutes``: simulated journeys of every kind and intent,
  5 % of them unkeyed, plus a ``--hostile`` share of malformed JSON, wrong types, duplicates and
  late events (bench/_soak_load.py).

Faults, spaced over the first 70 % of the load (so even ``--minutes 2`` sees each once, and the
last third, which the verdict looks at hardest, shows whether the worker came back), in this
order: slow answers (0.3 s each) at 10 %, a worker restart (SIGTERM, then started again on the
same state dir) at 20 %, a SIGKILL + start at 30 % (``--no-sigkill`` to skip), a span of 500s
(the breaker opens) at 36 %, a span of 429 + Retry-After at 52 %, 8 connection resets at 60 %
(each fault at least 5 s or 4 % of the run after the previous one ended, so a slow restart
pushes the rest later rather than piling them up).
Spans scale with the run: 6 % of it, between 8 and 45 s (429s: half that).  Faults are spans
of time, not counts of calls: while the breaker is open only one probe per cool-down reaches
the receiver, so "the next 150 calls fail" would last over an hour.

Every ``--interval`` seconds it samples worker RSS (/proc/PID/status VmRSS, summed over
workers), the state dirs' disk use (a du-style walk), open windows and consumer lag (the
workers' /metrics), the delivery retry queue, and the delivery backlog: decisions on the outbox
whose calls the receiver has not accepted yet and that are not dead-lettered (read from the
topics and the receiver, so it survives worker restarts).  A row per sample goes to the
terminal; the series, the faults and the verdict to ``--out`` (JSON).

After the load stops it waits up to ``--settle`` seconds for everything to drain, then judges
(bench/_soak_criterion.py has the criterion and why): exit 1 if RSS, store size, open windows
per second of window lifetime (:data:`WINDOW_LIFETIME_S`: so windows that follow the lag of a
saturated machine do not read as a leak) or lag grew without bound, if lag, windows, retries or
backlog did not drain, if a worker exited by itself, if any journey event sent on time was
judged late, or if any intended rating was never decided; exit 0 otherwise.  The rest of the
comparison with the simulated users' intent (wrong or extra ratings) is printed for
information.  Each sample shows the workers' CPU next to the broker's.

Not part of `make test`: it is a long run that needs a quiet machine to mean much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _soak_criterion import (  # noqa: E402
    DRAIN_LIMITS,
    GROWTH_LIMITS,
    DrainVerdict,
    GrowthVerdict,
    judge_drain,
    judge_growth,
)
from _soak_load import HOSTILE_KINDS, Load  # noqa: E402

from tests.fixtures.delivery import ReceiverThread  # noqa: E402
from worker.commands.demo import (  # noqa: E402
    _LONGEST_JOURNEY_MS,
    DEMO_SETTINGS,
    SHAPE,
    _check_table,
    _scrape,
    _total,
)
from worker.devtools.broker import EmbeddedBroker, free_port  # noqa: E402

KEY = "sk-helicone-soak-not-a-real-key"
#: The series judged for growth, with their column titles.
GROWTH_SERIES = {
    "rss_mib": "RSS MiB",
    "store_mib": "store MiB",
    "windows_per_lifetime": "windows / lifetime s",
    "lag_records": "lag",
}
#: Shown beside them but judged by the drain check only: the delivery backlog and the retry
#: queue are *meant* to grow while Helicone fails (nothing is dropped), and a short run's last
#: third is often the recovery from the last outage.  What matters is that they drain.
DRAIN_ONLY_SERIES = {"backlog": "backlog", "retry_queue": "retry queue", "windows_open": "windows"}
#: How long a window of the load stays open when the worker keeps up: the mean length of the
#: demo's windows plus the grace.  While the worker lags by L seconds, stream time trails the
#: input by L and every window stays open L longer, so open windows follow (lifetime + L) x
#: the rate.  Open windows are judged per second of that lifetime (``windows_per_lifetime``):
#: a saturated machine (the broker included) makes the lag grow and the windows with it, which
#: is a capacity figure; windows that never close grow that ratio, which is a leak.
WINDOW_LIFETIME_S = (
    (SHAPE.engagement_ms + SHAPE.code_ms + SHAPE.clicks_ms + SHAPE.ticket_ms) / 4_000
    + float(DEMO_SETTINGS["WINDOW_GRACE_S"])
)
#: Lag can't reach exactly 0 while the worker runs: its idle-close ticks are records on the
#: rekey topic, produced every second per partition, so a few are always in flight.
DRAIN = {**DRAIN_LIMITS, "lag_records": 50.0}
WORKER_SETTINGS = {
    **DEMO_SETTINGS,
    # The soak sends ~100 calls/s; the production default (10/s, Helicone's free tier) would
    # make the backlog grow by arithmetic, not by a fault.  Lifted well above the load.
    "DELIVERY_RATE_PER_S": "1000",
    # Scaled down with the windows (production: 30 s), so a short run sees the breaker open,
    # probe and close again more than once.
    "DELIVERY_BREAKER_COOL_DOWN_S": "10",
    # Settled decision ids are kept this long for dedupe (production: 7 days, so the table
    # grows for a week before its sweeps level it).  Scaled down so the sweeps run within the
    # soak and the store size can level off if it is bounded.
    "DELIVERY_DEDUPE_TTL_S": "120",
    # Bounded in-memory caches shrunk so they reach their bounds within the warm-up.  At their
    # production sizes they keep filling for longer than a soak lasts (100,000 event ids are
    # about 18 MiB and take 9 minutes at 200 events/s; each RocksDB database's block cache
    # fills toward the data it has read), which reads as RSS growth in the last third though
    # it is bounded.  Growth left after they are full is a leak.  What the caches cost at full
    # size is bench/memory.py's to measure.
    "DEDUPE_CACHE_SIZE": "2000",
    "ROCKSDB_BLOCK_CACHE_BYTES": str(1024 * 1024),
    # Memtables too: each database (one per table partition) gets a few KiB/s of writes, so a
    # 4 MiB memtable fills in about 20 minutes.  The "RocksDB MiB" column shows what they hold.
    "ROCKSDB_WRITE_BUFFER_BYTES": str(256 * 1024),
    "LOG_FORMAT": "text",
    "LOG_LEVEL": "INFO",
}
#: DESIGN 2: Tansu answers ListOffsets wrongly after multi-record batches; Faust takes a
#: changelog's end from it, so a restore misses the changelog's tail, and a restart on the same
#: state dir finds its store past that end (logged as a lost changelog,
#: worker.faust_compat.recovery).  The soak restarts workers, so they write one record per
#: batch, as the restart tests do.
#: Production Kafka does not need this; ``--normal-batching`` runs without it.
ONE_RECORD_PER_BATCH = {"KAFKA_PRODUCER_BATCH_BYTES": "1"}

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


# --------------------------------------------------------------------------- workers


@dataclass
class SoakWorker:
    """One ``feedback-worker run`` process slot: restartable on the same port and state dir."""

    index: int
    env: dict[str, str]
    state_dir: Path
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    #: True while the soak itself stops/starts it (an exit then is not a crash).
    planned: bool = False
    starts: int = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "run"],
                env=self.env,
                cwd=self.state_dir.parent,  # no stray .env
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_mib(self) -> float | None:
        if not self.running or self.process is None:
            return None
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def cpu_s(self) -> float | None:
        """User + system CPU seconds of the process so far."""
        if not self.running or self.process is None:
            return None
        return cpu_seconds(self.process.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, chars: int = 3_000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                if not self.running:
                    code = self.process.returncode if self.process else None
                    raise RuntimeError(f"worker {self.index} exited ({code}):\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    r = await http.get(f"http://127.0.0.1:{self.port}/readyz")
                    if r.status_code == 200:
                        return
                await asyncio.sleep(0.25)
        raise RuntimeError(f"worker {self.index} not ready within {timeout_s:.0f} s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (/proc/PID/stat); None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dir_mib(path: Path) -> float:
    """Disk use under ``path`` (du-style: allocated blocks), tolerant of files vanishing
    under a compaction."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total / (1 << 20)


class Cumulative:
    """A worker counter summed across restarts: a new pid in a slot starts from zero, so the
    old process's last scraped value is banked (what it counted after that scrape is lost:
    the figures are lower bounds; the topics and the receiver give the exact ones)."""

    def __init__(self) -> None:
        self._base: dict[tuple[int, str], float] = {}
        self._last: dict[tuple[int, str], float] = {}
        self._pid: dict[tuple[int, str], int] = {}

    def update(self, slot: int, pid: int, name: str, value: float) -> None:
        key = (slot, name)
        if self._pid.get(key, pid) != pid:
            self._base[key] = self._base.get(key, 0.0) + self._last.get(key, 0.0)
            self._last[key] = 0.0
        self._pid[key] = pid
        self._last[key] = value

    def total(self, name: str) -> float:
        keys = {k for k in self._last if k[1] == name}
        return sum(self._base.get(k, 0.0) + self._last[k] for k in keys)


# --------------------------------------------------------------------------- accounting


@dataclass
class Ledger:
    """Decisions from the outbox, dead letters from the DLQ, accepted calls from the receiver:
    which decisions still wait for delivery (the backlog)."""

    decisions: dict[str, tuple[str, bool, bool]] = field(default_factory=dict)
    unsettled: set[str] = field(default_factory=set)
    found: list[dict[str, Any]] = field(default_factory=list)
    outbox_records: int = 0
    dlq_ids: set[str] = field(default_factory=set)
    dlq_records: int = 0
    dlq_reasons: Counter[str] = field(default_factory=Counter)
    accepted: set[tuple[str, str]] = field(default_factory=set)
    #: (target id, endpoint) accepted more than once: a decision delivered twice (or two
    #: decisions of one request rating it twice, which the rules never mean to do).
    repeated: Counter[str] = field(default_factory=Counter)
    #: (event time, reason, event id, routing key) of every record on the late topic.
    late: list[tuple[float, str, str, str]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    history_seen: int = 0

    def on_outbox(self, value: bytes) -> None:
        self.outbox_records += 1
        try:
            d = orjson.loads(value)
        except orjson.JSONDecodeError:
            return
        if not isinstance(d, dict) or "decision_id" not in d:
            return
        did = str(d["decision_id"])
        if did in self.decisions:
            return
        target = str(d.get("request_id") if d.get("target") == "request" else d.get("session_id"))
        needs_feedback = d.get("rating") is not None
        needs_score = bool(d.get("scores")) and d.get("target") == "request"
        self.decisions[did] = (target, needs_feedback, needs_score)
        self.found.append({k: d.get(k) for k in ("request_id", "session_id", "rule", "rating")})
        if needs_feedback or needs_score:
            self.unsettled.add(did)

    def on_dlq(self, value: bytes) -> None:
        self.dlq_records += 1
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
            d = orjson.loads(value)
            self.dlq_reasons[str(d.get("reason"))] += 1
            if d.get("decision_id"):
                self.dlq_ids.add(str(d["decision_id"]))

    def on_late(self, value: bytes) -> None:
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError, ValueError):
            d = orjson.loads(value)
            self.late.append((float(d.get("event_time_ms") or 0) / 1000, str(d.get("reason")),
                              str(d.get("event_id")), str(d.get("key"))))

    def on_calls(self, history: list[Any]) -> None:
        for r in history:
            self.calls["accepted" if r.accepted else
                       ("reset" if r.status is None else str(r.status))] += 1
            if not r.accepted:
                continue
            parts = r.path.split("/")  # ['', 'v1', 'request', id, 'feedback']
            if len(parts) == 5:
                if (parts[3], parts[4]) in self.accepted:
                    self.repeated[parts[4]] += 1
                self.accepted.add((parts[3], parts[4]))

    def backlog(self) -> int:
        """Decisions not yet settled.  Delivery sends a request's whole state (rating and
        scores) in one call, to ``score`` (or ``feedback`` then ``score`` with
        HELICONE_RATING_VIA=feedback; sessions: ``feedback``), so a decision counts as
        delivered once its target has had a call accepted there."""
        settled = set()
        for did in self.unsettled:
            target, fb, sc = self.decisions[did]
            if did in self.dlq_ids or (
                (not fb or (target, "score") in self.accepted
                 or (target, "feedback") in self.accepted)
                and (not sc or (target, "score") in self.accepted)
            ):
                settled.add(did)
        self.unsettled -= settled
        return len(self.unsettled)


async def tail_topics(bootstrap: str, topics: dict[str, Any], stop: asyncio.Event) -> None:
    """Read each topic from its start, forever, handing values to ``topics[name]``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps: list[TopicPartition] = []
        while not tps and not stop.is_set():
            await consumer.topics()
            tps = [TopicPartition(t, p) for t in topics
                   for p in sorted(consumer.partitions_for_topic(t) or ())]
            if len(tps) < len(topics):
                tps = []
                await asyncio.sleep(1)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
            for tp, records in batch.items():
                for record in records:
                    topics[tp.topic](record.value)
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------- the run


@dataclass
class Sample:
    t_s: float
    phase: str
    rss_mib: float | None
    #: RocksDB's memtables, block caches and table readers (feedback_rocksdb_memory_bytes).
    rocksdb_mib: float | None
    store_mib: float
    windows_open: float | None
    #: Open windows / (WINDOW_LIFETIME_S + lag seconds): what the growth verdict judges.
    windows_per_lifetime: float | None
    lag_records: float | None
    lag_seconds: float | None
    retry_queue: float | None
    backlog: int
    published: int
    events: float
    decisions: float
    delivered: float
    dlq: float
    outbox_decisions: int
    calls_accepted: int
    workers_up: int
    #: CPU use of the workers since the previous sample (100 = one core), and the machine's
    #: 1-minute load average: a lag that grows on a starved machine is a capacity figure.
    worker_cpu_pct: float | None = None
    #: The broker's CPU use likewise: Tansu shares the two cores, and its in-memory engine
    #: costs more as it fills, so a lagging worker may be a starved one.
    broker_cpu_pct: float | None = None
    loadavg: float | None = None
    #: The worker processes sampled ("1234+1240"): RSS is judged per process (see the
    #: criterion), so a restart starts its series again.
    pids: str = ""
    note: str = ""


@dataclass
class Soak:
    args: argparse.Namespace
    bootstrap: str
    receiver: ReceiverThread
    workers: list[SoakWorker]
    workdir: Path
    load: Load
    ledger: Ledger = field(default_factory=Ledger)
    counters: Cumulative = field(default_factory=Cumulative)
    samples: list[Sample] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    broker_pid: int | None = None
    #: Per process slot (worker index, or -1 for the broker): (pid, CPU s, monotonic s) then.
    _cpu_last: dict[int, tuple[int, float, float]] = field(default_factory=dict)
    t0: float = 0.0
    wall_t0: float = 0.0
    notes: list[str] = field(default_factory=list)

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    def fault(self, what: str, **details: Any) -> None:
        entry = {"t_s": round(self.now_s(), 1), "fault": what, **details}
        self.faults.append(entry)
        self.notes.append(what)
        console.print(f"[yellow]  {entry['t_s']:>7.1f}s  fault: {what} "
                      + " ".join(f"{k}={v}" for k, v in details.items()))

    # ---- load

    async def publish(self, load_s: float) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            start_ms = int(time.time() * 1000)
            stop_scheduling_ms = start_ms + int(load_s * 1000) - _LONGEST_JOURNEY_MS
            planned_ms = start_ms
            while True:
                now_ms = int(time.time() * 1000)
                while planned_ms <= now_ms + 1_000 and planned_ms < stop_scheduling_ms:
                    self.load.schedule_second(planned_ms)
                    planned_ms += 1_000
                for record in self.load.due(now_ms):
                    await producer.send(self.args.topic, key=record.key, value=record.value)
                if planned_ms >= stop_scheduling_ms and not self.load.pending():
                    break
                await asyncio.sleep(0.05)
            await producer.flush()
        finally:
            await producer.stop()

    # ---- faults

    def schedule(self, load_s: float) -> list[tuple[float, str]]:
        # The restarts come first, so the process that runs to the end (whose RSS is judged)
        # has the longest possible run; HTTP faults follow, all over by about 70 %.
        plan = [(0.10, "slow"), (0.20, "restart"), (0.36, "errors_500"), (0.52, "burst_429"),
                (0.60, "resets")]
        if not self.args.no_sigkill:
            plan.insert(2, (0.30, "sigkill"))
        return [(f * load_s, what) for f, what in plan]

    async def run_faults(self, load_s: float) -> None:
        span_s = min(45.0, max(8.0, 0.06 * load_s))
        ending: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ending.set_result(None)
        # A restart takes ~20 s here; the next fault waits until the worker has run a while,
        # so faults do not pile up on a worker that is not back yet.
        gap_s = max(5.0, 0.04 * load_s)
        not_before = 0.0
        for at_s, what in self.schedule(load_s):
            await asyncio.sleep(max(0.0, at_s - self.now_s(), not_before - self.now_s()))
            rcv = self.receiver
            match what:
                case "slow":
                    rcv.call(lambda r: r.set_latency(0.3))
                    self.fault("slow answers", latency_s=0.3, for_s=span_s)
                    ending = asyncio.create_task(self._end_latency(span_s))
                case "errors_500":
                    rcv.call(lambda r: r.fail_for(span_s, status=500))
                    self.fault("receiver answers 500", for_s=span_s)
                # Both by time or by a few calls: a fault of N calls outlives the outage when
                # the breaker is open, since only one probe per cool-down (30 s) takes a call.
                case "burst_429":
                    burst_s = max(4.0, span_s / 2)
                    rcv.call(lambda r, b=burst_s: r.fail_for(b, status=429, retry_after=2))
                    self.fault("429 + Retry-After: 2", for_s=burst_s)
                case "resets":
                    # Count-based in the receiver: cleared after a few seconds, or an open
                    # breaker's probes would meet them one per cool-down.
                    rcv.call(lambda r: r.reset_next(8))
                    self.fault("connection resets", calls=8, for_s=3)
                    await asyncio.sleep(3)
                    rcv.call(lambda r: r.clear_faults())
                case "restart":
                    await self.restart(self.workers[0], signal.SIGTERM, "SIGTERM")
                case "sigkill":
                    await self.restart(self.workers[-1], signal.SIGKILL, "SIGKILL")
            not_before = self.now_s() + gap_s

        await ending

    async def _end_latency(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        self.receiver.call(lambda r: r.set_latency(0.0))
        self.fault("slow answers over")

    async def restart(self, worker: SoakWorker, sig: int, name: str) -> None:
        worker.planned = True
        began = time.monotonic()
        try:
            code = await asyncio.to_thread(worker.stop, sig)
            self.fault(f"worker {worker.index} {name}", exit_code=code)
            for attempt in (1, 2):
                worker.start()
                try:
                    await worker.wait_ready()
                    break
                except RuntimeError as exc:
                    self.crashes.append(f"worker {worker.index} failed to come back after "
                                        f"{name} (start {attempt}) at {self.now_s():.0f} s: "
                                        f"{_last_error(worker.log_tail(20_000))}")
                    console.print(f"[red]{exc}")
                    await asyncio.to_thread(worker.stop, signal.SIGKILL)
            else:
                return  # left down: the verdict names it
            self.fault(f"worker {worker.index} ready again",
                       downtime_s=round(time.monotonic() - began, 1))
        finally:
            worker.planned = not worker.running

    # ---- sampling

    async def sample(self, http: httpx.AsyncClient, phase: str) -> Sample:
        rss: list[float] = []
        windows = lag = lag_s = retry = rocksdb = 0.0
        complete = True
        up = 0
        for w in self.workers:
            if not w.running:
                complete = False
                if not w.planned and w.process is not None:
                    self.crashes.append(f"worker {w.index} exited by itself "
                                        f"({w.process.returncode}) at {self.now_s():.0f} s")
                    console.print(f"[red]worker {w.index} exited ({w.process.returncode}); "
                                  f"log tail:\n{w.log_tail()}")
                    w.planned = True  # restarted below; counted once
                    w.start()
                    asyncio.get_running_loop().create_task(self._clear_planned(w))
                continue
            samples = await _scrape(http, f"http://127.0.0.1:{w.port}/metrics")
            value = w.rss_mib()
            if value is not None:
                rss.append(value)
            # Before /readyz (joined, state loaded) a worker owns no partitions and reports
            # lag 0 and no windows, which would read as "drained": leave those out.
            if samples is None or value is None or not await _ready(http, w.port):
                complete = False
                continue
            up += 1
            windows += _total(samples, "feedback_windows_open")
            lag += _total(samples, "feedback_consumer_lag_records")
            lag_s = max([lag_s] + [v for _, v in samples.get("feedback_consumer_lag_seconds", [])])
            retry += _total(samples, "feedback_delivery_retry_queue")
            rocksdb += _total(samples, "feedback_rocksdb_memory_bytes")
            for name in ("feedback_events_total", "feedback_decisions_total",
                         "feedback_delivery_delivered_total", "feedback_delivery_dlq_total",
                         "feedback_events_invalid_total", "feedback_events_late_total",
                         "feedback_events_duplicate_total"):
                self.counters.update(w.index, w.process.pid if w.process else 0, name,
                                     _total(samples, name))
        cpu_pct = sum(
            self._cpu_pct(w.index, w.process.pid if w.process else 0, w.cpu_s())
            for w in self.workers
        )
        broker_pct = (
            self._cpu_pct(-1, self.broker_pid, cpu_seconds(self.broker_pid))
            if self.broker_pid is not None else None
        )
        seen = self.ledger.history_seen
        new = self.receiver.call(lambda r: r.history[seen:])
        self.ledger.history_seen += len(new)
        self.ledger.on_calls(new)
        row = Sample(
            t_s=round(self.now_s(), 1),
            phase=phase,
            rss_mib=round(sum(rss), 1) if len(rss) == len(self.workers) else None,
            rocksdb_mib=round(rocksdb / 2**20, 1) if complete else None,
            store_mib=round(sum(dir_mib(w.state_dir) for w in self.workers), 2),
            windows_open=windows if complete else None,
            windows_per_lifetime=(
                round(windows / (WINDOW_LIFETIME_S + lag_s), 1) if complete else None
            ),
            lag_records=lag if complete else None,
            lag_seconds=round(lag_s, 1) if complete else None,
            retry_queue=retry if complete else None,
            backlog=self.ledger.backlog(),
            published=sum(self.load.sent.values()),
            events=self.counters.total("feedback_events_total"),
            decisions=self.counters.total("feedback_decisions_total"),
            delivered=self.counters.total("feedback_delivery_delivered_total"),
            dlq=self.counters.total("feedback_delivery_dlq_total"),
            outbox_decisions=len(self.ledger.decisions),
            calls_accepted=self.ledger.calls["accepted"],
            workers_up=up,
            worker_cpu_pct=round(cpu_pct, 0),
            broker_cpu_pct=round(broker_pct, 0) if broker_pct is not None else None,
            loadavg=os.getloadavg()[0],
            pids="+".join(str(w.process.pid) if w.process else "-" for w in self.workers),
            note="; ".join(self.notes),
        )
        self.notes.clear()
        self.samples.append(row)
        print_row(row)
        return row

    def _cpu_pct(self, slot: int, pid: int, used: float | None) -> float:
        """CPU use of the process in ``slot`` since its previous sample (100 = one core)."""
        now = time.monotonic()
        last = self._cpu_last.get(slot)
        if used is None:
            return 0.0
        self._cpu_last[slot] = (pid, used, now)
        if last is None or last[0] != pid or now <= last[2]:
            return 0.0
        return 100 * (used - last[1]) / (now - last[2])

    async def _clear_planned(self, w: SoakWorker) -> None:
        with contextlib.suppress(RuntimeError):
            await w.wait_ready()
        w.planned = False

    async def sample_until(self, done: asyncio.Task[Any], interval_s: float, phase: str,
                           http: httpx.AsyncClient) -> None:
        next_at = self.now_s()
        while not done.done():
            await self.sample(http, phase)
            next_at += interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), max(0.0, next_at - self.now_s()))

    async def settle(self, http: httpx.AsyncClient, timeout_s: float) -> Sample:
        """Sample until everything drained (twice in a row) or ``timeout_s`` passed."""
        deadline = self.now_s() + timeout_s
        drained_twice = 0
        row = await self.sample(http, "settle")
        while self.now_s() < deadline:
            if not judge_drain(_drain_values(row), DRAIN).failed:
                drained_twice += 1
                if drained_twice >= 2:
                    break
            else:
                drained_twice = 0
            await asyncio.sleep(min(5.0, self.args.interval))
            row = await self.sample(http, "settle")
        return row


async def _ready(http: httpx.AsyncClient, port: int) -> bool:
    try:
        return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


def _last_error(log: str) -> str:
    """The last ERROR/CRITICAL line of a worker log, for a one-line finding."""
    lines = [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line]
    return lines[-1][:400] if lines else "(no error line in the log)"


def _drain_values(row: Sample) -> dict[str, float | None]:
    return {"lag_records": row.lag_records, "windows_open": row.windows_open,
            "retry_queue": row.retry_queue, "backlog": float(row.backlog)}


COLUMNS = [("t_s", 7), ("phase", 6), ("rss_mib", 8), ("rocksdb_mib", 8), ("store_mib", 9),
           ("windows_open", 8),
           ("lag_records", 7), ("lag_seconds", 6), ("retry_queue", 6), ("backlog", 8),
           ("published", 9), ("decisions", 9), ("delivered", 9), ("dlq", 5), ("workers_up", 3),
           ("worker_cpu_pct", 5), ("broker_cpu_pct", 5), ("loadavg", 5)]
TITLES = {"t_s": "t s", "rss_mib": "RSS MiB", "rocksdb_mib": "RocksDB", "store_mib": "store MiB",
          "windows_open": "windows",
          "lag_records": "lag", "lag_seconds": "lag s", "retry_queue": "retry",
          "workers_up": "up", "worker_cpu_pct": "cpu%", "broker_cpu_pct": "brk%",
          "loadavg": "load"}


def print_header() -> None:
    console.print("[bold]" + " ".join(f"{TITLES.get(n, n):>{w}}" for n, w in COLUMNS) + "  note")


def print_row(row: Sample) -> None:
    cells = []
    for name, width in COLUMNS:
        value = getattr(row, name)
        if value is None:
            text = "-"
        elif isinstance(value, float):
            text = f"{value:.1f}" if name in ("t_s", "rss_mib", "rocksdb_mib", "store_mib",
                                              "lag_seconds", "loadavg") \
                else f"{value:.0f}"
        else:
            text = str(value)
        cells.append(f"{text:>{width}}")
    console.print(" ".join(cells) + (f"  [yellow]{row.note}" if row.note else ""))


# --------------------------------------------------------------------------- verdict, summary


def judge(samples: list[Sample], final: Sample) -> tuple[list[GrowthVerdict], DrainVerdict]:
    load = [s for s in samples if s.phase == "load"]
    times = [s.t_s for s in load]
    pids = [s.pids for s in load]
    growth = [judge_growth(name, times, [getattr(s, name) for s in load], GROWTH_LIMITS[name],
                           segments=pids if name == "rss_mib" else None)
              for name in GROWTH_SERIES]
    return growth, judge_drain(_drain_values(final), DRAIN)


def summarise(soak: Soak, growth: list[GrowthVerdict], drain: DrainVerdict, *,
              load_s: float, final: Sample) -> tuple[bool, dict[str, Any]]:
    load = [s for s in soak.samples if s.phase == "load"]
    table = Table(title="series (load phase; end = after settling)")
    for col in ("series", "start", "median", "max", "end", "verdict"):
        table.add_column(col, justify="left" if col in ("series", "verdict") else "right")
    series: dict[str, Any] = {}
    for name, title in DRAIN_ONLY_SERIES.items():
        values = [v for s in load if (v := getattr(s, name)) is not None]
        end = getattr(final, name)
        verdict = ("drained" if end is not None and end <= DRAIN[name]
                   else f"[red]did not drain (left {end})")
        series[name] = {"start": values[0] if values else None,
                        "median": statistics.median(values) if values else None,
                        "max": max(values) if values else None, "end": end,
                        "verdict": verdict}
        table.add_row(title, *(_fmt(series[name][k]) for k in ("start", "median", "max", "end")),
                      f"{verdict} (drain check only)")
    for verdict in growth:
        values = [v for s in load if (v := getattr(s, verdict.name)) is not None]
        end = getattr(final, verdict.name)
        stats = {
            "start": values[0] if values else None,
            "median": statistics.median(values) if values else None,
            "max": max(values) if values else None,
            "end": end,
            "verdict": verdict.reason,
            "failed": verdict.failed,
        }
        series[verdict.name] = stats
        table.add_row(GROWTH_SERIES[verdict.name],
                      *(_fmt(stats[k]) for k in ("start", "median", "max", "end")),
                      ("[red]" if verdict.failed else "") + verdict.reason)
    console.print(table)

    ledger = soak.ledger
    facts = {
        "load_s": round(load_s, 1),
        "duration_s": round(final.t_s, 1),
        "published": dict(soak.load.sent),
        "published_total": sum(soak.load.sent.values()),
        "journeys": len(soak.load.journeys),
        "events_accepted": soak.counters.total("feedback_events_total"),
        "invalid": soak.counters.total("feedback_events_invalid_total"),
        "late": soak.counters.total("feedback_events_late_total"),
        "duplicates_dropped": soak.counters.total("feedback_events_duplicate_total"),
        "decisions_metric": soak.counters.total("feedback_decisions_total"),
        "outbox_records": ledger.outbox_records,
        "outbox_decisions": len(ledger.decisions),
        "delivered_metric": soak.counters.total("feedback_delivery_delivered_total"),
        "calls": dict(ledger.calls),
        "dlq_records": ledger.dlq_records,
        "dlq_reasons": dict(ledger.dlq_reasons),
        "undelivered_decisions": sorted(ledger.unsettled)[:50],
        "undelivered_count": len(ledger.unsettled),
        "repeated_calls": dict(ledger.repeated),
        "worker_starts": [w.starts for w in soak.workers],
        "crashes": soak.crashes,
    }
    facts_table = Table(title="run", show_header=False)
    facts_table.add_column("what")
    facts_table.add_column("value", justify="right")
    for what, value in [
        ("load / total duration", f"{load_s:.0f} s / {final.t_s:.0f} s"),
        ("records published (all kinds)", f"{facts['published_total']:,}"),
        ("  of which " + ", ".join(HOSTILE_KINDS),
         ", ".join(str(soak.load.sent[k]) for k in HOSTILE_KINDS)),
        ("events accepted / invalid / late / duplicates dropped (worker metrics)",
         f"{facts['events_accepted']:,.0f} / {facts['invalid']:,.0f} / {facts['late']:,.0f} / "
         f"{facts['duplicates_dropped']:,.0f}"),
        ("decisions (metric, across restarts) / distinct on the outbox / outbox records",
         f"{facts['decisions_metric']:,.0f} / {len(ledger.decisions):,} / "
         f"{ledger.outbox_records:,}"),
        ("delivered (metric, across restarts)", f"{facts['delivered_metric']:,.0f}"),
        ("receiver calls: " + ", ".join(sorted(ledger.calls)),
         ", ".join(f"{ledger.calls[k]:,}" for k in sorted(ledger.calls))),
        ("dead-lettered (DLQ records)", f"{ledger.dlq_records:,} {dict(ledger.dlq_reasons)}"),
        ("decisions never delivered nor dead-lettered", f"{len(ledger.unsettled):,}"),
        ("calls accepted again for the same request and endpoint",
         f"{sum(ledger.repeated.values()):,} {dict(ledger.repeated)}"),
        ("worker starts", ", ".join(str(w.starts) for w in soak.workers)),
    ]:
        facts_table.add_row(what, value)
    console.print(facts_table)

    intent, _ = _check_table(soak.load.journeys, ledger.found)
    intent.title = "decisions vs. simulated intent (information; see the module docstring)"
    console.print(intent)
    unintended = [(t - soak.wall_t0, reason) for t, reason, eid, _ in ledger.late
                  if eid not in soak.load.late_ids]
    unkeyed = sum(1 for _, _, eid, key in ledger.late
                  if eid not in soak.load.late_ids and key in soak.load.unkeyed_requests)
    facts["late_topic"] = {
        "records": len(ledger.late),
        "sent_late_on_purpose": len(soak.load.late_ids),
        "valid_events_reported_late": len(unintended),
        "of_which_from_unkeyed_journeys": unkeyed,
        "valid_late_by_reason": dict(Counter(r for _, r in unintended)),
        "valid_late_by_event_time_10s": dict(sorted(Counter(
            int(t // 10) * 10 for t, _ in unintended).items())),
    }
    console.print(f"late topic: {len(ledger.late):,} records; {len(soak.load.late_ids):,} sent "
                  f"late on purpose; {len(unintended):,} were journey events sent on time "
                  f"({unkeyed:,} of journeys sent unkeyed), by "
                  f"reason {facts['late_topic']['valid_late_by_reason']}, by event time (t s): "
                  f"{facts['late_topic']['valid_late_by_event_time_10s']}")
    anomalies = intent_anomalies(soak)
    if anomalies:
        buckets = Counter(int(a["t_s"] // 10) * 10 for a in anomalies)
        console.print("decisions not as meant, by when the journey started (t s: count): "
                      + ", ".join(f"{t}: {n}" for t, n in sorted(buckets.items()))
                      + "; faults at " + ", ".join(f"{f['t_s']:.0f} {f['fault']}"
                                                  for f in soak.faults))

    failures = [f"{GROWTH_SERIES[v.name]}: {v.reason}" for v in growth if v.failed]
    if drain.failed:
        failures.append(drain.reason)
    failures += soak.crashes
    if unintended:
        failures.append(f"{len(unintended)} journey events sent on time were judged late "
                        f"({unkeyed} of unkeyed journeys)")
    missing = [a for a in anomalies if a["what"] == "missing"]
    if missing:
        failures.append(f"{len(missing)} intended ratings never decided: "
                        + ", ".join(f"{a['rule']} of {a['journey']} at {a['t_s']} s"
                                    for a in missing[:5]))
    inconclusive = [GROWTH_SERIES[v.name] for v in growth if v.inconclusive]
    ok = not failures
    if ok:
        short = f" (too few samples to judge: {', '.join(inconclusive)})" if inconclusive else ""
        console.print("[bold green]SOAK PASSED[/]: no series grew without bound; "
                      f"everything drained{short}")
    else:
        console.print("[bold red]SOAK FAILED[/]:")
        for failure in failures:
            console.print(f"  [red]- {failure}")
    return ok, {"series": series, "facts": facts, "drain": drain.reason, "failures": failures,
                "inconclusive": inconclusive, "passed": ok, "intent_anomalies": anomalies[:500]}


def intent_anomalies(soak: Soak) -> list[dict[str, Any]]:
    """Each (journey, rule) whose decisions differ from the simulated intent, with when the
    journey started (t s of the run), so they can be laid beside the fault times."""
    decided: dict[tuple[str, str], list[bool | None]] = {}
    for d in soak.ledger.found:
        key = (str(d.get("request_id") or d.get("session_id")), str(d.get("rule")))
        decided.setdefault(key, []).append(d.get("rating"))
    out = []
    for j in soak.load.journeys:
        for rule, meant in j.expected.items():
            got = decided.get((j.request_id, rule), [])
            as_meant = set(got) <= {None} if meant is None else set(got) == {meant}
            if as_meant:
                continue
            kind = ("extra" if meant is None else "missing" if not set(got) - {None}
                    else "wrong")
            out.append({"t_s": round(j.start_ms / 1000 - soak.wall_t0, 1), "what": kind,
                        "request_id": j.request_id, "journey": f"{j.kind}/{j.intent}",
                        "rule": rule, "meant": meant, "got": got})
    return sorted(out, key=lambda a: a["t_s"])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if not math.isnan(value) else "nan"
    return f"{value:,}"


# --------------------------------------------------------------------------- main


async def run(soak: Soak, load_s: float) -> tuple[bool, dict[str, Any]]:
    stop_tail = asyncio.Event()
    ledger = soak.ledger
    tail = asyncio.create_task(tail_topics(
        soak.bootstrap, {soak.args.outbox: ledger.on_outbox, soak.args.dlq: ledger.on_dlq,
                         soak.args.late: ledger.on_late},
        stop_tail))
    async with httpx.AsyncClient(timeout=3) as http:
        print_header()
        soak.t0, soak.wall_t0 = time.monotonic(), time.time()
        publisher = asyncio.create_task(soak.publish(load_s))
        faults = asyncio.create_task(soak.run_faults(load_s))
        await soak.sample_until(publisher, soak.args.interval, "load", http)
        await publisher
        load_end = soak.now_s()
        await faults  # every fault happens once, even when the load was very short
        soak.receiver.call(lambda r: r.clear_faults())
        console.print(f"[bold]load stopped at {load_end:.0f} s; settling "
                      f"(up to {soak.args.settle:.0f} s)")
        final = await soak.settle(http, soak.args.settle)
    stop_tail.set()
    await tail
    growth, drain = judge(soak.samples, final)
    return summarise(soak, growth, drain, load_s=load_end, final=final)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="how long to apply load (fractions allowed, e.g. 1.5)")
    parser.add_argument("--rate", type=float, default=200.0, help="records per second")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds between samples (default 10, less for runs under 4 min "
                             "so there are at least 24 samples)")
    parser.add_argument("--workers", type=int, choices=(1, 2), default=1)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--hostile", type=float, default=0.05,
                        help="share of records that are hostile (default 0.05)")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds allowed for everything to drain after the load stops")
    parser.add_argument("--no-sigkill", action="store_true", help="skip the SIGKILL fault")
    parser.add_argument("--normal-batching", action="store_true",
                        help="let the workers batch their producer writes (on Tansu a restart "
                             "then crashes in recovery: DESIGN 2)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON with the series (default bench/soak-<date>.json)")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    load_s = args.minutes * 60
    if args.interval is None:
        args.interval = min(10.0, max(2.0, load_s / 24))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or ROOT / "bench" / f"soak-{stamp}.json"
    args.topic, args.outbox, args.dlq = "ui-events", "feedback-outbox", "feedback-dlq"
    args.late = "ui-events-late"
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    workdir = Path(tempfile.mkdtemp(prefix="feedback-soak-"))
    console.rule("[bold]feedback-worker soak")
    console.print(f"{args.minutes:g} min of load at {args.rate:g} records/s "
                  f"({args.hostile:.0%} hostile), {args.workers} worker(s), a sample every "
                  f"{args.interval:g} s; logs and state in {workdir}")
    broker = EmbeddedBroker(log_path=workdir / "broker.log")
    broker.start()
    receiver = ReceiverThread()
    group = f"feedback-soak-{uuid.uuid4().hex[:8]}"
    workers = []
    for i in range(args.workers):
        state = workdir / f"state-{i}"
        state.mkdir()
        port = free_port()
        env = {
            **os.environ,
            **WORKER_SETTINGS,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "WORKER_GROUP_ID": group,
            "WORKER_WEB_HOST": "127.0.0.1",
            "WORKER_WEB_PORT": str(port),
            "STATE_DIR": str(state),
            "TOPIC_PARTITIONS": str(args.partitions),
            "HELICONE_BASE_URL": receiver.url,
            "HELICONE_API_KEY": KEY,
            "FEEDBACK_DRY_RUN": "false",
            **({} if args.normal_batching else ONE_RECORD_PER_BATCH),
        }
        workers.append(SoakWorker(i, env, state, workdir / f"worker-{i}.log", port))
    load = Load(rate=args.rate, windows=SHAPE, hostile_share=args.hostile, seed=args.seed)
    soak = Soak(args, broker.bootstrap_servers, receiver, workers, workdir, load,
                broker_pid=broker.pid)
    ok = False
    report: dict[str, Any] = {}
    try:
        for w in workers:
            w.start()
        for w in workers:
            asyncio.run(w.wait_ready())
        console.print(f"broker {broker.bootstrap_servers}, receiver {receiver.url}, workers "
                      + ", ".join(f"pid {w.process.pid if w.process else '?'} :{w.port}"
                                  for w in workers))
        ok, report = asyncio.run(run(soak, load_s))
    finally:
        for w in workers:
            w.planned = True
            w.stop()
        receiver.close()
        broker.stop()
        document = {
            "started": stamp,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "worker_settings": {**WORKER_SETTINGS,
                                **({} if args.normal_batching else ONE_RECORD_PER_BATCH)},
            "growth_limits": {k: asdict(v) for k, v in GROWTH_LIMITS.items()},
            "drain_limits": DRAIN,
            "faults": soak.faults,
            "samples": [asdict(s) for s in soak.samples],
            "workdir": str(workdir),
            **report,
        }
        out.write_text(json.dumps(document, indent=1, default=str))
        console.print(f"series written to {out}; worker logs in {workdir}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
