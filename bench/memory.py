"""Memory and restart benchmark: N open windows in one worker, then a warm and a cold restart.

    1. open:  N ``ticket_opened`` events with distinct request ids (24 h windows, so none close
              during the run), keyed by request id over 8 partitions, pre-filled, consumed by one
              worker with a bounded RocksDB block cache.  Measured: events/s from the first event
              processed to the N-th, the time until ``feedback_windows_open`` reaches N, worker
              RSS (current and peak, /proc) and the RocksDB size on disk (STATE_DIR).
    2. warm:  SIGTERM that worker and start it again on the same STATE_DIR: seconds until
              ``/readyz`` answers 200 and until ``feedback_windows_open`` is back at N.
    3. cold:  the same group on a new, empty STATE_DIR: Faust restores the table from its
              changelog.  Seconds until ready and until the windows are back, and *how many*
              came back (a figure, not an assumption).

DESIGN 2: Tansu answers ListOffsets wrongly after multi-record batches.  Faust takes a
changelog's end from that answer, so a cold restore stops short, and a warm restart finds
its store past that end (Faust's ``ConsistencyError``; the worker logs it as a lost changelog
and keeps its state, ``worker.faust_compat.recovery``).  Steps 1-3 therefore run with
KAFKA_PRODUCER_BATCH_BYTES=1 (the worker writes its changelog one record per batch); that
slows the changelog writes, so step 1's events/s is a lower bound.  ``--normal-batching``
repeats 1-3 with the default batching in a second group, records what the restarts do there,
and gives the open rate as production would batch.

    python bench/memory.py --windows 100000
    python bench/memory.py --windows 1000000 --no-cold
    python bench/memory.py --windows 20000 --json out.json

This is a benchmark, not a test: it prints figures and never fails on them (it does fail when
a worker dies or something never happens).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import re
import shutil
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
from _common import (  # type: ignore[import-not-found]
    BenchTimeout,
    WorkerDied,
    WorkerProcess,
    create_topic,
    du_bytes,
    publish,
    worker_env,
    write_json,
)

from worker.devtools.broker import EmbeddedBroker
from worker.devtools.traffic import iso

MIB = 1024 * 1024


def openers(n: int, *, now_ms: int, seed: int) -> list[tuple[bytes, bytes]]:
    """``n`` ``ticket_opened`` events with distinct request ids, event times in the last minute."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        event = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "type": "ticket_opened",
            "request_id": request_id,
            "session_id": f"s-{request_id[:8]}",
            "occurred_at": iso(now_ms - 60_000 + (i * 60_000) // n),
            "properties": {"ticket_id": f"T-{i}"},
        }
        # b"%s" % copies: orjson 3.13's result keeps a ~4 KiB buffer however short it is,
        # which for a million kept values would cost the benchmark process 4 GiB.
        out.append((request_id.encode(), b"%s" % orjson.dumps(event)))
    return out


def wait_windows(
    worker: WorkerProcess, target: int, *, timeout_s: float, settle_s: float = 60
) -> tuple[float | None, int]:
    """Poll ``feedback_windows_open`` until it reaches ``target``, or has not changed for
    ``settle_s`` (a restore that came back short), or ``timeout_s``.  Returns (perf_counter
    time it reached ``target`` or None, the last count)."""
    deadline = time.perf_counter() + timeout_s
    last, changed = -1, time.perf_counter()
    while time.perf_counter() < deadline:
        count = worker.try_metric("feedback_windows_open")
        now = time.perf_counter()
        if count is not None:
            if count >= target:
                return now, int(count)
            if int(count) != last:
                last, changed = int(count), now
            elif now - changed > settle_s and last > 0:
                return None, last
        time.sleep(0.1)
    return None, max(last, 0)


def rss(worker: WorkerProcess) -> dict[str, float]:
    """The worker's RSS now and its peak so far (MiB)."""
    now, peak = worker.rss_mib()
    return {"rss_mib": round(now, 1), "peak_rss_mib": round(peak, 1)}


def open_windows(
    env: dict[str, str], log: Path, n: int, *, timeout_s: float
) -> tuple[WorkerProcess, dict[str, Any]]:
    """Start a worker on the pre-filled topic and wait until it holds ``n`` open windows."""
    worker = WorkerProcess(env, log)
    started = worker.started
    try:
        t_ready = worker.wait_ready(timeout_s=180)
        t_first = worker.wait_metric("feedback_events_total", 1, timeout_s=timeout_s)
        t_all = worker.wait_metric("feedback_events_total", n, timeout_s=timeout_s)
        t_open, count = wait_windows(worker, n, timeout_s=timeout_s)
        cpu = worker.cpu_s()
    except BaseException:
        worker.stop()
        raise
    seconds = t_all - t_first
    return worker, {
        "ready_s": round(t_ready - started, 2),
        "events_per_s": round(n / seconds, 1) if seconds > 0 else math.nan,
        "open_s": round(seconds, 2),
        "all_open_after_s": None if t_open is None else round(t_open - t_first, 2),
        "windows_open": count,
        "worker_cpu_s": round(cpu, 1),
    }


def restart(
    env: dict[str, str], log: Path, n: int, *, timeout_s: float
) -> tuple[WorkerProcess, dict[str, Any]]:
    """Start a worker and time readiness and the return of ``n`` open windows."""
    worker = WorkerProcess(env, log)
    started = worker.started
    try:
        t_ready = worker.wait_ready(timeout_s=timeout_s)
        t_back, count = wait_windows(worker, n, timeout_s=timeout_s)
    except BaseException:
        worker.stop()
        raise
    return worker, {
        "ready_s": round(t_ready - started, 2),
        "windows_back_s": None if t_back is None else round(t_back - started, 2),
        "windows_back": count,
        "windows_expected": n,
        **rss(worker),
    }


def _open_phase(
    env: dict[str, str], log_path: Path, n: int, state: Path, timeout_s: float
) -> dict[str, Any]:
    worker, opened = open_windows(env, log_path, n, timeout_s=timeout_s)
    try:
        time.sleep(3)  # a few ticks: buffered state flushed to RocksDB
        opened.update(rss(worker))
        opened["rocksdb_mib"] = round(du_bytes(state) / MIB, 1)
    finally:
        t_stop = time.perf_counter()
        opened["exit_code"] = worker.stop()
        opened["stop_s"] = round(time.perf_counter() - t_stop, 2)
    opened["rocksdb_mib_after_stop"] = round(du_bytes(state) / MIB, 1)
    return opened


def _normal_batching(
    bootstrap: str, topic: str, partitions: int, extra: dict[str, str], work: Path,
    n: int, timeout_s: float, log: Any,
) -> dict[str, Any]:
    """Open ``n`` windows with the default producer batching, then restart warm and cold.

    On Tansu both restarts are expected to go wrong (DESIGN 2); what happens is recorded
    rather than raised, since it is the broker's answer being measured."""
    state = work / "state-n"
    env = worker_env(bootstrap, topic=topic, partitions=partitions, state_dir=state,
                     extra=extra)
    out: dict[str, Any] = {"open": _open_phase(env, work / "worker-n-open.log", n, state,
                                               timeout_s)}
    log(f"memory: normal batching: {n:,} windows open at "
        f"{out['open']['events_per_s']:,.0f} events/s, RSS {out['open']['rss_mib']:.0f} MiB")
    for name, state_dir in (("warm", state), ("cold", work / "state-n-cold")):
        try:
            worker, phase = restart({**env, "STATE_DIR": str(state_dir)},
                                    work / f"worker-n-{name}.log", n, timeout_s=timeout_s)
            phase["exit_code"] = worker.stop()
            phase["missing"] = n - phase["windows_back"]
        except WorkerDied as exc:
            phase = {"crashed": _first_error(str(exc))}
        out[name] = phase
        log(f"memory: normal batching, {name} restart: {phase}")
    return out


def _first_error(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    for line in text.splitlines():
        if "Error" in line and "Traceback" not in line:
            return line.strip()[:300]
    return text.splitlines()[0][:300] if text else "?"


def run(
    *,
    windows: int = 100_000,
    partitions: int = 8,
    block_cache_bytes: int = 64 * MIB,
    cold: bool = True,
    normal_batching: bool = False,
    open_only: bool = False,
    bootstrap: str | None = None,
    timeout_s: float = 1_800,
    cold_timeout_s: float = 900,
    log: Any = print,
) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the figures as a dict."""
    result: dict[str, Any] = {
        "windows": windows,
        "partitions": partitions,
        "block_cache_bytes": block_cache_bytes,
        "rule": "ticket_resolution (24 h windows)",
    }
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-mem-")))
        if bootstrap is None:
            broker = EmbeddedBroker(log_path=work / "tansu.log")
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap_servers
        topic = f"bench-mem-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        records = openers(windows, now_ms=int(time.time() * 1000), seed=11)
        asyncio.run(create_topic(bootstrap, topic, partitions))
        result["publish_per_s"] = round(asyncio.run(publish(bootstrap, topic, records)), 1)
        del records
        log(f"memory: published {windows:,} openers ({result['publish_per_s']:,.0f}/s) "
            f"in {time.perf_counter() - t0:.1f} s")
        extra = {"ROCKSDB_BLOCK_CACHE_BYTES": str(block_cache_bytes)}

        # 1-3: the changelog writer sends one record per batch (DESIGN 2), so that Faust's
        # recovery (warm: "persisted offset <= highwater" check; cold: restore up to the end
        # offset) sees Tansu's true end offsets.
        state = work / "state-a"
        env = worker_env(bootstrap, topic=topic, partitions=partitions, state_dir=state,
                         extra={**extra, "KAFKA_PRODUCER_BATCH_BYTES": "1"}
                         if not open_only else extra)
        opened = _open_phase(env, work / "worker-open.log", windows, state, timeout_s)
        result["open"] = opened
        batching = "normal batching" if open_only else "changelog 1 record/batch"
        log(f"memory: {windows:,} windows open at {opened['events_per_s']:,.0f} events/s "
            f"({batching}); RSS {opened['rss_mib']:.0f} MiB "
            f"(peak {opened['peak_rss_mib']:.0f}), RocksDB {opened['rocksdb_mib']:.0f} MiB")

        if open_only:  # memory only, with production batching (no restart to protect)
            result["open_only_normal_batching"] = True
            result["total_s"] = round(time.perf_counter() - t0, 1)
            return result

        worker, warm = restart(env, work / "worker-warm.log", windows, timeout_s=timeout_s)
        warm["exit_code"] = worker.stop()
        result["warm"] = warm
        log(f"memory: warm restart ready in {warm['ready_s']} s, windows back "
            f"({warm['windows_back']:,}) after {warm['windows_back_s']} s")

        if cold:
            cold_dir = work / "state-a-cold"
            cold_env = {**env, "STATE_DIR": str(cold_dir)}
            try:
                worker, restored = restart(cold_env, work / "worker-cold.log", windows,
                                           timeout_s=cold_timeout_s)
            except (WorkerDied, BenchTimeout) as exc:
                # keep the figures measured so far; the run still counts as failed
                result["cold"] = {"crashed": _first_error(str(exc))}
                result["error"] = f"cold recovery: {type(exc).__name__}: {_first_error(str(exc))}"
                log(f"memory: cold recovery FAILED: {result['error']}")
                return result
            try:
                restored["rocksdb_mib"] = round(du_bytes(cold_dir) / MIB, 1)
            finally:
                restored["exit_code"] = worker.stop()
            restored["missing"] = windows - restored["windows_back"]
            result["cold"] = restored
            shutil.rmtree(cold_dir, ignore_errors=True)
            log(f"memory: cold recovery ready in {restored['ready_s']} s, "
                f"{restored['windows_back']:,} of {windows:,} windows back "
                f"after {restored['windows_back_s']} s")
        shutil.rmtree(state, ignore_errors=True)

        # 4-6 (diagnostic): the same with normal producer batching, as in production.
        if normal_batching:
            result["normal_batching"] = _normal_batching(
                bootstrap, topic, partitions, extra, work, windows, timeout_s, log
            )
        result["total_s"] = round(time.perf_counter() - t0, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--block-cache-mib", type=int, default=64)
    parser.add_argument("--no-cold", dest="cold", action="store_false",
                        help="skip the cold recovery (its changelog writer is slow on Tansu)")
    parser.add_argument("--normal-batching", action="store_true",
                        help="also open the windows with normal producer batching and restart "
                        "that worker warm and cold (shows what Tansu's ListOffsets answer does)")
    parser.add_argument("--open-only", action="store_true",
                        help="only open the windows and measure memory, with normal batching "
                        "(no restarts; quicker on Tansu)")
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--timeout", type=float, default=1_800)
    parser.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    args = parser.parse_args()
    result = run(windows=args.windows, partitions=args.partitions,
                 block_cache_bytes=args.block_cache_mib * MIB, cold=args.cold,
                 normal_batching=args.normal_batching, open_only=args.open_only,
                 bootstrap=args.bootstrap,
                 timeout_s=args.timeout)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    write_json(args.json, result)


if __name__ == "__main__":
    main()
