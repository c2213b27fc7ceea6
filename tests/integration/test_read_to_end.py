"""``read_to_end`` on the real broker (Tansu): every record of every partition, once, up to the
fetch high watermarks, also after multi-record batches (where Tansu's ListOffsets is wrong)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import click
import orjson
import pytest

from tests.fixtures.kafka import produce
from worker.commands.common import read_to_end
from worker.config import Settings
from worker.kafka import ensure_topics

pytestmark = pytest.mark.integration


def _number(record: Any) -> int | None:
    """The record's ``n``; None (skipped) for anything else."""
    try:
        document = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return None
    return document.get("n") if isinstance(document, dict) else None


async def _topic_with_records(bootstrap: str, partitions: int, count: int) -> Settings:
    """Settings whose outbox topic is new, has ``partitions`` partitions and holds ``count``
    numbered records and two that are no number."""
    topic = f"read-to-end-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        kafka_bootstrap_servers=bootstrap, topic_outbox=topic, topic_partitions=partitions
    )
    await ensure_topics(settings, only=[topic])
    # linger_ms batches many records per produce request: the multi-record batches of DESIGN 2.
    records = [(str(n).encode(), orjson.dumps({"n": n})) for n in range(count)]
    records += [(b"junk", b"not json"), (b"list", b"[1, 2]")]
    await produce(bootstrap, topic, records)
    return settings


def test_reads_every_record_of_every_partition_once_and_counts_the_skipped(
    kafka_bootstrap: str,
) -> None:
    async def scenario() -> None:
        settings = await _topic_with_records(kafka_bootstrap, partitions=3, count=500)
        topic = settings.topic_outbox
        read = await read_to_end(settings, topic, _number, timeout_s=60)
        assert read is not None
        assert sorted(read.items) == list(range(500))
        assert read.skipped == 2
        # Reading again reads the same: the end is where the topic ends, not a moving target.
        again = await read_to_end(settings, topic, _number, timeout_s=60)
        assert again is not None and sorted(again.items) == list(range(500))

    asyncio.run(scenario())


def test_a_missing_topic_reads_as_none(kafka_bootstrap: str) -> None:
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap)
    missing = f"read-to-end-missing-{uuid.uuid4().hex[:10]}"
    assert asyncio.run(read_to_end(settings, missing, _number)) is None


def test_not_reaching_the_end_raises_unless_partial_is_asked_for(kafka_bootstrap: str) -> None:
    async def scenario() -> None:
        settings = await _topic_with_records(kafka_bootstrap, partitions=1, count=5)
        topic = settings.topic_outbox
        # No time at all: the loop never polls, so the end is never reached.
        with pytest.raises(click.ClickException, match=topic):
            await read_to_end(settings, topic, _number, timeout_s=0)
        partial = await read_to_end(settings, topic, _number, timeout_s=0, partial_on_timeout=True)
        assert partial is not None and partial.items == [] and partial.skipped == 0

    asyncio.run(scenario())
