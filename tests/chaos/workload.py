"""Input for the chaos scenarios: simulated journeys, sorted by event time, sent at a steady rate.

Event times are *historical* (hours before now) and advance faster than the wall clock, so
windows close on stream time while the load flows, and the event time the worker computes is
exactly ``occurred_at`` (DESIGN 3: the record timestamp only clamps events from the future).
Besides the journeys of :mod:`worker.devtools.traffic` (every rule), a share of requests get
a ``score_reported`` and a share of sessions a ``session_feedback_given``, so the
score-merge and session paths are delivered too.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from worker.devtools.traffic import Journey, Windows, generate, iso

__all__ = ["SteadyLoad", "records_for", "workload"]

Record = tuple[bytes, bytes]


def workload(
    requests: int, *, start_ms: int, spread_ms: int, windows: Windows, seed: int
) -> list[Journey]:
    """``requests`` journeys of every kind, some with scores and session feedback."""
    journeys = generate(requests, start_ms=start_ms, spread_ms=spread_ms, windows=windows,
                        seed=seed, kinds={"chat": 4, "code": 2, "search": 2, "support": 1,
                                          "explicit": 1})
    rng = random.Random(seed ^ 0x5EED)
    for n, journey in enumerate(journeys):
        uid = uuid.UUID(int=rng.getrandbits(128), version=4)
        if rng.random() < 0.15:
            journey.events.append({
                "event_id": str(uid), "type": "score_reported",
                "request_id": journey.request_id, "occurred_at": iso(journey.start_ms + 150),
                "properties": {"scores": {"groundedness": rng.randrange(1, 6)}},
            })
        elif rng.random() < 0.1:
            journey.events.append({
                "event_id": str(uid), "type": "session_feedback_given",
                "session_id": f"chaos-session-{seed}-{n}",
                "occurred_at": iso(journey.start_ms + 100),
                "properties": {"rating": rng.random() < 0.5},
            })
    return journeys


def records_for(journeys: Sequence[Journey]) -> list[Record]:
    """Every event as ``(routing key, JSON)``, in event-time order (a live stream's order)."""
    events = sorted((e for j in journeys for e in j.events),
                    key=lambda e: (e["occurred_at"], e["event_id"]))
    return [(_routing_key(e).encode(), orjson.dumps(e)) for e in events]


def _routing_key(event: dict[str, Any]) -> str:
    if event["type"] == "session_feedback_given":
        return str(event["session_id"])
    return str(event["request_id"])


class SteadyLoad:
    """Sends ``records`` in order at ``rate_per_s`` from a background thread.

    Each slice of records is awaited (acknowledged by the broker) before the next is sent, so
    :attr:`sent` counts acknowledged records.  A send error ends the load and is raised by
    :meth:`join`.
    """

    def __init__(
        self, bootstrap: str, topic: str, records: Sequence[Record], *, rate_per_s: float
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.records = list(records)
        self.rate_per_s = rate_per_s
        self.sent = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="steady-load")

    def start(self) -> SteadyLoad:
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait_sent(self, n: int, timeout_s: float = 120.0) -> None:
        """Until ``n`` records are acknowledged (a signal for "mid-stream")."""
        deadline = time.monotonic() + timeout_s
        while self.sent < n and not self.done and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.error is not None:
            raise AssertionError(f"the load failed: {self.error!r}")
        assert self.sent >= n, f"only {self.sent}/{n} records sent in {timeout_s} s"

    def join(self, timeout_s: float = 300.0) -> None:
        self._thread.join(timeout_s)
        if self.error is not None:
            raise AssertionError(f"the load failed after {self.sent} records: {self.error!r}")
        assert self.sent == len(self.records), f"{self.sent}/{len(self.records)} sent"

    def _run(self) -> None:
        try:
            asyncio.run(self._send_all())
        except BaseException as exc:  # reported by join()
            self.error = exc

    async def _send_all(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            step_s = 0.1
            per_step = max(1, round(self.rate_per_s * step_s))
            started = time.monotonic()
            for index in range(0, len(self.records), per_step):
                chunk = self.records[index : index + per_step]
                futures = [await producer.send(self.topic, key=k, value=v) for k, v in chunk]
                await asyncio.gather(*futures)
                self.sent += len(chunk)
                pause = started + (index + per_step) / self.rate_per_s - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
        finally:
            await producer.stop()
