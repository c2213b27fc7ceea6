"""Evidence as Helicone properties on the real broker (Tansu) and the real receiver over HTTP.

The worker runs as ``feedback-worker run`` with ``HELICONE_EVIDENCE_PROPERTIES=true``.  The
first test goes from UI events through a (shortened) engagement window; the second publishes
decisions to the outbox directly, under a strict budget; the third kills a worker whose
properties wait out "Request not found" and checks that its replacement sets them.  They wait
on the receiver's accepted calls or stored properties, never on a sleep.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fixtures.delivery import (
    ReceiverThread,
    api_key,
    make_decision,
    publish,
    wait_until,
)
from tests.fixtures.kafka import produce
from tests.fixtures.worker import TestTopics, WorkerProcess
from tests.integration.test_delivery import wait_committed
from worker.events import Evidence

pytestmark = pytest.mark.integration


def evidence_env(receiver: ReceiverThread, **overrides: str) -> dict[str, str]:
    return {
        "FEEDBACK_DRY_RUN": "false",
        "HELICONE_API_KEY": api_key(),
        "HELICONE_BASE_URL": receiver.url,
        "HELICONE_EVIDENCE_PROPERTIES": "true",
        "DELIVERY_CONCURRENCY": "8",
        "DELIVERY_RATE_PER_S": "1000",
        "DELIVERY_BACKOFF_BASE_S": "0.2",
        "DELIVERY_BACKOFF_CAP_S": "2",
        **overrides,
    }


def event(type_: str, request_id: str, at: datetime, **properties: Any) -> bytes:
    return orjson.dumps({
        "event_id": str(uuid.uuid4()), "type": type_, "request_id": request_id,
        "occurred_at": at.isoformat(), "properties": properties,
    })


def test_a_decided_request_ends_up_with_its_rating_and_both_properties(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
) -> None:
    """An answer shown and copied, then left open past the (1 s) long-read mark: the
    engagement rule rates it up; Helicone stores the rating, ``Feedback-Rule: engagement``
    and ``Feedback-Signals: copied,long_read``."""
    worker: WorkerProcess = worker_factory(**evidence_env(
        helicone_receiver,
        ENGAGEMENT_WINDOW_S="2", WINDOW_GRACE_S="1", IDLE_CLOSE_S="2",
        ENGAGEMENT_LONG_READ_S="1", ENGAGEMENT_SHORT_READ_S="0.3",
        ENGAGEMENT_QUICK_EXIT_S="0.6",
    ))
    worker.wait_ready()
    rid, now = str(uuid.uuid4()), datetime.now(UTC)
    records = [
        (rid.encode(), event("response_shown", rid, now)),
        (rid.encode(), event("response_copied", rid, now + timedelta(milliseconds=400))),
    ]
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, records))

    helicone_receiver.wait_for(2, path_prefix=f"/v1/request/{rid}/property", timeout_s=40)
    helicone_receiver.call_async(lambda r: r.settle())
    stored = helicone_receiver.call(lambda r: r.stored())[rid]
    assert stored.feedback is True
    assert helicone_receiver.call(lambda r: r.properties.of(rid)) == {
        "Feedback-Rule": "engagement", "Feedback-Signals": "copied,long_read",
    }
    kinds = [r.path.rsplit("/", 1)[1] for r in helicone_receiver.accepted(f"/v1/request/{rid}")]
    assert kinds == ["score", "property", "property"]


def test_with_a_strict_budget_ratings_are_not_delayed_by_properties(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
) -> None:
    """Two calls a second for everything: five decisions published together cost five
    rating calls and ten property calls, and every rating call comes before any property
    call (properties only take tokens that no waiting rating wants)."""
    worker: WorkerProcess = worker_factory(
        **evidence_env(helicone_receiver, DELIVERY_RATE_PER_S="2")
    )
    worker.wait_ready()
    now = datetime.now(UTC)
    shown = Evidence(event_id="e1", type="suggestion_shown", event_time=now)
    accepted = Evidence(event_id="e2", type="suggestion_accepted", event_time=now)
    decisions = [
        make_decision(rule="code_suggestion").model_copy(update={"signals": [shown, accepted]})
        for _ in range(5)
    ]
    publish(kafka_bootstrap, topics.outbox, decisions)

    helicone_receiver.wait_for(10, path_prefix="/v1/request/", timeout_s=30)
    helicone_receiver.wait_for(15, timeout_s=30)
    kinds = [r.path.rsplit("/", 1)[1] for r in helicone_receiver.accepted()]
    assert kinds == ["score"] * 5 + ["property"] * 10, kinds
    props = helicone_receiver.call(lambda r: r.properties.all())
    assert props == {
        d.request_id: {"Feedback-Rule": "code_suggestion", "Feedback-Signals": "accepted"}
        for d in decisions
    }
    assert worker.metric_sum("feedback_delivery_dlq_total") == 0


def test_properties_waiting_on_request_not_found_survive_a_kill_9(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    tmp_path: Path,
) -> None:
    """Helicone has not logged three rated requests yet: each property call is answered
    "Request not found" and waits to be tried again.  The worker is SIGKILLed once its outbox
    offsets are committed (the outbox will not be read again); Helicone then logs the
    requests, and a second worker on an empty state directory restores the waiting
    properties from the changelog and sets them: the receiver ends up *storing* both
    properties of every request.

    KAFKA_PRODUCER_BATCH_BYTES=1: see test_delivery's kill-9 test (Tansu's ListOffsets)."""
    logged: set[str] = set()
    receiver = ReceiverThread(known_requests=lambda request_id: request_id in logged)
    try:
        env = evidence_env(
            receiver, KAFKA_PRODUCER_BATCH_BYTES="1", HELICONE_PROPERTY_NOT_FOUND_S="120"
        )
        first: WorkerProcess = worker_factory(state_dir=tmp_path / "state-a", **env)
        first.wait_ready()
        now = datetime.now(UTC)
        shown = Evidence(event_id="e1", type="suggestion_shown", event_time=now)
        accepted = Evidence(event_id="e2", type="suggestion_accepted", event_time=now)
        decisions = [
            make_decision(rule="code_suggestion").model_copy(
                update={"signals": [shown, accepted]}
            )
            for _ in range(3)
        ]
        publish(kafka_bootstrap, topics.outbox, decisions)
        first.wait_metric("feedback_property_not_found_total", lambda v: v >= 3)
        wait_committed(kafka_bootstrap, topics.group, topics.outbox, 3)
        first.kill()
        assert receiver.call(lambda r: r.properties.all()) == {}

        logged.update(d.request_id for d in decisions if d.request_id is not None)
        second: WorkerProcess = worker_factory(state_dir=tmp_path / "state-b", **env)
        second.wait_ready(timeout_s=120)
        expected = {
            d.request_id: {"Feedback-Rule": "code_suggestion", "Feedback-Signals": "accepted"}
            for d in decisions
        }
        wait_until(
            lambda: receiver.call(lambda r: r.properties.all()) == expected,
            timeout_s=60, what="the second worker to set the waiting properties",
        )
        restored = re.findall(r"evidence: (\d+) pending request", second.logs())
        assert sum(map(int, restored)) >= 3, second.logs()[-3000:]
        assert second.metric_sum("feedback_property_dropped_total") == 0
    finally:
        receiver.close()
