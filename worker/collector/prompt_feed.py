"""The collector's reader of ``feedback-prompts``: every partition, no consumer group.

Each collector replica must be able to answer for any user (a load balancer sends a browser
to any of them), so each one reads *all* partitions itself, with no group and no committed
offsets (aiokafka assigns every partition of a topic subscribed without a group): on start it
reads the topic from the beginning, and the
:class:`~worker.collector.prompt_box.PromptBox` drops what expired (prompts live minutes,
``PROMPT_TTL_S``, and the topic is small: at most one prompt per user per cooldown).  A topic
that does not exist yet (the worker creates it) is waited for.  Failures are retried with
backoff; the event path never waits on this reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer

from worker.kafka import client_kwargs

if TYPE_CHECKING:
    from worker.collector.prompt_box import PromptBox
    from worker.config import Settings

__all__ = ["TOPIC_POLL_S", "PromptFeed"]

log = logging.getLogger(__name__)

#: How soon to look again for a prompts topic that does not exist yet.
TOPIC_POLL_S = 2.0


@dataclass
class PromptFeed:
    """Fills ``box`` from the prompts topic until stopped."""

    settings: Settings
    box: PromptBox
    clock_ms: Callable[[], int]
    #: Counts a record that was not kept (does not parse, no audience, expired).
    on_skipped: Callable[[], None] = lambda: None
    retry_cap_s: float = 10.0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    #: Set once the topic's partitions are assigned (for tests and diagnostics).
    assigned: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="collector-prompt-feed"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay_s = 0.5
        while True:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker went away: read again from the start
                log.warning("prompt feed: %s; retrying in %.1f s", type(exc).__name__, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(self.retry_cap_s, delay_s * 2)

    async def _read(self) -> None:
        """Read the topic until cancelled or a failure.

        It waits until the topic is listed (a full metadata request, which creates nothing)
        and only then subscribes: a subscription to a missing topic would let a broker that
        auto-creates topics create it with its own partition count.  Without a group,
        aiokafka assigns every partition of a subscribed topic, new ones included, and with
        nothing committed each starts at the beginning."""
        topic = self.settings.topic_prompts
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **client_kwargs(self.settings),
        )
        await consumer.start()
        try:
            while topic not in await consumer.topics():
                await asyncio.sleep(TOPIC_POLL_S)
            consumer.subscribe([topic])
            while True:
                batch = await consumer.getmany(timeout_ms=1_000)
                if consumer.assignment():
                    self.assigned.set()
                now_ms = self.clock_ms()
                for records in batch.values():
                    for record in records:
                        if not self.box.add(record.value, now_ms=now_ms):
                            self.on_skipped()
        finally:
            self.assigned.clear()
            await consumer.stop()
