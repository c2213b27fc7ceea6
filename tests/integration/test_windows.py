"""The window engine inside the real worker, on the real broker: every rule end to end, replay
and shuffle determinism, late events, idle close, crash and restart, and rebalances.

Windows are shortened through the settings so a test takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from datetime import datetime
from typing import Any

import orjson
import pytest

from tests.fixtures.kafka import produce, read_topic
from tests.fixtures.worker import TestTopics, WorkerProcess, make_topics
from worker.devtools.traffic import Journey, Windows, generate, iso

pytestmark = pytest.mark.integration

SHORT_WINDOWS = {
    "ENGAGEMENT_WINDOW_S": "3",
    "CODE_WINDOW_S": "2",
    "CLICKS_WINDOW_S": "3",
    "TICKET_WINDOW_S": "4",
    "WINDOW_GRACE_S": "1",
    "IDLE_CLOSE_S": "2",
    "ENGAGEMENT_LONG_READ_S": "2",
    "ENGAGEMENT_SHORT_READ_S": "0.3",
    "ENGAGEMENT_QUICK_EXIT_S": "0.6",
}
SHAPE = Windows(engagement_ms=3_000, code_ms=2_000, clicks_ms=3_000, ticket_ms=4_000)
#: Tansu reports a wrong end offset after multi-record batches, which makes Faust's changelog
#: recovery stop short (DESIGN 2). Tests that restore state send one record per batch.
ONE_RECORD_PER_BATCH = {"KAFKA_PRODUCER_BATCH_BYTES": "1"}


def records_of(journeys: list[Journey]) -> list[tuple[bytes, bytes]]:
    events = sorted(
        ((e, j.request_id) for j in journeys for e in j.events), key=lambda p: p[0]["occurred_at"]
    )
    return [(rid.encode(), orjson.dumps(e)) for e, rid in events]


def expected_ratings(journeys: list[Journey]) -> dict[tuple[str, str], bool | None]:
    return {(j.request_id, rule): r for j in journeys for rule, r in j.expected.items()}


def all_kinds(start_ms: int, per_kind: int = 3, seed: int = 3) -> list[Journey]:
    journeys: list[Journey] = []
    for n, kind in enumerate(["chat", "code", "search", "support", "explicit"]):
        journeys += generate(
            per_kind * 3, start_ms=start_ms, spread_ms=500, windows=SHAPE, seed=seed + n,
            kinds={kind: 1.0},
        )
    return journeys


def decisions(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 60
) -> list[dict[str, Any]]:
    return [
        orjson.loads(r.value)
        for r in asyncio.run(read_topic(bootstrap, topic, expected=expected, timeout_s=timeout_s))
    ]


def collect(
    bootstrap: str, topic: str, journeys: list[Journey], timeout_s: float = 90
) -> list[dict[str, Any]]:
    """The outbox, read again until every intended rating is on it (or the time is up, and
    the caller's assertion says what is missing). For scenarios whose workers come and go,
    where no single worker's metrics can say that all is done."""
    wanted = {key for key, rating in expected_ratings(journeys).items() if rating is not None}
    deadline = time.monotonic() + timeout_s
    while True:
        found = decisions(bootstrap, topic, 0, timeout_s=10)
        have = {(d["request_id"] or d["session_id"], d["rule"]) for d in found}
        if wanted <= have or time.monotonic() > deadline:
            return found
        time.sleep(1)


def settled(
    workers: list[WorkerProcess], *, events: int, timeout_s: float = 90
) -> int:
    """Wait until the group counted ``events`` events, has no open window, and its decision
    count held still for two seconds; return that count (decisions written, all workers)."""
    deadline = time.monotonic() + timeout_s
    last, since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        counted = sum(w.metric_sum("feedback_events_total") for w in workers)
        open_windows = sum(w.metric_sum("feedback_windows_open") for w in workers)
        decided = sum(w.metric_sum("feedback_decisions_total") for w in workers)
        if decided != last:
            last, since = decided, time.monotonic()
        if counted >= events and open_windows == 0 and time.monotonic() - since > 2:
            return int(decided)
        time.sleep(0.25)
    logs = "\n".join(w.logs()[-3000:] for w in workers)
    raise AssertionError(f"not settled: events {counted}/{events}, open {open_windows}\n{logs}")


def assert_matches(journeys: list[Journey], found: list[dict[str, Any]]) -> None:
    """Every intended rating is there exactly once; no rating appears where none is intended."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for d in found:
        by_key.setdefault((d["request_id"] or d["session_id"], d["rule"]), []).append(d)
    for (request_id, rule), rating in expected_ratings(journeys).items():
        got = by_key.get((request_id, rule), [])
        ids = {d["decision_id"] for d in got}
        assert len(ids) <= 1, f"{rule} decided twice for {request_id}"
        if rating is None:
            assert all(d["rating"] is None for d in got), f"{rule}: unexpected rating"
        else:
            assert got, f"{rule}: no decision for {request_id}"
            assert got[0]["rating"] is rating, f"{rule} for {request_id}: {got[0]['signals']}"


def comparable(found: list[dict[str, Any]]) -> list[bytes]:
    """Decisions without decided_at (the only field allowed to differ), deduplicated."""
    return sorted({orjson.dumps({k: v for k, v in d.items() if k != "decided_at"},
                                option=orjson.OPT_SORT_KEYS) for d in found})


def expected_count(journeys: list[Journey]) -> int:
    return sum(1 for j in journeys for r in j.expected.values() if r is not None)


def test_every_rule_end_to_end(
    kafka_bootstrap: str, topics: TestTopics, worker_factory: Any
) -> None:
    worker: WorkerProcess = worker_factory(**SHORT_WINDOWS)
    journeys = all_kinds(int(time.time() * 1000) - 1_000)
    worker.wait_ready()
    records = records_of(journeys)
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, records))
    # No event follows the last ones: those windows close on the idle timer.
    written = settled([worker], events=len(records))
    found = decisions(kafka_bootstrap, topics.outbox, written)
    assert_matches(journeys, found)
    rules = Counter(d["rule"] for d in found if d["rating"] is not None)
    assert set(rules) >= {"engagement", "code_suggestion", "search_clicks",
                          "ticket_resolution", "explicit"}
    metrics = worker.metrics()
    assert sum(v for (n, _), v in metrics.items() if n == "feedback_decisions_total") == len(
        {d["decision_id"] for d in found}
    )


def test_shuffled_within_grace_and_replayed_give_identical_decisions(
    kafka_bootstrap: str, topics: TestTopics, worker_factory: Any
) -> None:
    """Historical input (event times an hour ago): windows close on stream time while the
    stream flows and on the idle timer at its end; neither may change what is decided."""
    start = int(time.time() * 1000) - 3_600_000
    journeys: list[Journey] = []
    for offset in range(0, 60_000, 4_000):  # answers spread over a minute of event time
        journeys += all_kinds(start + offset, per_kind=1, seed=offset)
    sorted_records = records_of(journeys)
    rng = random.Random(11)
    # Shuffle within grace (1 s): sort by event time plus a random delay below the grace.
    def arrival(record: tuple[bytes, bytes]) -> float:
        occurred = datetime.fromisoformat(orjson.loads(record[1])["occurred_at"])
        return occurred.timestamp() * 1000 + rng.randrange(0, 900)

    shuffled = sorted(sorted_records, key=arrival)
    assert shuffled != sorted_records
    other = make_topics()

    first: WorkerProcess = worker_factory(**SHORT_WINDOWS)
    second: WorkerProcess = worker_factory(**SHORT_WINDOWS, **other.env())
    first.wait_ready()
    second.wait_ready()
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, sorted_records, partition=None))
    asyncio.run(produce(kafka_bootstrap, other.ui_events, shuffled))
    n = settled([first], events=len(sorted_records))
    assert settled([second], events=len(shuffled)) == n
    from_sorted = decisions(kafka_bootstrap, topics.outbox, n)
    from_shuffled = decisions(kafka_bootstrap, other.outbox, n)
    assert_matches(journeys, from_sorted)
    assert comparable(from_sorted) == comparable(from_shuffled)

    # Replay: a fresh worker (new group, no state) reads the same input topic again.
    replay = make_topics()
    env = {**replay.env(), "TOPIC_UI_EVENTS": topics.ui_events}
    third: WorkerProcess = worker_factory(**SHORT_WINDOWS, **env)
    third.wait_ready()
    assert settled([third], events=len(sorted_records)) == n
    from_replay = decisions(kafka_bootstrap, replay.outbox, n)
    assert comparable(from_replay) == comparable(from_sorted)


def test_late_events_go_to_the_late_topic_and_change_nothing(
    kafka_bootstrap: str, topics: TestTopics, worker_factory: Any
) -> None:
    worker: WorkerProcess = worker_factory(**SHORT_WINDOWS)
    now = int(time.time() * 1000)
    journey = generate(1, start_ms=now - 1_000, spread_ms=1, windows=SHAPE, seed=5,
                       kinds={"code": 1.0})[0]
    # deterministic search for a satisfied one with no thumbs and no retention report
    while journey.intent != "satisfied" or set(journey.expected) != {"code_suggestion"}:
        journey = generate(1, start_ms=now - 1_000, spread_ms=1, windows=SHAPE,
                           seed=random.randrange(10**6), kinds={"code": 1.0})[0]
    worker.wait_ready()
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, records_of([journey])))
    first = decisions(kafka_bootstrap, topics.outbox, 1)
    assert [d["rating"] for d in first] == [True]

    # A rejection inside the (now closed) window arrives late: it must not reopen it.
    late = {
        "event_id": "6a1f0c3e-9b7d-4c2a-8e5f-1d2c3b4a5f60", "type": "suggestion_rejected",
        "request_id": journey.request_id, "occurred_at": iso(journey.start_ms + 100),
    }
    # A newer event on the same partition moves stream time past the window first.
    asyncio.run(produce(kafka_bootstrap, topics.ui_events,
                        [(journey.request_id.encode(), orjson.dumps(late))]))
    late_records = asyncio.run(read_topic(kafka_bootstrap, topics.late, expected=1))
    assert [orjson.loads(r.value)["event_id"] for r in late_records] == [late["event_id"]]
    assert orjson.loads(late_records[0].value)["reason"] == "window_closed"
    worker.wait_metric("feedback_events_late_total", lambda v: v == 1)
    again = decisions(kafka_bootstrap, topics.outbox, 2, timeout_s=4)
    assert comparable(again) == comparable(first)


def test_unkeyed_events_in_a_backlog_reach_their_windows_in_time(
    kafka_bootstrap: str, topics: TestTopics, worker_factory: Any
) -> None:
    """A backlog (the worker starts after half a minute of events was published), a third
    of the journeys sent without a key.  Their events take the rekeyed topic's detour while
    the keyed ones arrive directly and drive stream time ahead; the sources' watermarks must
    hold stream time back until the detour has delivered them, so none is late and every
    window decides as its journey meant (worker.windows.watermarks)."""
    start = int(time.time() * 1000) - 60_000
    journeys = generate(150, start_ms=start, spread_ms=30_000, windows=SHAPE, seed=21,
                        kinds={"chat": 1, "code": 1, "search": 1})
    unkeyed = {j.request_id for j in journeys[::3]}
    records = [(None if rid.decode() in unkeyed else rid, value)
               for rid, value in records_of(journeys)]
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, records))
    worker: WorkerProcess = worker_factory(**SHORT_WINDOWS)
    worker.wait_ready()
    written = settled([worker], events=len(records))
    assert worker.metric_sum("feedback_events_rekeyed_total") > 0
    late = asyncio.run(read_topic(kafka_bootstrap, topics.late, expected=0, timeout_s=3))
    assert [orjson.loads(r.value)["reason"] for r in late] == []
    assert worker.metric_sum("feedback_events_late_total") == 0
    assert_matches(journeys, decisions(kafka_bootstrap, topics.outbox, written))


@pytest.mark.parametrize("keep_state", [True, False], ids=["with-state", "without-state"])
def test_sigkill_with_open_windows_loses_none_and_decides_once(
    kafka_bootstrap: str, topics: TestTopics, worker_factory: Any, tmp_path: Any,
    keep_state: bool,
) -> None:
    # The windows must outlive the restart (the dead member's session timeout, a rebalance and
    # recovery: about 20 s on Tansu), or they would close on the wall clock before the second
    # half of each journey arrives and that half would rightly be late.
    settings = {**SHORT_WINDOWS, **ONE_RECORD_PER_BATCH, "ENGAGEMENT_WINDOW_S": "35",
                "CODE_WINDOW_S": "35", "CLICKS_WINDOW_S": "35", "TICKET_WINDOW_S": "35"}
    shape = Windows(engagement_ms=35_000, code_ms=35_000, clicks_ms=35_000, ticket_ms=35_000)
    state = tmp_path / "state"
    worker: WorkerProcess = worker_factory(state_dir=state, **settings)
    now = int(time.time() * 1000)
    journeys = generate(30, start_ms=now - 500, spread_ms=1_000, windows=shape, seed=9,
                        kinds={"chat": 1, "code": 1, "search": 1, "support": 1})
    # Only the first half of each journey now, the rest after the crash.
    first_half = [(j, j.events[: max(1, len(j.events) // 2)]) for j in journeys]
    second_half = [(j, j.events[max(1, len(j.events) // 2):]) for j in journeys]
    worker.wait_ready()
    batch1 = [(j.request_id.encode(), orjson.dumps(e)) for j, es in first_half for e in es]
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, batch1))
    worker.wait_metric("feedback_events_total", lambda v: v == len(batch1))
    time.sleep(3.5)  # past one offset-commit interval (2.8 s), so the crash is mid-stream
    worker.kill()

    if not keep_state:
        import shutil
        shutil.rmtree(state, ignore_errors=True)
    restarted: WorkerProcess = worker_factory(state_dir=state, **settings)
    restarted.wait_ready()
    batch2 = [(j.request_id.encode(), orjson.dumps(e)) for j, es in second_half for e in es]
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, batch2))
    found = collect(kafka_bootstrap, topics.outbox, journeys)
    # Each window decided exactly once; a decision written twice after the crash (at least
    # once) carries the same decision_id, which is what delivery dedupes on.
    assert_matches(journeys, found)


def test_workers_joining_and_leaving_lose_no_window(
    kafka_bootstrap: str, topics: TestTopics, worker_factory: Any
) -> None:
    settings = {**SHORT_WINDOWS, **ONE_RECORD_PER_BATCH, "ENGAGEMENT_WINDOW_S": "6",
                "CODE_WINDOW_S": "6", "CLICKS_WINDOW_S": "6", "TICKET_WINDOW_S": "6",
                "IDLE_CLOSE_S": "3"}
    shape = Windows(engagement_ms=6_000, code_ms=6_000, clicks_ms=6_000, ticket_ms=6_000)
    a: WorkerProcess = worker_factory(**settings)
    b: WorkerProcess = worker_factory(**settings)
    a.wait_ready()
    b.wait_ready()
    journeys: list[Journey] = []

    def send_wave(seed: int) -> None:
        wave = generate(20, start_ms=int(time.time() * 1000) - 200, spread_ms=400,
                        windows=shape, seed=seed,
                        kinds={"chat": 1, "code": 1, "search": 1, "support": 1})
        journeys.extend(wave)
        asyncio.run(produce(kafka_bootstrap, topics.ui_events, records_of(wave)))

    send_wave(1)
    c: WorkerProcess = worker_factory(**settings)  # a third joins while windows are open
    c.wait_ready()
    send_wave(2)
    a.stop()  # one leaves cleanly while windows are open
    send_wave(3)
    found = collect(kafka_bootstrap, topics.outbox, journeys, timeout_s=120)
    assert_matches(journeys, found)
