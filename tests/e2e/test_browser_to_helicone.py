"""A real browser to what Helicone stores: Chromium -> SDK -> collector -> broker -> worker.

Debian's Chromium, driven by playwright-core (``sdk/browser/e2e/run.mjs``), loads a page that
uses the built SDK; the user sees an answer, copies it, gives a thumbs up and leaves, so the
page-hide beacon carries the events to the real collector.  The worker decides (engagement
window and explicit rating) and delivers; the receiver stores what Helicone would store.

Checked: the request's stored state is the explicit rating as ``helicone-score-feedback`` 1
*and* the engagement window's ``time_spent_s`` (one whole state, so neither clobbers the
other); the copied text is nowhere on the input topic.

Skipped when Chromium, Node or the SDK's build (``make sdk-test`` makes it, and runs before
the Python suite in ``make test``) is missing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.collector import WRITE_KEY, CollectorFactory
from tests.fixtures.delivery import ReceiverThread, api_key
from tests.fixtures.kafka import read_topic
from tests.fixtures.worker import TestTopics, WorkerProcess
from tests.integration.test_delivery import delivery_env
from tests.integration.test_windows import SHORT_WINDOWS
from worker.devtools.broker import free_port

pytestmark = pytest.mark.integration

SDK = Path(__file__).resolve().parents[2] / "sdk" / "browser"
CHROMIUM = "/usr/bin/chromium"
COPIED_TEXT = b"SECRET-COPIED-TEXT-42"  # in the page's answer; the SDK must never send it

needs_browser = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and shutil.which("node")
         and (SDK / "dist" / "index.js").exists()
         and (SDK / "node_modules" / "playwright-core").exists()),
    reason="needs /usr/bin/chromium, node and the built SDK (make sdk-test)",
)


@needs_browser
async def test_a_page_s_copy_and_thumbs_up_end_as_one_stored_state_in_helicone(
    collector_factory: CollectorFactory,
    worker_factory: Callable[..., WorkerProcess],
    topics: TestTopics,
    kafka_bootstrap: str,
    helicone_receiver: ReceiverThread,
) -> None:
    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    request_id = str(uuid.uuid4())
    worker = worker_factory(
        TOPIC_PARTITIONS="4",
        **SHORT_WINDOWS,
        **delivery_env(helicone_receiver, api_key()),
    )
    async with collector_factory(
        topic_ui_events=topics.ui_events, topic_invalid=topics.invalid, topic_partitions=4,
        collector_allowed_origins=origin,
    ) as (running, _):
        await asyncio.to_thread(worker.wait_ready)
        browser = await asyncio.create_subprocess_exec(
            "node", str(SDK / "e2e" / "run.mjs"), "--endpoint", running.url,
            "--write-key", WRITE_KEY, "--request-id", request_id,
            "--page-port", str(page_port), "--thumbs-up",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(browser.communicate(), timeout=90)
        assert browser.returncode == 0, err.decode()[-2000:]
        ran = json.loads(out)
        assert ran["errors"] == [], ran
        sent_types = sorted(e["type"] for e in ran["events"])
        assert sent_types == sorted(
            ["response_shown", "response_copied", "feedback_given", "page_left"]
        ), ran

        records = await read_topic(kafka_bootstrap, topics.ui_events, expected=4)

    events = [json.loads(r.value) for r in records]
    assert sorted(e["event_id"] for e in events) == sorted(e["event_id"] for e in ran["events"])
    assert all(e.get("sent_at") for e in events), "the batch sent_at was not applied"
    assert all(COPIED_TEXT not in (r.value or b"") for r in records)

    # Both decisions (explicit at once, engagement when its window closes) reach Helicone as
    # one state: the thumbs up wins, and the engagement window's score is kept next to it.
    deadline = time.monotonic() + 60
    stored = None
    while time.monotonic() < deadline:
        helicone_receiver.call_async(lambda r: r.settle())
        stored = helicone_receiver.call(lambda r: r.stored()).get(request_id)
        if stored is not None and "time_spent_s" in stored.scores:
            break
        await asyncio.sleep(0.5)
    assert stored is not None, worker.logs()[-3000:]
    assert stored.feedback is True
    assert stored.scores["helicone-score-feedback"] == 1
    assert "time_spent_s" in stored.scores, (stored, worker.logs()[-3000:])
    assert worker.metric_sum("feedback_events_invalid_total") == 0
