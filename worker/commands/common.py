"""What the commands that read a topic back or need the settings share.

:func:`read_to_end` is the one "read a topic from its beginning to its end" loop: the end is
each partition's high watermark as fetch responses report it, not ListOffsets, which Tansu gets
wrong after multi-record batches (DESIGN 2).  A partition is read once its consumer position
reached that high watermark; a partition whose high watermark is still unknown (no fetch
answered yet) is never read.  :func:`read_decisions` is the outbox read as decisions.
:func:`load_settings_or_exit` turns invalid configuration into the same message and exit code 2
in every command.
"""

from __future__ import annotations

import logging.config
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import click
from pydantic import ValidationError

from worker.config import load_settings
from worker.errors import ConfigError
from worker.events import Decision
from worker.logs import logging_config

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = ["TopicRead", "load_settings_or_exit", "read_decisions", "read_to_end"]

T = TypeVar("T")


def load_settings_or_exit() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        click.echo("feedback-worker: invalid configuration", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    return settings


@dataclass(slots=True)
class TopicRead(Generic[T]):
    """What :func:`read_to_end` read: the records ``parse`` kept, in partition-then-offset
    order within each fetch, and how many it returned None for."""

    items: list[T] = field(default_factory=list)
    skipped: int = 0


async def read_to_end(
    settings: Settings,
    topic: str,
    parse: Callable[[Any], T | None],
    *,
    timeout_s: float = 30.0,
    poll_ms: int = 200,
    partial_on_timeout: bool = False,
) -> TopicRead[T] | None:
    """Every record of ``topic`` from its beginning to each partition's fetch high watermark,
    each passed to ``parse`` (an aiokafka ``ConsumerRecord``; None means "skip it").

    None when the topic does not exist.  When the end is not reached within ``timeout_s``:
    a :class:`click.ClickException` naming the topic, or, with ``partial_on_timeout``, what
    was read so far (for reports that would rather show a partial count than nothing).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from worker.kafka import client_kwargs

    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, auto_offset_reset="earliest", **client_kwargs(settings)
    )
    await consumer.start()
    read: TopicRead[T] = TopicRead()
    try:
        if topic not in await consumer.topics():
            return None
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=poll_ms, max_records=5_000)
            for records in batch.values():
                for record in records:
                    item = parse(record)
                    if item is None:
                        read.skipped += 1
                    else:
                        read.items.append(item)
            if await _caught_up(consumer, tps):
                return read
        if partial_on_timeout:
            return read
        raise click.ClickException(
            f"could not read {topic} to its end within {timeout_s:.0f} s "
            "(is the broker reachable? try --timeout)"
        )
    finally:
        await consumer.stop()


async def _caught_up(consumer: Any, tps: list[Any]) -> bool:
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


def _decision(record: Any) -> Decision | None:
    try:
        return Decision.model_validate_json(record.value or b"")
    except ValidationError:
        return None


async def read_decisions(
    settings: Settings, *, timeout_s: float = 30.0
) -> tuple[list[Decision], int] | None:
    """Every decision on the outbox up to its end, and how many records were not decisions;
    None when the topic does not exist."""
    read = await read_to_end(settings, settings.topic_outbox, _decision, timeout_s=timeout_s)
    return None if read is None else (read.items, read.skipped)
