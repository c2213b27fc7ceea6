"""Scaling benchmark: events/s of 1, 2 and 4 worker processes in one consumer group.

For each process count k, in the same run and on the same broker:

    1. a new topic with 8 partitions and a new consumer group;
    2. k workers (``feedback-worker run``, each with its own STATE_DIR and WORKER_WEB_PORT)
       start on the still empty topic; the run waits until all k answer /readyz and are still
       ready 3 s later, so the group has settled and every partition has an owner;
    3. the same N mixed events as bench/pipeline.py (keyed by request id) are published at
       full speed, so the topic fills much faster than the group drains it;
    4. the processed-event counters of all k workers are summed (their /metrics).

Reported per k: events/s once the topic is full (from the end of publishing to the last
event: no producer competing for CPU, as with a pre-filled topic), events/s over the whole
drain (first to last event), how the events split over the workers, and their CPU seconds.
Workers are started on the empty topic rather than on a pre-filled one because a group that
forms while records are waiting rebalances under load: the first worker takes all partitions,
then hands some over and its unacknowledged records are processed again, which would count
events twice and measure rebalancing rather than throughput.

This machine has 2 cores: more than 2 busy processes cannot run at once, so expect k=2 to help
at most about 2x (less, since the broker and the benchmark share the cores) and k=4 not to help.

    python bench/scaling.py
    python bench/scaling.py --events 50000 --workers 1 2
    python bench/scaling.py --json out.json

This is a benchmark, not a test: it prints figures and never fails on them (it does fail when
a worker dies or something never happens).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _common import (  # type: ignore[import-not-found]
    BenchTimeout,
    WorkerProcess,
    create_topic,
    machine_cpu,
    process_cpu_s,
    publish,
    worker_env,
    write_json,
)
from pipeline import WINDOW_ENV, make_events  # type: ignore[import-not-found]

from worker.devtools.broker import EmbeddedBroker


def total_events(workers: list[WorkerProcess]) -> float | None:
    counts = [w.try_metric("feedback_events_total") for w in workers]
    return None if any(c is None for c in counts) else sum(c or 0.0 for c in counts)


def wait_total(workers: list[WorkerProcess], at_least: float, timeout_s: float) -> float:
    deadline = time.perf_counter() + timeout_s
    last = None
    while time.perf_counter() < deadline:
        last = total_events(workers)
        if last is not None and last >= at_least:
            return time.perf_counter()
        time.sleep(0.1)
    raise BenchTimeout(f"events processed reached {last} of {at_least} in {timeout_s:.0f} s")


def wait_group(workers: list[WorkerProcess], timeout_s: float = 300) -> float:
    """All workers ready, and still all ready 3 s later; returns the seconds it took."""
    t0 = time.perf_counter()
    deadline = t0 + timeout_s
    while time.perf_counter() < deadline:
        if all(w.is_ready() for w in workers):
            time.sleep(3)
            if all(w.is_ready() for w in workers):
                return time.perf_counter() - t0
        time.sleep(0.2)
    raise BenchTimeout(f"the group of {len(workers)} workers did not settle in {timeout_s:.0f} s")


def run_one(
    bootstrap: str, records: list[tuple[bytes, bytes]], k: int, partitions: int, work: Path,
    timeout_s: float, broker_pid: int | None = None,
) -> dict[str, Any]:
    topic = f"bench-scale-{uuid.uuid4().hex[:8]}"
    group = f"bench-scale-{k}-{uuid.uuid4().hex[:6]}"
    asyncio.run(create_topic(bootstrap, topic, partitions))
    workers: list[WorkerProcess] = []
    try:
        for i in range(k):
            env = worker_env(bootstrap, topic=topic, partitions=partitions,
                             state_dir=work / f"state-{k}-{i}", group=group, extra=WINDOW_ENV)
            workers.append(WorkerProcess(env, work / f"worker-{k}-{i}.log"))
        settle_s = wait_group(workers)
        cpu0 = [w.cpu_s() for w in workers]
        broker0 = process_cpu_s(broker_pid) if broker_pid else None
        bench0 = process_cpu_s(os.getpid())
        machine0 = machine_cpu()
        t_pub0 = time.perf_counter()
        publish_rate = asyncio.run(publish(bootstrap, topic, records))
        t_pub1 = time.perf_counter()
        done_at_pub = total_events(workers) or 0.0
        total = len(records)
        t_end = wait_total(workers, total, timeout_s)
        # the first event was processed while publishing; find it from the counters' start
        per_worker = [w.metric("feedback_events_total") for w in workers]
        cpu = [round(w.cpu_s() - c0, 1) for w, c0 in zip(workers, cpu0, strict=True)]
        machine1 = machine_cpu()
        broker_cpu = process_cpu_s(broker_pid) - broker0 if broker_pid and broker0 else None
        bench_cpu = process_cpu_s(os.getpid()) - bench0
        rss = [round(w.rss_mib()[1]) for w in workers]
        full_s = t_end - t_pub1
        drain_s = t_end - t_pub0
        return {
            "workers": k,
            "events": total,
            "group_settle_s": round(settle_s, 1),
            "publish_per_s": round(publish_rate, 1),
            "publish_s": round(t_pub1 - t_pub0, 2),
            "processed_while_publishing": int(done_at_pub),
            "events_per_s": round((total - done_at_pub) / full_s, 1) if full_s > 0 else None,
            "events_per_s_whole_drain": round(total / drain_s, 1),
            "drain_s": round(drain_s, 2),
            "cores_busy": round(sum(cpu) / drain_s, 2),
            # where the machine's CPU went during the drain (cores, averaged over it)
            "machine_cores_busy": round((machine1[0] - machine0[0]) / drain_s, 2),
            "broker_cores_busy": None if broker_cpu is None else round(broker_cpu / drain_s, 2),
            "bench_cores_busy": round(bench_cpu / drain_s, 2),
            "events_by_worker": [int(n) for n in per_worker],
            "cpu_s_by_worker": cpu,
            "peak_rss_mib_by_worker": rss,
        }
    finally:
        for w in workers:
            w.stop()


def run(
    *,
    events: int = 200_000,
    requests: int = 20_000,
    partitions: int = 8,
    worker_counts: tuple[int, ...] = (1, 2, 4),
    bootstrap: str | None = None,
    timeout_s: float = 1_200,
    log: Any = print,
) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the figures as a dict."""
    result: dict[str, Any] = {
        "events": events, "partitions": partitions, "cpus": os.cpu_count(), "runs": []
    }
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-")))
        broker_pid = None
        if bootstrap is None:
            broker = EmbeddedBroker(log_path=work / "tansu.log")
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap_servers
            process = getattr(broker, "_process", None)  # for its CPU time only
            broker_pid = process.pid if process is not None else None
        now_ms = int(time.time() * 1000)
        records = make_events(events, requests, start_ms=now_ms - 3 * 3_600_000,
                              spread_ms=2 * 3_600_000, seed=7)
        result["events"] = len(records)
        for k in worker_counts:
            one = run_one(bootstrap, records, k, partitions, work, timeout_s, broker_pid)
            result["runs"].append(one)
            log(f"scaling: {k} worker(s): {one['events_per_s']:,.0f} events/s on a full topic "
                f"({one['events_per_s_whole_drain']:,.0f}/s over the whole drain); events by "
                f"worker {one['events_by_worker']}, CPU s {one['cpu_s_by_worker']}; cores busy: "
                f"workers {one['cores_busy']}, broker {one['broker_cores_busy']}, benchmark "
                f"{one['bench_cores_busy']}, whole machine {one['machine_cores_busy']}")
    base = result["runs"][0]["events_per_s"] if result["runs"] else None
    for one in result["runs"]:
        one["speedup"] = round(one["events_per_s"] / base, 2) if base else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    args = parser.parse_args()
    result = run(events=args.events, requests=args.requests, partitions=args.partitions,
                 worker_counts=tuple(args.workers), bootstrap=args.bootstrap)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
