"""What the commands that read the outbox or need the settings share.

``read_decisions`` reads the outbox to its end by the high watermarks fetch responses
report, not by ListOffsets, which Tansu gets wrong after multi-record batches (DESIGN 2); the
same approach as ``dlq list``.  ``load_settings_or_exit`` turns invalid configuration into the
same message and exit code 2 in every command.
"""

from __future__ import annotations

import logging.config
import sys
import time
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from worker.config import load_settings
from worker.errors import ConfigError
from worker.events import Decision
from worker.logs import logging_config

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = ["load_settings_or_exit", "read_decisions"]


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


async def read_decisions(
    settings: Settings, *, timeout_s: float = 30.0
) -> tuple[list[Decision], int] | None:
    """Every decision on the outbox up to its end, and how many records were not decisions;
    None when the topic does not exist."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from worker.kafka import client_kwargs

    topic = settings.topic_outbox
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, auto_offset_reset="earliest", **client_kwargs(settings)
    )
    await consumer.start()
    decisions: list[Decision] = []
    skipped = 0
    try:
        if topic not in await consumer.topics():
            return None
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=5_000)
            for records in batch.values():
                for record in records:
                    try:
                        decisions.append(Decision.model_validate_json(record.value or b""))
                    except ValidationError:
                        skipped += 1
            if await _caught_up(consumer, tps):
                return decisions, skipped
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
