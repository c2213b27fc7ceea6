"""A real browser to what Helicone stores: Chromium -> SDK -> collector -> broker -> worker.

Debian's Chromium, driven by playwright-core (``sdk/browser/e2e/run.mjs``), loads a page that
uses the built SDK and plays one user journey against the real collector (in-process); the
worker (a subprocess, with SHORT_WINDOWS: engagement window 3 s, grace 1 s, long read > 2 s,
short read < 0.3 s, quick exit <= 0.6 s) decides and delivers; the receiver stores what
Helicone would store.  Every test has its own request id and checks the *stored* state
(``feedback``, ``helicone-score-feedback``, ``time_spent_s``) and the outbox's decisions.

Journeys:

* copy, thumbs up and a long read, all by the page-hide beacon: the explicit rating wins and
  the engagement window's ``time_spent_s`` is stored next to it (one whole state);
* copy, a link click and a long read, then navigating away: only ``page_left`` (made by the
  SDK on pagehide) goes by the unload beacon; engagement stores rating 1 with time spent;
* an answer regenerated at once and the tab closed: engagement stores rating 0;
* the collector unreachable while the user acts, a second tab adopting the stored queue, then
  the collector back: every event arrives (twice: at-least-once), the worker drops the
  copies by ``event_id``, and each rule decides exactly once.

The copied text never reaches the input topic (checked wherever a copy happens).

Without Chromium, Node or the SDK's build these tests skip, with a reason that says how to
install them; with ``CI=true`` they fail instead, so a CI image that lost the browser cannot
pass by skipping.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.fixtures.collector import WRITE_KEY, CollectorFactory
from tests.fixtures.delivery import ReceiverThread, api_key, read_to_end
from tests.fixtures.kafka import read_topic
from tests.fixtures.worker import TestTopics, WorkerProcess
from tests.integration.test_delivery import delivery_env
from tests.integration.test_windows import SHORT_WINDOWS
from worker.devtools.broker import free_port
from worker.devtools.receiver import StoredRequest

SDK = Path(__file__).resolve().parents[2] / "sdk" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
COPIED_TEXT = b"SECRET-COPIED-TEXT-42"  # in the page's answer; the SDK must never send it

WINDOW_MS = int(float(SHORT_WINDOWS["ENGAGEMENT_WINDOW_S"]) * 1000)
LONG_READ_MS = int(float(SHORT_WINDOWS["ENGAGEMENT_LONG_READ_S"]) * 1000)
QUICK_EXIT_MS = int(float(SHORT_WINDOWS["ENGAGEMENT_QUICK_EXIT_S"]) * 1000)
#: How long a journey's user reads before leaving: past the long read, well inside the window.
#: A journey whose only positive is a copy must not leave at once: copied against quick exit
#: is a tie, which decides nothing (no ``time_spent_s`` either), and copied against quick exit
#: and short read (under 0.3 s) is a "false", so the outcome would hang on the machine's speed.
READ_MS = LONG_READ_MS + 300

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------- skip or fail


def missing_for_browser_tests(
    chromium: str = CHROMIUM, sdk: Path = SDK, node: str | None = None
) -> list[str]:
    """What these tests need and this machine lacks, each with how to get it."""
    node = node if node is not None else shutil.which("node")
    missing = []
    if not Path(chromium).exists():
        missing.append(f"Chromium at {chromium} (apt-get install chromium, or set CHROMIUM=)")
    if not node:
        missing.append("Node 20+ (apt-get install nodejs npm)")
    if not (
        (sdk / "dist" / "index.js").exists() and (sdk / "node_modules" / "playwright-core").exists()
    ):
        missing.append("the built SDK and playwright-core in sdk/browser (make sdk-test)")
    return missing


def require_browser(missing: list[str], *, ci: bool) -> None:
    """Skip (or, under CI, fail) when something the browser tests need is missing."""
    if not missing:
        return
    reason = "real-browser test needs " + "; ".join(missing)
    if ci:
        pytest.fail(f"{reason} [CI=true: missing means failed, not skipped]", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser_available() -> None:
    require_browser(missing_for_browser_tests(), ci=os.environ.get("CI", "").lower() == "true")


def browser_test(fn: F) -> F:
    """An integration test that needs the browser: skipped without it, failed under CI.
    (``usefixtures`` runs the check before the broker, worker and collector fixtures.)"""
    marked: F = pytest.mark.integration(pytest.mark.usefixtures("browser_available")(fn))
    return marked


def test_a_missing_browser_skips_with_how_to_install_and_fails_under_ci(tmp_path: Path) -> None:
    """The skip reason names every missing piece and how to install it; CI=true fails."""
    missing = missing_for_browser_tests(str(tmp_path / "no-chromium"), tmp_path, node="")
    assert len(missing) == 3
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_browser(missing, ci=False)
    reason = str(skipped.value)
    for how in ("apt-get install chromium", "apt-get install nodejs", "make sdk-test"):
        assert how in reason, reason
    with pytest.raises(pytest.fail.Exception) as failed:
        require_browser(missing, ci=True)
    assert "make sdk-test" in str(failed.value) and "CI=true" in str(failed.value)
    require_browser([], ci=True)  # nothing missing: neither


# --------------------------------------------------------------------------- helpers


async def drive(
    endpoint: str, request_id: str, page_port: int, *args: str, timeout_s: float = 90
) -> dict[str, Any]:
    """Run one journey in Chromium (``run.mjs``); its JSON report."""
    browser = await asyncio.create_subprocess_exec(
        *driver_command(endpoint, request_id, page_port, *args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(browser.communicate(), timeout=timeout_s)
    assert browser.returncode == 0, err.decode()[-2000:]
    report: dict[str, Any] = json.loads(out)
    return report


def driver_command(endpoint: str, request_id: str, page_port: int, *args: str) -> list[str]:
    return [
        "node", str(SDK / "e2e" / "run.mjs"), "--endpoint", endpoint, "--write-key", WRITE_KEY,
        "--request-id", request_id, "--page-port", str(page_port), *args,
    ]


def start_worker(
    worker_factory: Callable[..., WorkerProcess], receiver: ReceiverThread
) -> WorkerProcess:
    return worker_factory(
        TOPIC_PARTITIONS="4", **SHORT_WINDOWS, **delivery_env(receiver, api_key())
    )


async def wait_stored(
    receiver: ReceiverThread,
    request_id: str,
    done: Callable[[StoredRequest], bool],
    worker: WorkerProcess,
    timeout_s: float = 45,
) -> StoredRequest:
    """What the receiver stores for ``request_id`` once ``done(stored)`` (its scores batch
    consumed at once, as ``settle`` does), or fail with what it stores and the worker's log."""
    deadline = time.monotonic() + timeout_s
    stored = None
    while time.monotonic() < deadline:
        receiver.call_async(lambda r: r.settle())
        stored = receiver.call(lambda r: r.stored()).get(request_id)
        if stored is not None and done(stored):
            return stored
        await asyncio.sleep(0.5)
    raise AssertionError(f"stored {stored!r} after {timeout_s} s:\n{worker.logs()[-3000:]}")


async def decisions_for(bootstrap: str, topic: str, request_id: str) -> list[dict[str, Any]]:
    """Every decision on the outbox for ``request_id``, read to the topic's end."""
    records = await read_to_end(bootstrap, topic)
    return [d for d in (json.loads(r.value) for r in records) if d["request_id"] == request_id]


def one_per_rule(decisions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The decisions by rule, asserting each rule decided exactly once."""
    per_rule = Counter(d["rule"] for d in decisions)
    assert all(n == 1 for n in per_rule.values()), per_rule
    return {d["rule"]: d for d in decisions}


def summary(decision: dict[str, Any]) -> dict[str, list[str]]:
    """The engagement verdict's kinds, from the anchor's evidence: ``time spent N ms;
    positive: a, b; negative: -`` -> ``{"positive": [a, b], "negative": []}``."""
    parts = dict(p.split(": ", 1) for p in decision["signals"][0]["detail"].split("; ")[1:])
    return {k: [] if v == "-" else v.split(", ") for k, v in parts.items()}


def millis(event: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(event["occurred_at"]).timestamp() * 1000)


def page(port: int) -> str:
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- journeys


@browser_test
async def test_a_page_s_copy_and_thumbs_up_end_as_one_stored_state_in_helicone(
    collector_factory: CollectorFactory,
    worker_factory: Callable[..., WorkerProcess],
    topics: TestTopics,
    kafka_bootstrap: str,
    helicone_receiver: ReceiverThread,
) -> None:
    """Shown, copied, thumbs up, a long read, page_left, all by the page-hide beacon.  Stored:
    the explicit rating (``helicone-score-feedback`` 1) *and* the engagement window's
    ``time_spent_s`` (one whole state, so neither clobbers the other); the engagement window's
    own "true" (copied, long read) is not a rating, as the explicit one wins; the copied text
    is nowhere on the input topic."""
    page_port = free_port()
    request_id = str(uuid.uuid4())
    worker = start_worker(worker_factory, helicone_receiver)
    async with collector_factory(
        topic_ui_events=topics.ui_events, topic_invalid=topics.invalid, topic_partitions=4,
        collector_allowed_origins=page(page_port),
    ) as (running, _):
        await asyncio.to_thread(worker.wait_ready)
        ran = await drive(
            running.url, request_id, page_port, "--thumbs-up", "--wait-ms", str(READ_MS)
        )
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
    by_type = {e["type"]: e for e in events}
    spent_ms = millis(by_type["page_left"]) - millis(by_type["response_shown"])
    assert LONG_READ_MS < spent_ms < WINDOW_MS, spent_ms
    stored = await wait_stored(
        helicone_receiver, request_id, lambda s: "time_spent_s" in s.scores, worker
    )
    assert stored.feedback is True
    assert stored.scores == {
        "helicone-score-feedback": 1, "time_spent_s": spent_ms // 1000
    }, stored
    decided = one_per_rule(await decisions_for(kafka_bootstrap, topics.outbox, request_id))
    assert set(decided) == {"explicit", "engagement"}, decided
    assert decided["engagement"]["rating"] is None  # the explicit rating wins
    assert summary(decided["engagement"]) == {"positive": ["copied", "long_read"], "negative": []}
    assert worker.metric_sum("feedback_events_invalid_total") == 0


@browser_test
async def test_a_copied_linked_and_read_answer_left_by_navigation_is_stored_as_rating_1(
    collector_factory: CollectorFactory,
    worker_factory: Callable[..., WorkerProcess],
    topics: TestTopics,
    kafka_bootstrap: str,
    helicone_receiver: ReceiverThread,
) -> None:
    """Shown, copied, a link in the answer clicked; those three are flushed by fetch and
    acknowledged; the user reads past the long-read threshold (inside the window) and
    navigates away.  ``page_left`` is made by the SDK on pagehide and only the unload beacon
    can carry it.  Engagement: positive copied, link, long_read; negative none -> stored
    ``feedback`` True, ``helicone-score-feedback`` 1 and ``time_spent_s`` = whole seconds from
    shown to left; one engagement decision and no explicit one."""
    page_port = free_port()
    request_id = str(uuid.uuid4())
    worker = start_worker(worker_factory, helicone_receiver)
    async with collector_factory(
        topic_ui_events=topics.ui_events, topic_invalid=topics.invalid, topic_partitions=4,
        collector_allowed_origins=page(page_port),
    ) as (running, _):
        await asyncio.to_thread(worker.wait_ready)
        ran = await drive(
            running.url, request_id, page_port, "--journey", "read", "--wait-ms", str(READ_MS)
        )
        assert ran["errors"] == [], ran
        assert [e["type"] for e in ran["events"]] == [
            "response_shown", "response_copied", "link_clicked"
        ], ran
        # Acknowledged before the user left: the unload flush had nothing else to carry.
        assert ran["pendingAfterFlush"] == [] and ran["pendingAtLeave"] == [], ran

        records = await read_topic(kafka_bootstrap, topics.ui_events, expected=4)

    events = [json.loads(r.value) for r in records]
    assert all(COPIED_TEXT not in (r.value or b"") for r in records)
    tracked = {e["event_id"] for e in ran["events"]}
    left = [e for e in events if e["type"] == "page_left"]
    assert len(left) == 1 and left[0]["event_id"] not in tracked, events
    assert left[0]["request_id"] == request_id and left[0].get("sent_at")
    assert sorted(e["event_id"] for e in events if e["type"] != "page_left") == sorted(tracked)
    shown = next(e for e in events if e["type"] == "response_shown")
    spent_ms = millis(left[0]) - millis(shown)
    assert LONG_READ_MS < spent_ms < WINDOW_MS, spent_ms

    stored = await wait_stored(
        helicone_receiver, request_id, lambda s: "time_spent_s" in s.scores, worker
    )
    assert stored.feedback is True
    assert stored.scores["helicone-score-feedback"] == 1
    assert stored.scores["time_spent_s"] == spent_ms // 1000

    decided = one_per_rule(await decisions_for(kafka_bootstrap, topics.outbox, request_id))
    assert set(decided) == {"engagement"}, decided
    engagement = decided["engagement"]
    assert engagement["rating"] is True
    assert summary(engagement) == {"positive": ["copied", "link", "long_read"], "negative": []}
    assert worker.metric_sum("feedback_events_invalid_total") == 0


@browser_test
async def test_an_answer_regenerated_at_once_and_the_tab_closed_is_stored_as_rating_0(
    collector_factory: CollectorFactory,
    worker_factory: Callable[..., WorkerProcess],
    topics: TestTopics,
    kafka_bootstrap: str,
    helicone_receiver: ReceiverThread,
) -> None:
    """Shown, regenerated at once, the tab closed (the SDK's page_left on pagehide, by
    beacon).  Engagement: negative repeat (and quick exit when the tab closed within 0.6 s
    of shown, short read under 0.3 s), no positive -> stored ``feedback`` False,
    ``helicone-score-feedback`` 0, ``time_spent_s`` 0; one engagement decision."""
    page_port = free_port()
    request_id = str(uuid.uuid4())
    worker = start_worker(worker_factory, helicone_receiver)
    async with collector_factory(
        topic_ui_events=topics.ui_events, topic_invalid=topics.invalid, topic_partitions=4,
        collector_allowed_origins=page(page_port),
    ) as (running, _):
        await asyncio.to_thread(worker.wait_ready)
        ran = await drive(running.url, request_id, page_port, "--journey", "regenerate")
        assert ran["errors"] == [], ran
        assert [e["type"] for e in ran["events"]] == ["response_shown", "response_regenerated"]

        records = await read_topic(kafka_bootstrap, topics.ui_events, expected=3)

    events = {e["type"]: e for e in (json.loads(r.value) for r in records)}
    assert sorted(events) == ["page_left", "response_regenerated", "response_shown"], events
    spent_ms = millis(events["page_left"]) - millis(events["response_shown"])
    assert spent_ms < 1000, spent_ms

    stored = await wait_stored(
        helicone_receiver, request_id, lambda s: s.feedback is not None, worker
    )
    assert stored.feedback is False
    assert stored.scores == {"helicone-score-feedback": 0, "time_spent_s": 0}

    decided = one_per_rule(await decisions_for(kafka_bootstrap, topics.outbox, request_id))
    assert set(decided) == {"engagement"}, decided
    assert decided["engagement"]["rating"] is False
    kinds = summary(decided["engagement"])
    assert kinds["positive"] == [] and "repeat" in kinds["negative"], kinds
    assert ("quick_exit" in kinds["negative"]) == (spent_ms <= QUICK_EXIT_MS), (kinds, spent_ms)


@browser_test
async def test_events_queued_while_the_collector_is_down_arrive_and_are_decided_once(
    collector_factory: CollectorFactory,
    worker_factory: Callable[..., WorkerProcess],
    topics: TestTopics,
    kafka_bootstrap: str,
    helicone_receiver: ReceiverThread,
    tmp_path: Path,
) -> None:
    """The page starts against a collector address where nothing listens: shown, copied, thumbs up
    and (after a long read) page_left stay queued (and in localStorage) while fetch fails and
    retries.  A second tab adopts the stored queue, so both tabs hold the same events.  The
    collector then starts on that address; both tabs' queues drain.  What holds: every tracked
    event is on the input topic and nothing else; the copies (the SDK is at-least-once, and two
    tabs sent the same events) are dropped by the worker by ``event_id`` (counted as duplicates,
    none late); the outbox has exactly one explicit and one engagement decision for the request;
    the receiver stores the thumbs up and ``time_spent_s``."""
    page_port = free_port()
    collector_port = free_port()
    request_id = str(uuid.uuid4())
    back = tmp_path / "collector-is-back"
    queued_file = Path(f"{back}.queued")
    worker = start_worker(worker_factory, helicone_receiver)
    await asyncio.to_thread(worker.wait_ready)

    browser = await asyncio.create_subprocess_exec(
        *driver_command(
            page(collector_port), request_id, page_port, "--journey", "outage",
            "--wait-ms", str(READ_MS), "--until-file", str(back),
        ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    communicate = asyncio.ensure_future(browser.communicate())
    try:
        deadline = time.monotonic() + 30
        while not queued_file.exists():
            assert not communicate.done(), (await communicate)[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the page never queued its events"
            await asyncio.sleep(0.1)
        tabs = json.loads(queued_file.read_text())
        # Nothing was acknowledged: both tabs hold all four events (the second adopted them).
        assert [sorted(e["type"] for e in tab) for tab in tabs] == 2 * [
            ["feedback_given", "page_left", "response_copied", "response_shown"]
        ], tabs
        assert {e["event_id"] for e in tabs[0]} == {e["event_id"] for e in tabs[1]}
        await asyncio.sleep(1.5)  # the outage goes on: the SDK keeps failing and backing off

        async with collector_factory(
            topic_ui_events=topics.ui_events, topic_invalid=topics.invalid, topic_partitions=4,
            collector_allowed_origins=page(page_port), collector_port=collector_port,
        ) as (running, _):
            assert running.port == collector_port
            back.touch()
            out, err = await asyncio.wait_for(communicate, timeout=60)
            assert browser.returncode == 0, err.decode()[-2000:]
            ran = json.loads(out)
            assert ran["errors"] == [] and ran["pendingAtLeave"] == [], ran
            records = await read_topic(kafka_bootstrap, topics.ui_events, expected=8)
    finally:
        if browser.returncode is None:
            browser.kill()
            await communicate

    assert all(COPIED_TEXT not in (r.value or b"") for r in records)
    tracked = {e["event_id"] for e in ran["events"]}
    copies = Counter(json.loads(r.value)["event_id"] for r in records)
    assert set(copies) == tracked, (copies, tracked)
    duplicates = sum(copies.values()) - len(copies)
    assert duplicates > 0, "no event came twice: the dedupe path was not exercised"

    stored = await wait_stored(
        helicone_receiver, request_id, lambda s: "time_spent_s" in s.scores, worker
    )
    assert stored.feedback is True
    assert stored.scores["helicone-score-feedback"] == 1

    decided = one_per_rule(await decisions_for(kafka_bootstrap, topics.outbox, request_id))
    assert set(decided) == {"explicit", "engagement"}, decided
    assert decided["explicit"]["rating"] is True
    assert decided["engagement"]["rating"] is None  # the explicit rating wins
    assert summary(decided["engagement"]) == {"positive": ["copied", "long_read"], "negative": []}
    late = [json.loads(r.value) for r in await read_to_end(kafka_bootstrap, topics.late)]
    assert late == [], late  # no copy was taken for a second event of a decided window
    await asyncio.to_thread(
        worker.wait_metric, "feedback_events_duplicate_total", lambda v: v == duplicates
    )
    assert worker.metric_sum("feedback_events_invalid_total") == 0
