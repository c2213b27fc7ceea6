"""Waiting evidence properties outlive the process (:mod:`worker.evidence_store`).

The engine runs without Faust (:class:`~tests.fixtures.delivery.EngineHarness`: dict tables,
a FakeClock, retry-topic records fed back by ``pump``); a "restart" is a second harness over
the same tables and clock, with nothing else carried over.  Nothing sleeps.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from tests.fixtures.delivery import EngineHarness, make_decision
from worker.clock import FakeClock
from worker.envelopes import KIND_HEADER, header
from worker.events import Decision, Evidence
from worker.evidence import RULE_PROPERTY, SIGNALS_PROPERTY, Pending
from worker.evidence_sender import EvidenceConfig, PropertySender
from worker.evidence_store import PROPERTY_KIND, PendingStore, decode, encode
from worker.helicone import HeliconeClient

OK = {"data": None, "error": None}
NOT_FOUND = {"data": None, "error": "Request not found"}
#: Not-found waits of 1, 2.5 and 6.25 s.
HORIZON_S = 10.0


class Wire:
    """What reached 'Helicone'; property calls answered by ``property_answer``."""

    def __init__(self, property_answer: Callable[[], httpx.Response]) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.property_answer = property_answer

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.url.path, orjson.loads(request.content)))
        if request.url.path.endswith("/property"):
            return self.property_answer()
        return httpx.Response(201, json=OK)

    def properties(self) -> list[tuple[str, str]]:
        return [(b["key"], b["value"]) for path, b in self.calls if path.endswith("/property")]


def ok() -> httpx.Response:
    return httpx.Response(200, json=OK)


def not_found() -> httpx.Response:
    return httpx.Response(500, json=NOT_FOUND)


def worker(
    wire: Wire, clock: FakeClock, states: dict[bytes, bytes], evidence: dict[bytes, bytes]
) -> EngineHarness:
    """One worker process: the engine, its evidence lane and the store over ``evidence``;
    ``property`` records go to the lane as the deliver agent routes them."""
    harness = EngineHarness(
        transport=httpx.MockTransport(wire.handler), clock=clock, states=states,
        rate_per_s=1000.0, max_attempts=5, max_age_s=3600.0,
        backoff_base_s=1.0, backoff_cap_s=60.0,
    )
    poster = harness.delivery.poster
    assert isinstance(poster, HeliconeClient)
    store = PendingStore(
        evidence, harness._send, retry_topic="retry", partitions=harness.partitions,
        linger_s=0.0,
    )
    sender = PropertySender(
        harness.delivery, poster,
        EvidenceConfig(enabled=True, not_found_horizon_s=HORIZON_S, concurrency=2), store,
    )
    harness.delivery.properties = sender
    on_retry = harness.delivery.on_retry

    async def route(**record: Any) -> None:
        if header(record["headers"], KIND_HEADER) == PROPERTY_KIND:
            sender.apply(record["value"], record["partition"])
        else:
            await on_retry(**record)

    harness.delivery.on_retry = route  # type: ignore[method-assign]
    return harness


def rated(rule: str = "engagement", request_id: str | None = None, minutes: int = 0) -> Decision:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    decision = make_decision(rule=rule, request_id=request_id, decided_at=at)
    copied = Evidence(event_id="e1", type="response_copied", event_time=at)
    return decision.model_copy(update={"signals": [copied]})


def entries(evidence: dict[bytes, bytes]) -> dict[str, Pending]:
    return {key.decode().split("/", 1)[1]: decode(raw) for key, raw in evidence.items()}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(t_ms=1_800_000_000_000)


async def test_waiting_properties_survive_a_restart_and_resume_their_schedule(
    clock: FakeClock,
) -> None:
    """Helicone has not logged the request: the first property call is answered "Request
    not found" and due again 1 s later.  The process ends; a new one over the same tables
    restores the entry, waits out the rest of that second (not a fresh schedule, not at
    once), then sets both properties and deletes the entry.  The rating is not sent again."""
    states: dict[bytes, bytes] = {}
    evidence: dict[bytes, bytes] = {}
    before = worker(Wire(not_found), clock, states, evidence)
    decision = rated()
    rid = decision.request_id
    assert rid is not None
    await before.publish(decision)
    assert entries(evidence)[rid].due_ms == clock.now_ms()  # durable before the ack
    start = clock.now_ms()
    await before.advance(0.5)
    saved = entries(evidence)[rid]
    assert saved.not_found == 1
    assert start + 1_000 <= saved.due_ms <= start + 1_500  # one 1 s wait after the answer
    before.delivery.properties.cancel()  # type: ignore[union-attr]  # killed: no goodbye

    wire = Wire(ok)
    after = worker(wire, clock, states, evidence)
    after.delivery.rebuild(list(states.items()), set(range(after.partitions)))
    sender = after.delivery.properties
    assert sender is not None
    assert sender.restore(list(evidence.items()), set(range(after.partitions))) == 1
    await after.advance((saved.due_ms - clock.now_ms() - 100) / 1000)
    assert wire.calls == []  # still inside the saved wait
    await after.advance(0.2)
    assert wire.properties() == [(RULE_PROPERTY, "engagement"), (SIGNALS_PROPERTY, "copied")]
    assert not any(path.endswith("/score") for path, _ in wire.calls)
    assert evidence == {}
    await after.aclose()


async def test_a_restored_entry_counts_its_earlier_not_found_answers(clock: FakeClock) -> None:
    """Three "Request not found" answers before the restart: one more after it, and the
    properties are dropped, as without the restart (four answers in all)."""
    states: dict[bytes, bytes] = {}
    evidence: dict[bytes, bytes] = {}
    before = worker(Wire(not_found), clock, states, evidence)
    await before.publish(rated())
    await before.advance(4.0)  # answers at 0, 1 and 3.5 s
    (saved,) = entries(evidence).values()
    assert saved.not_found == 3
    before.delivery.properties.cancel()  # type: ignore[union-attr]

    wire = Wire(not_found)
    after = worker(wire, clock, states, evidence)
    sender = after.delivery.properties
    assert sender is not None
    sender.restore(list(evidence.items()), set(range(after.partitions)))
    await after.advance(2 * HORIZON_S)
    assert len(wire.properties()) == 1
    assert after.metric("feedback_property_dropped_total", reason="not_found") == 1
    assert evidence == {}
    await after.aclose()


async def test_a_late_record_writes_the_lanes_current_view_not_older_properties(
    clock: FakeClock,
) -> None:
    """A not-found answer's record is still on its way when an explicit thumbs replaces the
    properties: applying the record afterwards keeps the explicit ones in the table."""
    evidence: dict[bytes, bytes] = {}
    wire = Wire(not_found)
    harness = worker(wire, clock, {}, evidence)
    rid = str(uuid.uuid4())
    await harness.publish(rated("engagement", rid))
    await harness.advance(0.5)  # rating, then the first not-found (recorded)
    assert len(wire.properties()) == 1 and entries(evidence)[rid].not_found == 1
    clock.t_ms = entries(evidence)[rid].due_ms
    harness.delivery.dispatch()
    await harness.delivery.drain()  # the second not-found: its record is sent, not applied
    assert len(wire.properties()) == 2 and entries(evidence)[rid].not_found == 1
    await harness.publish(rated("explicit", rid))
    assert entries(evidence)[rid].properties[0] == (RULE_PROPERTY, "explicit")
    assert await harness.pump() >= 1
    saved = entries(evidence)[rid]
    assert saved.properties[0] == (RULE_PROPERTY, "explicit")
    assert saved.not_found == 2
    await harness.aclose()


async def test_after_a_rebalance_the_new_owner_resumes_and_the_old_owners_records_are_harmless(
    clock: FakeClock,
) -> None:
    """The partition moves while a property waits: the new owner restores it and sets both
    properties; the old owner still makes its own call, and its record, applied by the new
    owner, writes the new owner's view.  Helicone ends with both properties once (last write
    per key), and the table ends empty."""
    states: dict[bytes, bytes] = {}
    evidence: dict[bytes, bytes] = {}
    old_wire = Wire(not_found)
    old = worker(old_wire, clock, states, evidence)
    decision = rated()
    rid = decision.request_id
    assert rid is not None
    await old.publish(decision)
    await old.advance(0.5)  # the first "Request not found"
    saved = entries(evidence)[rid]

    new_wire = Wire(ok)
    new = worker(new_wire, clock, states, evidence)
    assert new.delivery.properties is not None
    assert new.delivery.properties.restore(list(evidence.items()), {old.owner(decision)}) == 1
    old_wire.property_answer = ok  # Helicone has logged the request meanwhile
    clock.t_ms = saved.due_ms
    old.delivery.dispatch()
    await old.delivery.drain()  # the old owner sets Feedback-Rule; its record goes out
    records = [r for r in old.sent[-1:] if header(r[4], KIND_HEADER) == PROPERTY_KIND]
    assert len(records) == 1
    new.delivery.properties.apply(records[0][2], old.owner(decision))
    assert entries(evidence)[rid].properties[0] == (RULE_PROPERTY, "engagement")  # new's view
    await new.advance(0.5)
    assert new_wire.properties() == [(RULE_PROPERTY, "engagement"), (SIGNALS_PROPERTY, "copied")]
    assert evidence == {}
    await old.aclose()
    await new.aclose()


async def test_restore_takes_only_the_owned_partitions_and_skips_unreadable_entries(
    clock: FakeClock,
) -> None:
    evidence: dict[bytes, bytes] = {}
    harness = worker(Wire(ok), clock, {}, evidence)
    store = harness.delivery.properties.store  # type: ignore[union-attr]
    assert store is not None
    saved = Pending((0, 1, 1, "d"), ((RULE_PROPERTY, "engagement"),), clock.now_ms())
    ids = [str(uuid.uuid4()) for _ in range(40)]
    for rid in ids:
        evidence[f"{store.partition_of(rid)}/{rid}".encode()] = encode(saved)
    evidence[b"0/broken"] = b"{not json"
    evidence[b"no-partition"] = encode(saved)
    sender = harness.delivery.properties
    assert sender is not None
    owned = {0, 1}
    restored = sender.restore(list(evidence.items()), owned)
    assert restored == sum(1 for rid in ids if store.partition_of(rid) in owned)
    assert 0 < restored < len(ids)
    assert len(sender.lane) == restored
    await harness.aclose()


def test_an_entry_is_stored_as_it_was_saved() -> None:
    saved = Pending(
        (1, 2, 3, "id"), ((RULE_PROPERTY, "explicit"), (SIGNALS_PROPERTY, "thumbs_up")),
        1_800_000_000_000, not_found=2, attempts=1, first_failed_ms=1_799_999_999_000,
    )
    assert decode(encode(saved)) == saved


def test_the_tables_changelog_is_planned_co_partitioned_only_with_the_option() -> None:
    from worker.config import Settings
    from worker.kafka import changelog_topic_name, topic_plan

    on = Settings(helicone_evidence_properties=True)
    name = changelog_topic_name(on, "evidence-properties")
    (planned,) = [t for t in topic_plan(on) if t.name == name]
    assert planned.copartitioned and planned.partitions == on.topic_partitions
    assert planned.config == {"cleanup.policy": "compact"}
    assert name not in {t.name for t in topic_plan(Settings())}
