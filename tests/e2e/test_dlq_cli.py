"""``feedback-worker dlq list|redrive`` against a running worker, the real broker and receiver."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from typing import Any

import orjson
import pytest

from tests.fixtures.delivery import ReceiverThread, api_key, make_decision, publish, read_all
from tests.fixtures.worker import TestTopics, WorkerProcess

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env={
            "PATH": os.environ["PATH"],
            "PYTHONPATH": os.pathsep.join(sys.path),
            "COLUMNS": "250",  # rich folds table cells at the default 80 columns
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_list_shows_why_and_redrive_puts_decisions_back_once(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
) -> None:
    worker: WorkerProcess = worker_factory(
        FEEDBACK_DRY_RUN="false",
        HELICONE_API_KEY=api_key(),
        HELICONE_BASE_URL=helicone_receiver.url,
        DELIVERY_RATE_PER_S="1000",
    )
    worker.wait_ready()
    rejected = [make_decision(rating=False) for _ in range(3)]
    invalid = make_decision(request_id="not-a-uuid")
    helicone_receiver.call(lambda r: r.fail_next(3, status=422))
    publish(kafka_bootstrap, topics.outbox, rejected)
    worker.wait_metric("feedback_delivery_dlq_total", lambda v: v == 3)
    publish(kafka_bootstrap, topics.outbox, [invalid])
    worker.wait_metric("feedback_delivery_dlq_total", lambda v: v == 4)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_DLQ": topics.dlq,
        "TOPIC_OUTBOX": topics.outbox,
    }

    listed = cli("dlq", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    for decision in [*rejected, invalid]:
        assert decision.decision_id in listed.stdout
    assert "by reason: invalid 1, rejected 3" in listed.stdout
    as_json = cli("dlq", "list", "--reason", "rejected", "--json", env=env)
    documents = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    assert sorted(d["decision_id"] for d in documents) == sorted(
        d.decision_id for d in rejected
    )
    assert {(d["reason"], d["last_status"], d["attempts"]) for d in documents} == {
        ("rejected", 422, 0)
    }
    nothing_old = cli("dlq", "redrive", "--older-than", "1d", env=env)
    assert "redrove 0 decisions" in nothing_old.stdout, nothing_old.stderr

    redriven = cli("dlq", "redrive", "--reason", "rejected", env=env)
    assert redriven.returncode == 0, redriven.stderr
    assert f"redrove 3 decisions to {topics.outbox}" in redriven.stdout
    helicone_receiver.wait_for(3)
    worker.wait_metric("feedback_delivery_delivered_total", lambda v: v == 3)

    after = cli("dlq", "list", "--json", env=env)
    assert [orjson.loads(line)["decision_id"] for line in after.stdout.splitlines()] == [
        invalid.decision_id
    ]
    # A second redrive finds nothing of that reason; the outbox got each decision once.
    again = cli("dlq", "redrive", "--reason", "rejected", env=env)
    assert "redrove 0 decisions" in again.stdout
    outbox = Counter(
        orjson.loads(r.value)["decision_id"] for r in read_all(kafka_bootstrap, topics.outbox)
    )
    assert all(outbox[d.decision_id] == 2 for d in rejected)
    accepted = Counter(r.path for r in helicone_receiver.accepted())
    assert len(accepted) == 3 and set(accepted.values()) == {1}


def test_list_on_a_missing_topic_says_so(kafka_bootstrap: str, topics: TestTopics) -> None:
    result = cli(
        "dlq", "list", env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_DLQ": topics.dlq}
    )
    assert result.returncode == 0, result.stderr
    assert "does not exist" in result.stderr
