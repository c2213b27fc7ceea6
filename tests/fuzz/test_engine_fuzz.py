"""The pure pipeline under generated streams: validation, the recent-id dedupe and one
:class:`~worker.windows.WindowEngine` per partition, with a :class:`~worker.clock.FakeClock`.

The same streams and the same bookkeeping (tests/fuzz/accounting.py) as the broker-level fuzz
test, without Kafka: fast, so Hypothesis runs many examples and shrinks what fails.  After
the stream, the wall clock moves on past every window and each engine gets a tick (idle
close), as the worker's timer would: then no window may be open and every record must be
accounted for.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings

from tests.fuzz import strategies as fz
from tests.fuzz.accounting import SentRecord, account
from worker.clock import FakeClock
from worker.envelopes import invalid_record
from worker.events import Decision
from worker.partitioner import partition_for
from worker.rules import RuleConfig
from worker.validation import Accepted, Invalid, RecentIds, ValidationLimits, inspect_record
from worker.windows import DictStore, Outcome, WindowEngine

PARTITIONS = 4
LIMITS = ValidationLimits()
BASE_MS = int(datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp() * 1000)
#: As the broker-level fuzz worker is configured (tests/fuzz/test_pipeline_fuzz.py).
CONFIG = RuleConfig(
    engagement_window_ms=3_000,
    code_window_ms=2_000,
    clicks_window_ms=3_000,
    ticket_window_ms=4_000,
    long_read_ms=2_000,
    short_read_ms=500,
    quick_exit_ms=1_000,
)
GRACE_MS = 1_000
IDLE_CLOSE_MS = 2_000


@settings(
    max_examples=40,
    deadline=None,
    derandomize=fz.DERANDOMIZE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example],
)
@given(fz.streams(clocks=fz.Clocks(base_ms=BASE_MS), min_records=100, max_records=200))
def test_every_record_is_accounted_for_by_the_pure_pipeline(stream: fz.Stream) -> None:
    clock = FakeClock(BASE_MS)
    engines = [
        WindowEngine(DictStore(), config=CONFIG, grace_ms=GRACE_MS,
                     idle_close_ms=IDLE_CLOSE_MS, max_signals=200, clock=clock)
        for _ in range(PARTITIONS)
    ]
    recent = RecentIds(100_000)
    sent: list[SentRecord] = []
    invalid_docs: list[dict[str, Any]] = []
    late_docs: list[dict[str, Any]] = []
    decisions: list[Decision] = []
    duplicates = 0

    def collect(outcome: Outcome) -> None:
        decisions.extend(outcome.decisions)
        late_docs.extend({"event_id": late.event_id, "reason": late.reason}
                         for late in outcome.late)

    for offset, record in enumerate(stream.records):
        partition = record.partition or 0
        sent.append(SentRecord(partition, offset, record.timestamp_ms, record.key,
                               record.value, record.kind))
        result = inspect_record(record.value, record_ts_ms=record.timestamp_ms,
                                now_ms=BASE_MS, limits=LIMITS)
        if isinstance(result, Invalid):
            invalid_docs.append(orjson.loads(invalid_record(
                result, value=record.value, key=record.key, topic="in", partition=partition,
                offset=offset, record_ts_ms=record.timestamp_ms,
                max_value_bytes=LIMITS.max_event_bytes,
            )))
            continue
        assert isinstance(result, Accepted)
        if recent.seen(result.event.event_id):
            duplicates += 1
            continue
        owner = partition_for(result.key.encode(), PARTITIONS)
        outcome = engines[owner].process(result)
        assert outcome.duplicates == 0, "ingest's recent ids catch every duplicate here"
        collect(outcome)

    clock.advance(3_600)  # the stream went quiet: idle close settles everything
    for engine in engines:
        collect(engine.tick())

    open_windows = {rule: n for e in engines for rule, n in e.windows_open.items() if n}
    assert not open_windows, f"windows still open after idle close: {open_windows}"
    ledger = account(sent, input_topic="in", now_ms=BASE_MS, limits=LIMITS,
                     invalid_docs=invalid_docs, late_docs=late_docs, decisions=decisions)
    assert not ledger.problems, "\n".join(ledger.problems)
    if decisions:  # the bookkeeping is not vacuous: without the outbox, records go missing
        blind = account(sent, input_topic="in", now_ms=BASE_MS, limits=LIMITS,
                        invalid_docs=invalid_docs, late_docs=late_docs, decisions=[])
        assert blind.problems
    assert ledger.duplicates == duplicates
    assert len({d.decision_id for d in decisions}) == len(decisions)
