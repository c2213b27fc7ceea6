"""The demo's simulated traffic, published live: to Kafka, and through the collector over HTTP.

:func:`publish` sends every event of the simulated journeys when its event time comes, so the
worker sees a live stream.  Every :data:`COLLECTOR_EVERY`-th journey goes through the HTTP
collector, as a browser SDK would send it (batches with a ``sent_at``), and the rest and the
hostile records go straight to Kafka; whole journeys take one path, so each request's events
stay in order.  :class:`Progress` counts what was sent, for the demo's live view.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click
import httpx
import orjson

from worker.devtools.traffic import Journey, hostile_record

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = [
    "COLLECTOR_EVERY",
    "COLLECTOR_FLUSH_S",
    "DEMO_WRITE_KEY",
    "HOSTILE_EVERY",
    "Progress",
    "collector_share",
    "ordinal",
    "publish",
]

#: The collector's write key in the demo (write keys are publishable: they only allow writing).
DEMO_WRITE_KEY = "wk-demo-local"
#: Every this many journeys (in generation order) goes through the collector over HTTP.
COLLECTOR_EVERY = 3
#: Least time between two POSTs to the collector: events due meanwhile go in one batch, as
#: an SDK buffers them, and the demo stays under the default COLLECTOR_RATE_PER_S.
COLLECTOR_FLUSH_S = 0.1
#: One malformed record (not JSON, wrong shape, bad ids...) per this many events.
HOSTILE_EVERY = 20


@dataclass
class Progress:
    published: int = 0
    hostile: int = 0
    journeys: int = 0
    #: Events the collector accepted (202), the batches they went in, and invalid ones.
    via_collector: int = 0
    collector_batches: int = 0
    collector_invalid: int = 0
    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)


def ordinal() -> str:
    return {2: "second", 3: "third", 4: "fourth"}.get(COLLECTOR_EVERY, f"{COLLECTOR_EVERY}th")


def collector_share(progress: Progress, url: str) -> str:
    share = progress.via_collector / progress.published if progress.published else 0.0
    return (
        f"Through the collector ({url}/v1/events): {progress.via_collector} of "
        f"{progress.published} events ({share:.0%}) in {progress.collector_batches} batches, "
        f"each answered 202 ({progress.collector_invalid} invalid); the other "
        f"{progress.published - progress.via_collector} events and {progress.hostile} "
        "malformed records went straight to Kafka."
    )


class _CollectorSender:
    """Posts events to the collector as a browser SDK does: the events due since the last
    request go in one batch with a ``sent_at``, one request at a time (so a request's events
    keep their order), at most one every :data:`COLLECTOR_FLUSH_S`.  A ``429`` or ``503`` is
    retried after its ``Retry-After``, the whole batch again (``event_id`` dedupe makes that
    safe); any other refusal is a bug in the demo and ends it."""

    def __init__(self, http: httpx.AsyncClient, url: str, progress: Progress,
                 max_events: int) -> None:
        self._http = http
        self._url = f"{url}/v1/events"
        self._progress = progress
        self._max_events = max_events
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="demo-collector-sender")

    def put(self, event: dict[str, Any]) -> None:
        self._pending.append(event)
        self._wake.set()

    def cancel(self) -> None:
        """Stop at once (the demo is failing anyway)."""
        self._task.cancel()

    async def close(self) -> None:
        """Send what is pending and wait for every answer (re-raises a failure)."""
        self._closing = True
        self._wake.set()
        await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._max_events]
                del self._pending[: len(batch)]
                await self._post(batch)
            if self._closing:
                return
            await asyncio.sleep(COLLECTOR_FLUSH_S)

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        from worker.devtools.traffic import iso

        # sent_at is never before an event's occurred_at, which the worker would refuse
        now_ms = max(int(time.time() * 1000), *(_epoch_ms(e["occurred_at"]) for e in batch))
        body = orjson.dumps({"sent_at": iso(now_ms), "events": batch})
        headers = {"Authorization": f"Bearer {DEMO_WRITE_KEY}",
                   "Content-Type": "application/json"}
        for _ in range(10):
            try:
                response = await self._http.post(self._url, content=body, headers=headers)
            except httpx.HTTPError:
                await asyncio.sleep(1)
                continue
            if response.status_code == 202:
                answer = response.json()
                self._progress.via_collector += int(answer["accepted"])
                self._progress.collector_invalid += int(answer["invalid"])
                self._progress.collector_batches += 1
                return
            if response.status_code in (429, 503):
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            raise click.ClickException(
                f"the collector refused a batch: {response.status_code} {response.text}"
            )
        raise click.ClickException("the collector did not accept a batch after 10 attempts")


async def publish(
    settings: Settings,
    journeys: list[Journey],
    progress: Progress,
    rng: random.Random,
    *,
    collector_url: str | None = None,
) -> None:
    """Send every event when its event time comes (a live stream), a hostile record now and
    then.  Every :data:`COLLECTOR_EVERY`-th journey's events go to the collector over HTTP
    (whole journeys, so each request's events take one path, in order); the others and the
    hostile records go to Kafka, keyed by request id like `feedback-worker publish`."""
    from aiokafka import AIOKafkaProducer

    from worker.kafka import client_kwargs

    via_http = (
        {j.request_id for i, j in enumerate(journeys) if i % COLLECTOR_EVERY == 0}
        if collector_url
        else set()
    )
    events = sorted(
        ((e, j.request_id) for j in journeys for e in j.events), key=lambda p: p[0]["occurred_at"]
    )
    epoch_ms = {id(e): _epoch_ms(e["occurred_at"]) for e, _ in events}
    producer = AIOKafkaProducer(linger_ms=5, **client_kwargs(settings))
    await producer.start()
    progress.phase = "publishing traffic"
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            sender = (
                _CollectorSender(http, collector_url, progress, settings.collector_max_events)
                if collector_url
                else None
            )
            try:
                for event, request_id in events:
                    delay = epoch_ms[id(event)] / 1000 - time.time()
                    if delay > 0:
                        await producer.flush()
                        await asyncio.sleep(delay)
                    if sender is not None and request_id in via_http:
                        sender.put(event)
                    else:
                        await producer.send(
                            settings.topic_ui_events,
                            key=request_id.lower().encode(),
                            value=orjson.dumps(event),
                        )
                    progress.published += 1
                    if progress.published % HOSTILE_EVERY == 1:  # the first, then 1 in 20
                        await producer.send(settings.topic_ui_events, value=hostile_record(rng))
                        progress.hostile += 1
                await producer.flush()
            except BaseException:
                if sender is not None:
                    sender.cancel()
                raise
            if sender is not None:
                await sender.close()
    finally:
        await producer.stop()


def _epoch_ms(occurred_at: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(occurred_at).timestamp() * 1000)
