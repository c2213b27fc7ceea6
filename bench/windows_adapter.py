"""What the windows adapter costs per event on top of the pure engine, in one process.

The pipeline benchmark measures the whole worker against a broker, and on a shared machine
its throughput varies by a quarter between runs minutes apart; a change to the adapter
(buffering, held acks, flushes) is lost in that noise.  This one feeds the same validated
events, in event-time order, over 8 partitions:

    (a) baseline: one WindowEngine per partition over a dict, ``process`` per event;
    (b) the adapter: ``Windows.on_event`` per event over an in-memory TableIO whose
        changelog sends and decision sends are confirmed at once, flushes and acks included.

It prints the microseconds per event of each (the best of ``--repeat`` interleaved runs)
and (b) - (a), the adapter's own cost.  To compare two trees, run each tree's own copy:
``bench/_common.py`` puts the script's tree first on ``sys.path``.

    python bench/windows_adapter.py
    python bench/windows_adapter.py --events 60000 --repeat 5 --json out.json

This is a benchmark, not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from _common import write_json  # type: ignore[import-not-found]
from pipeline import make_timed_events  # type: ignore[import-not-found]

from worker.agents.windows import Windows
from worker.clock import FakeClock
from worker.metrics import Metrics
from worker.producing import Headers
from worker.rules import RuleConfig
from worker.validation import Accepted, ValidationLimits, inspect_record
from worker.windows import DictStore, WindowEngine

PARTITIONS = 8
GRACE_MS = 5_000
IDLE_CLOSE_MS = 30_000
MAX_SIGNALS = 200


class _Offset:
    offset = 0


def _confirmed(value: Any) -> asyncio.Future[Any]:
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    done.set_result(value)
    return done


class InstantIO:
    """A TableIO over dicts whose changelog sends the broker confirms at once."""

    def __init__(self) -> None:
        self.data: dict[int, dict[str, bytes]] = {}

    def get(self, partition: int, key: str) -> bytes | None:
        return self.data.get(partition, {}).get(key)

    def items(self, partition: int, prefix: str) -> list[tuple[str, bytes]]:
        return [(k, v) for k, v in self.data.get(partition, {}).items() if k.startswith(prefix)]

    def put_local(self, partition: int, entries: dict[str, bytes | None]) -> None:
        table = self.data.setdefault(partition, {})
        for key, value in entries.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value

    async def send_changelog(
        self, partition: int, entries: dict[str, bytes | None], owned: Callable[[], bool]
    ) -> list[Awaitable[Any]]:
        return [_confirmed(_Offset())]

    def committed(self, partition: int, offset: int) -> None:
        pass


class InstantProducer:
    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, *,
        partition: int | None = None, headers: Headers | None = None,
    ) -> asyncio.Future[None]:
        return _confirmed(None)


def accepted_events(n_events: int) -> tuple[list[tuple[int, Accepted]], int]:
    """Validated events in event-time order with their partition, and the last event time."""
    start_ms = 1_700_000_000_000
    timed = make_timed_events(n_events, max(1, n_events // 10), start_ms=start_ms,
                              spread_ms=n_events * 5, seed=7)
    limits = ValidationLimits()
    out: list[tuple[int, Accepted]] = []
    for t, key, value in timed:
        checked = inspect_record(value, record_ts_ms=t, now_ms=t, limits=limits)
        assert isinstance(checked, Accepted), checked
        out.append((zlib.crc32(key) % PARTITIONS, checked))
    return out, timed[-1][0]


def engine_alone(events: list[tuple[int, Accepted]], clock: FakeClock) -> float:
    engines = [
        WindowEngine(DictStore(), config=RuleConfig(), grace_ms=GRACE_MS,
                     idle_close_ms=IDLE_CLOSE_MS, max_signals=MAX_SIGNALS, clock=clock)
        for _ in range(PARTITIONS)
    ]
    started = time.perf_counter()
    for partition, event in events:
        engines[partition].process(event)
    return time.perf_counter() - started


async def through_adapter(events: list[tuple[int, Accepted]], clock: FakeClock) -> float:
    windows = Windows(
        io=InstantIO(),  # type: ignore[arg-type]
        config=RuleConfig(), grace_ms=GRACE_MS, idle_close_ms=IDLE_CLOSE_MS,
        max_signals=MAX_SIGNALS, clock=clock, metrics=Metrics(), producer=InstantProducer(),
        outbox_topic="outbox", late_topic="late",
    )

    async def ack() -> None:
        return None

    started = time.perf_counter()
    for partition, event in events:
        await windows.on_event(partition, event, ack)
    for partition in range(PARTITIONS):
        await windows.flush(partition)
    await windows.drain()
    return time.perf_counter() - started


def run(*, events: int = 60_000, repeat: int = 3, log: Any = print) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the figures as a dict."""
    stream, last_ms = accepted_events(events)
    n = len(stream)
    engine_runs: list[float] = []
    adapter_runs: list[float] = []
    for _ in range(repeat):  # interleaved, so a slower minute of the machine hits both
        engine_runs.append(engine_alone(stream, FakeClock(last_ms)))
        adapter_runs.append(asyncio.run(through_adapter(stream, FakeClock(last_ms))))
    engine_s, adapter_s = min(engine_runs), min(adapter_runs)
    result = {
        "events": n,
        "engine_us_per_event": round(engine_s * 1e6 / n, 2),
        "adapter_us_per_event": round(adapter_s * 1e6 / n, 2),
    }
    result["adapter_own_us_per_event"] = round(
        result["adapter_us_per_event"] - result["engine_us_per_event"], 2)
    log(f"windows-adapter: {n:,} events over {PARTITIONS} partitions, best of {repeat}")
    log(f"windows-adapter: (a) engine alone : {result['engine_us_per_event']:>7.2f} us/event")
    log(f"windows-adapter: (b) the adapter  : {result['adapter_us_per_event']:>7.2f} us/event")
    log(f"windows-adapter: the adapter's own cost (b - a): "
        f"{result['adapter_own_us_per_event']:.2f} us/event")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    write_json(args.json, run(events=args.events, repeat=args.repeat))


if __name__ == "__main__":
    main()
