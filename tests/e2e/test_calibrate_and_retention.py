"""Issue 16 parts 1 and 5 end to end: real broker, worker and Helicone-compatible receiver.

Three requests, each a case the unit tests prove in isolation:

* thumbs down *before* the chat window closed: the engagement rating (true: copied, read)
  becomes a shadow, never posted; Helicone stores the explicit false;
* thumbs down *after* the code window closed on a rejection: the code rating was posted,
  then the explicit one replaced it;
* an accepted suggestion, 10 % retained, with ``CODE_RETAINED_MIN_PCT=50``: Helicone stores
  ``retained_pct`` 10 and the rating false;
* a suggestion nobody acted on: its window writes an abstention (``OUTBOX_ABSTENTIONS``, on
  by default) that delivery skips, so Helicone gets no call for it and ``calibrate`` counts
  it as "decided nothing".

Then ``feedback_rule_agreement_total`` counts both pairs once and ``feedback-worker
calibrate --json`` reads the same answer from the outbox.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest

from tests.e2e.test_dlq_cli import cli
from tests.fixtures.delivery import ReceiverThread, api_key, wait_until
from tests.fixtures.kafka import produce
from tests.fixtures.worker import TestTopics, WorkerProcess
from worker.devtools.traffic import iso

pytestmark = pytest.mark.integration

FAST = {
    "ENGAGEMENT_WINDOW_S": "3",
    "CODE_WINDOW_S": "2",
    "WINDOW_GRACE_S": "1",
    "IDLE_CLOSE_S": "1",
    "ENGAGEMENT_LONG_READ_S": "2",
    "ENGAGEMENT_SHORT_READ_S": "0.3",
    "ENGAGEMENT_QUICK_EXIT_S": "0.6",
    "CODE_RETAINED_MIN_PCT": "50",
    "FEEDBACK_DRY_RUN": "false",
    "DELIVERY_RATE_PER_S": "1000",
}


def event(request_id: str, type_: str, at_ms: int, **properties: Any) -> tuple[bytes, bytes]:
    document: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": type_,
        "request_id": request_id,
        "occurred_at": iso(at_ms),
    }
    if properties:
        document["properties"] = properties
    return request_id.encode(), orjson.dumps(document)


def test_shadow_agreement_retention_and_calibrate(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
) -> None:
    worker: WorkerProcess = worker_factory(
        HELICONE_API_KEY=api_key(), HELICONE_BASE_URL=helicone_receiver.url, **FAST
    )
    worker.wait_ready()
    chat, code, kept, untouched = (str(uuid.uuid4()) for _ in range(4))
    t = int(time.time() * 1000) - 20_000  # in the past: no clamping of future device times
    records = [
        event(chat, "response_shown", t),
        event(chat, "response_copied", t + 500),
        event(chat, "feedback_given", t + 1_000, rating=False),  # before the window ends
        event(code, "suggestion_shown", t),
        event(code, "suggestion_rejected", t + 200),
        event(code, "feedback_given", t + 5_000, rating=False),  # after end + grace
        event(kept, "suggestion_shown", t),
        event(kept, "suggestion_accepted", t + 200),
        event(kept, "suggestion_retained", t + 1_500, retained_chars=10, suggested_chars=100),
        event(untouched, "suggestion_shown", t),
    ]
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, records))

    # engagement (shadow) and code_suggestion pairs, once each
    worker.wait_metric("feedback_rule_agreement_total", lambda v: v == 2, timeout_s=30)
    samples = worker.metrics()
    agreement = {
        (labels["rule"], labels["implicit"], labels["explicit"]): value
        for (name, raw), value in samples.items()
        if name == "feedback_rule_agreement_total" and value
        for labels in [dict(raw)]
    }
    assert agreement == {
        ("engagement", "true", "false"): 1.0,
        ("code_suggestion", "false", "false"): 1.0,
    }

    def stored() -> dict[str, Any]:
        helicone_receiver.call_async(lambda r: r.settle())
        return helicone_receiver.call(lambda r: r.stored())

    wait_until(
        lambda: {chat, code, kept} <= set(stored())
        and stored()[kept].scores.get("retained_pct") == 10
        and stored()[kept].feedback is False,
        timeout_s=20,
        what="the three requests stored",
    )
    now = stored()
    assert now[chat].feedback is False and now[code].feedback is False
    assert now[kept].scores == {"retained_pct": 10, "helicone-score-feedback": 0}
    # the shadow true of the chat was never sent
    for call in helicone_receiver.accepted(f"/v1/request/{chat}"):
        assert call.body["scores"].get("helicone-score-feedback") != 1

    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_OUTBOX": topics.outbox}
    by_rule: dict[str, Any] = {}

    def calibrated() -> dict[str, Any]:
        result = cli("calibrate", "--json", "--since", "1h", env=env)
        assert result.returncode == 0, result.stderr
        by_rule.clear()
        by_rule.update((doc["rule"], doc) for doc in map(orjson.loads, result.stdout.splitlines()))
        return by_rule

    # The untouched suggestion's window closes when its partition's stream time passes it,
    # or on the idle timer when no later event lands there; either can come after the three
    # requests are stored, so read the outbox again until it holds the abstention too.
    wait_until(
        lambda: calibrated().get("code_suggestion", {}).get("decisions") == 3,
        timeout_s=30,
        what="the abstention of the untouched suggestion in the outbox",
    )
    assert by_rule["engagement"]["paired"] == 1
    assert by_rule["engagement"]["agreement"]["successes"] == 0
    assert by_rule["engagement"]["positive_precision"]["trials"] == 1
    # the rejection, the accept, and the abstention of the untouched suggestion
    assert by_rule["code_suggestion"]["decisions"] == 3
    assert by_rule["code_suggestion"]["undecided"]["successes"] == 1
    assert untouched not in stored()
    assert helicone_receiver.accepted(f"/v1/request/{untouched}") == []
    assert by_rule["code_suggestion"]["paired"] == 1
    assert by_rule["code_suggestion"]["negative_precision"]["successes"] == 1
    assert by_rule["code_retention"]["decisions"] == 1
    assert by_rule["code_retention"]["undecided"]["successes"] == 0
    table = cli("calibrate", env={**env, "COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "engagement" in table.stdout and "Wilson" in table.stdout
    print(table.stdout)  # shown with -s: the figures quoted in the closing report
