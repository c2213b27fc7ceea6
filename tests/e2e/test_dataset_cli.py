"""``feedback-worker dataset`` end to end: decisions on the real broker's outbox, the CLI as a
process, the dataset in the real receiver; a run killed mid-way and run again adds the rest
exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.fixtures.delivery import ReceiverThread, api_key, make_decision, publish, wait_until
from tests.fixtures.worker import TestTopics

pytestmark = pytest.mark.integration


def _create_topic(bootstrap: str, topic: str) -> None:
    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 2, 1)])
        finally:
            await admin.close()

    asyncio.run(create())


def _mutated(receiver: ReceiverThread) -> int:
    return receiver.call(
        lambda r: sum(1 for x in r.history if x.accepted and x.path.endswith("/mutate"))
    )


def test_dry_run_then_a_killed_run_resumed_adds_each_request_once(
    kafka_bootstrap: str, topics: TestTopics, helicone_receiver: ReceiverThread, tmp_path: Path
) -> None:
    _create_topic(kafka_bootstrap, topics.outbox)
    liked = [make_decision(rating=True, rule="explicit") for _ in range(12)]
    disliked = [make_decision(rating=False, rule="engagement") for _ in range(3)]
    session = make_decision(target="session")
    publish(kafka_bootstrap, topics.outbox, [*liked, *disliked, session, liked[0]])
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.pathsep.join(sys.path),
        "COLUMNS": "200",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_OUTBOX": topics.outbox,
        "HELICONE_API_KEY": api_key(),
        "HELICONE_BASE_URL": helicone_receiver.url,
        "STATE_DIR": str(tmp_path / "state"),
        "DELIVERY_RATE_PER_S": "3",  # a mutate every third of a second: room to kill mid-way
    }
    args = [sys.executable, "-m", "worker.cli", "dataset", "--name", "liked", "--rating", "true",
            "--batch-size", "2"]
    wanted = sorted(d.request_id or "" for d in liked)

    jsonl = tmp_path / "liked.jsonl"
    dry = subprocess.run([*args, "--dry-run", "--jsonl", str(jsonl)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "read 17 decisions" in dry.stdout and "skipped session 1" in dry.stdout
    assert "selected 12 (left out by rating 3)" in dry.stdout
    assert "would add up to 12 requests to dataset 'liked' in 6 mutate calls" in dry.stdout
    assert helicone_receiver.history() == []  # a dry run calls nothing, not even a read
    lines = [orjson.loads(line) for line in jsonl.read_bytes().splitlines()]
    assert sorted(line["request_id"] for line in lines) == wanted
    assert {line["rating_rule"] for line in lines} == {"explicit"}

    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _mutated(helicone_receiver) >= 1, timeout_s=30, what="a first mutate")
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: no clean-up, no goodbye
        first.wait(10)
    stored = helicone_receiver.call(lambda r: r.datasets.by_name("liked"))
    assert len(stored) == 1
    dataset_id = stored[0].id
    partial = helicone_receiver.call(lambda r: r.datasets.request_ids(dataset_id))
    assert 2 <= len(partial) < 12, "the kill came too late to test resuming"

    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert f"({dataset_id})" in second.stdout, "the state file named the same dataset"
    assert f"added {12 - len(partial)}, already there {len(partial)}" in second.stdout
    final = helicone_receiver.call(lambda r: r.datasets.request_ids(dataset_id))
    assert sorted(final) == wanted  # each liked request exactly once
    assert helicone_receiver.call(lambda r: len(r.datasets.by_name("liked"))) == 1
