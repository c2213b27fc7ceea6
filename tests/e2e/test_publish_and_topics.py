"""`feedback-worker publish` and the worker's topic set-up, against the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.fixtures.kafka import read_topic
from tests.fixtures.worker import TestTopics
from worker.config import load_settings
from worker.kafka import ensure_topics
from worker.partitioner import partition_for

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "all.jsonl"


def cli(
    *args: str, env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(sys.path), **env},
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_publish_sends_each_line_keyed_by_request_id(
    kafka_bootstrap: str, topics: TestTopics
) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_UI_EVENTS": topics.ui_events}
    result = cli("publish", str(EXAMPLES), env=env)
    assert result.returncode == 0, result.stderr
    lines = EXAMPLES.read_bytes().splitlines()
    assert f"sent {len(lines)} events" in result.stdout

    records = asyncio.run(read_topic(kafka_bootstrap, topics.ui_events, expected=len(lines)))
    assert len(records) == len(lines)
    assert sorted(r.value for r in records) == sorted(lines)
    for record in records:
        event = orjson.loads(record.value)
        assert record.key == (event.get("request_id") or event["session_id"]).encode()


def test_publish_reports_and_skips_invalid_lines(
    kafka_bootstrap: str, topics: TestTopics
) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_UI_EVENTS": topics.ui_events}
    good = EXAMPLES.read_bytes().splitlines()[0]
    result = cli("publish", "-", env=env, stdin=good + b"\nnot json\n{}\n")
    assert result.returncode == 1
    assert "sent 1 events" in result.stdout and "skipped 2" in result.stdout
    assert "line 2" in result.stderr and "line 3" in result.stderr


def test_worker_creates_its_topics_with_the_configured_partitions(
    kafka_bootstrap: str, topics: TestTopics
) -> None:
    settings = load_settings(
        {"kafka_bootstrap_servers": kafka_bootstrap, "topic_partitions": 3,
         **{k.lower(): v for k, v in topics.env().items()}}
    )
    created = asyncio.run(ensure_topics(settings))
    assert topics.ui_events in created and topics.invalid in created
    assert asyncio.run(ensure_topics(settings)) == [], "second start creates nothing"

    async def counts() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(created)
            return {d["topic"]: len(d["partitions"]) for d in described}
        finally:
            await admin.close()

    assert set(asyncio.run(counts()).values()) == {3}


def test_worker_refuses_an_input_topic_with_another_partition_count(
    kafka_bootstrap: str, topics: TestTopics, tmp_path: Path
) -> None:
    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topics.ui_events, 2, 1)])
        finally:
            await admin.close()

    asyncio.run(create())
    result = cli(
        "run",
        env={
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TOPIC_PARTITIONS": "4",
            "STATE_DIR": str(tmp_path),
            "FEEDBACK_DRY_RUN": "true",
            **topics.env(),
        },
    )
    assert result.returncode == 2
    assert f"topic {topics.ui_events!r} has 2 partitions but TOPIC_PARTITIONS is 4" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("key", "java_murmur2"),
    [  # vectors from Apache Kafka's UtilsTest.testMurmur2 (signed 32-bit results)
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_partitioner_matches_kafkas_default(key: bytes, java_murmur2: int) -> None:
    # Java: Utils.toPositive(murmur2(key)) % numPartitions
    for partitions in (1, 4, 8, 13):
        assert partition_for(key, partitions) == (java_murmur2 & 0x7FFFFFFF) % partitions
