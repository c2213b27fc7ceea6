"""Helpers shared by the benchmarks: the worker as a child process, topics, publishing, figures.

Not a benchmark itself.  Everything here fails loudly: a worker that exits while a benchmark
waits on it raises :class:`WorkerDied` with the tail of its log, so a broken run can never be
mistaken for a slow one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worker.devtools.broker import free_port  # noqa: E402


class WorkerDied(RuntimeError):
    """A worker process exited while the benchmark still needed it."""


class BenchTimeout(RuntimeError):
    """Something the benchmark waits for did not happen in time (a broken run, not a figure)."""


def pct(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (nearest rank), NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def du_bytes(path: Path) -> int:
    """Bytes on disk under ``path`` (allocated blocks, like ``du``)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / ticks, total / ticks


def process_rss_mib(pid: int) -> tuple[float, float]:
    """(current VmRSS, peak VmHWM) of process ``pid``, MiB, from /proc."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(rest.split()[0]) / 1024
    return fields.get("VmRSS", math.nan), fields.get("VmHWM", math.nan)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far."""
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def write_json(path: str | Path | None, result: Mapping[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def publish(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], chunk: int = 100_000
) -> float:
    """Send ``records`` (key, value) as fast as the producer goes; returns records/s.

    Acknowledgements are awaited per ``chunk`` records, so a million records do not keep a
    million futures (and their batches) alive at once."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, max_batch_size=262_144)
    await producer.start()
    t0 = time.perf_counter()
    try:
        for start in range(0, len(records), chunk):
            futures = [
                await producer.send(topic, key=k, value=v)
                for k, v in records[start:start + chunk]
            ]
            await producer.flush()
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(records) / (time.perf_counter() - t0)


async def fetch_latency(
    bootstrap: str, *, count: int = 100, rate: float = 20.0, fetch_max_wait_ms: int = 1500
) -> list[float]:
    """Produce -> consume latency (ms) of ``count`` records paced at ``rate``/s through a plain
    aiokafka consumer with the fetch wait Faust uses: what the broker alone adds to any
    consumer's reaction time (on Tansu a fetch is not answered as soon as a record arrives)."""
    from aiokafka import AIOKafkaConsumer

    topic = f"latency-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    await producer.send_and_wait(topic, b"0", key=b"warm")  # creates the topic
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"latency-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="latest", fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await consumer.start()
    latencies: list[float] = []
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.1)
        await consumer.seek_to_end()

        async def consume() -> None:
            async for message in consumer:
                if message.key == b"probe":
                    latencies.append(time.time() * 1000 - float(message.value or b"0"))
                    if len(latencies) >= count:
                        return

        task = asyncio.create_task(consume())
        await asyncio.sleep(1)
        for _ in range(count):
            await producer.send_and_wait(topic, str(time.time() * 1000).encode(), key=b"probe")
            await asyncio.sleep(1 / rate)
        await asyncio.wait_for(task, 60)
    finally:
        await consumer.stop()
        await producer.stop()
    return latencies


def worker_env(
    bootstrap: str,
    *,
    topic: str,
    partitions: int,
    state_dir: Path,
    group: str | None = None,
    port: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a dry-run worker on its own topics (one suffix per group)."""
    group = group or f"bench-{uuid.uuid4().hex[:8]}"
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC_UI_EVENTS": topic,
        "TOPIC_OUTBOX": f"{group}-outbox",
        "TOPIC_INVALID": f"{group}-invalid",
        "TOPIC_LATE": f"{group}-late",
        "TOPIC_DLQ": f"{group}-dlq",
        "WORKER_GROUP_ID": group,
        "TOPIC_PARTITIONS": str(partitions),
        "WORKER_WEB_PORT": str(port or free_port()),
        "WORKER_WEB_HOST": "127.0.0.1",
        "STATE_DIR": str(state_dir),
        "FEEDBACK_DRY_RUN": "true",
        "KAFKA_REBALANCE_TIMEOUT_S": "6",
        "KAFKA_SESSION_TIMEOUT_S": "10",
        "LOG_LEVEL": "WARNING",
        **(extra or {}),
    }


class WorkerProcess:
    """``feedback-worker run`` as a child process, watched through /metrics and /readyz.

    Its output goes to ``log_path``; every wait checks that the process is still alive.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.port = int(env["WORKER_WEB_PORT"])
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "run"],
            env=self.env, cwd=str(ROOT), stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    # ---- liveness

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise WorkerDied(
                f"worker (port {self.port}) exited with code {code}; log {self.log_path}:\n"
                + self.log_tail()
            )

    # ---- observation

    def get(self, path: str, timeout: float = 5) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=timeout)

    def metric(self, name: str) -> float:
        """Sum of every sample of ``name`` (all label sets)."""
        text = self.get("/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#") and line[len(name)] in "{ "
        )

    def metric_max(self, name: str) -> float:
        """Largest sample of ``name`` over its label sets (0 when there is none)."""
        text = self.get("/metrics").text
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#") and line[len(name)] in "{ "
        ]
        return max(values, default=0.0)

    def try_metric(self, name: str) -> float | None:
        self.check_alive()
        try:
            return self.metric(name)
        except httpx.HTTPError:
            return None

    def is_ready(self) -> bool:
        self.check_alive()
        try:
            return self.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float = 300) -> float:
        """Poll /readyz every 100 ms; the perf_counter time it first answered 200."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.is_ready():
                return time.perf_counter()
            time.sleep(0.1)
        raise BenchTimeout(f"worker (port {self.port}) not ready after {timeout_s:.0f} s")

    def wait_metric(
        self, name: str, at_least: float, timeout_s: float = 900, poll_s: float = 0.1
    ) -> float:
        """Poll ``name``; the perf_counter time it first reached ``at_least``."""
        deadline = time.perf_counter() + timeout_s
        last: float | None = None
        while time.perf_counter() < deadline:
            last = self.try_metric(name)
            if last is not None and last >= at_least:
                return time.perf_counter()
            time.sleep(poll_s)
        raise BenchTimeout(f"{name} reached {last} of {at_least} in {timeout_s:.0f} s")

    def rss_mib(self) -> tuple[float, float]:
        """(current VmRSS, peak VmHWM) of the worker process, MiB, from /proc."""
        self.check_alive()
        return process_rss_mib(self.process.pid)

    def cpu_s(self) -> float:
        """User + system CPU seconds the worker has used so far."""
        self.check_alive()
        return process_cpu_s(self.process.pid)

    # ---- end

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, wait, SIGKILL if it hangs; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)
