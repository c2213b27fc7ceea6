"""WindowEngine.align: stream time waits for events that come the long way round.

Events a producer did not key by request id reach their partition forwarded from another
one, while the events that arrive directly drive stream time on.  The engine keeps stream time
at the floor the adapter passes; the adapter takes it from its sources' marks
(worker.windows.watermarks, whose own tests simulate the race).
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.rules.eventkit import (
    OTHER_REQUEST,
    T0,
    Run,
    comparable,
    drain,
    engine,
    ev,
    feed,
)
from tests.unit.table_ios import MemoryIO
from worker.agents.windows import Windows
from worker.clock import FakeClock
from worker.devtools.traffic import generate
from worker.events import UI_EVENT_ADAPTER
from worker.metrics import Metrics
from worker.producing import Headers
from worker.rules import RuleConfig
from worker.validation import Accepted
from worker.windows.watermarks import SourceMark


def test_a_floor_keeps_a_forwarded_signal_in_its_window() -> None:
    shown = ev("suggestion_shown", 0)
    accepted = ev("suggestion_accepted", 5_000)  # forwarded: arrives after the others
    direct = [ev("response_shown", t, request_id=OTHER_REQUEST) for t in (10_000, 60_000)]

    without = feed(engine(), [shown, *direct, accepted])
    assert [late.reason for late in without.late] == ["window_closed"]

    eng = engine()
    run = Run()
    run.add(eng.process(shown))
    run.add(eng.align(T0 + 5_000))  # the forwarded event's source is at +5 s
    feed(eng, direct, run)
    feed(eng, [accepted], run)
    assert run.late == [] and run.decisions == []  # nothing closed past the floor
    run.add(eng.align(None))  # the source caught up
    assert [(d.rule, d.rating) for d in run.decisions] == [("code_suggestion", True)]


def test_stream_time_never_moves_back() -> None:
    eng = engine()
    run = feed(eng, [
        ev("suggestion_shown", 0),
        ev("suggestion_accepted", 5_000),
        ev("response_shown", 60_000, request_id=OTHER_REQUEST),
    ])
    assert [d.rule for d in run.decisions] == ["code_suggestion"]
    assert eng.align(T0 + 1_000).decisions == []  # below stream time: keeps it, no reopening
    assert eng.stream_time_ms == T0 + 60_000
    again = eng.process(ev("suggestion_accepted", 6_000))
    assert again.decisions == [] and [late.reason for late in again.late] == ["window_closed"]


def test_idle_close_waits_for_what_may_still_arrive() -> None:
    clock = FakeClock(T0)
    eng = engine(clock=clock, idle_close_ms=1_000)
    feed(eng, [ev("suggestion_shown", 0), ev("suggestion_accepted", 5_000)])
    clock.advance(60)
    assert eng.tick(caught_up=False).decisions == []  # silence here proves nothing
    # Everything read before +0.5 s has arrived: silence since then is not a second long.
    assert eng.tick(caught_up=True, until_ms=T0 + 500).decisions == []
    # Read before +40 s: the window (30 s + 5 s grace) ended in the silence.
    assert [d.rule for d in eng.tick(caught_up=True, until_ms=T0 + 40_000).decisions] == [
        "code_suggestion"
    ]


def _accepted(document: dict[str, object], t: int) -> Accepted:
    return Accepted(UI_EVENT_ADAPTER.validate_json(orjson.dumps(document)), t)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), forwarded_share=st.floats(0.1, 0.9),
       max_delay=st.integers(1, 400))
def test_delayed_forwarded_events_decide_as_if_all_came_in_order(
    seed: int, forwarded_share: float, max_delay: int
) -> None:
    """Journeys whose requests are either direct or forwarded; every forwarded event is
    delayed by up to ``max_delay`` positions (the forwarded path keeps its own order), and
    the floor is the time of the earliest forwarded event still on its way.  Nothing may be
    late that is not late in time order, and the decisions must be those of time order."""
    rng = random.Random(seed)
    journeys = generate(40, start_ms=T0, spread_ms=120_000, seed=seed)
    pairs = [(j.request_id, e) for j in journeys for e in j.events]
    timed = sorted((_ms(e), i, e, rid) for i, (rid, e) in enumerate(pairs))
    forwarded = {j.request_id for j in journeys if rng.random() < forwarded_share}
    events = [(t, _accepted(e, t), rid in forwarded) for t, _, e, rid in timed]

    in_order = engine()
    reference = drain(in_order, feed(in_order, [a for _, a, _ in events]))

    # Arrival order: direct events in time order; each forwarded one later by up to max_delay.
    slots = [(pos + (rng.randint(0, max_delay) if fwd else 0), pos, fwd)
             for pos, (_, _, fwd) in enumerate(events)]
    order = [pos for _, pos, _ in sorted(slots)]
    fwd_positions = [pos for pos in order if events[pos][2]]
    # The forwarded path keeps its order: its slots go to its events in time order.
    fwd_iter = iter(sorted(fwd_positions))
    order = [next(fwd_iter) if events[pos][2] else pos for pos in order]

    eng = engine()
    run = Run()
    on_the_way = sorted(pos for pos in order if events[pos][2])  # forwarded, in time order
    delivered = 0  # forwarded events delivered so far: they arrive in that same order
    for pos in order:
        floor = events[on_the_way[delivered]][0] if delivered < len(on_the_way) else None
        run.add(eng.align(floor))
        run.add(eng.process(events[pos][1]))
        delivered += events[pos][2]
    run.add(eng.align(None))
    drain(eng, run)
    assert sorted(le.event_id for le in run.late) == sorted(le.event_id for le in reference.late)
    assert comparable(run.decisions) == comparable(reference.decisions)


def _ms(event: dict[str, object]) -> int:
    return int(datetime.fromisoformat(str(event["occurred_at"])).timestamp() * 1000)


# --------------------------------------------------------------------------- the adapter


class _Outbox:
    """A producer whose records are acknowledged at once; it keeps the outbox's values."""

    def __init__(self, sent: list[bytes]) -> None:
        self.sent = sent

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, *,
        partition: int | None = None, headers: Headers | None = None,
    ) -> asyncio.Future[None]:
        if topic == "outbox" and value is not None:
            self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _adapter(clock: FakeClock, io: MemoryIO[str], sent: list[bytes]) -> Windows:
    return Windows(
        io=io,  # type: ignore[arg-type]
        config=RuleConfig(), grace_ms=5_000, idle_close_ms=30_000, max_signals=200,
        clock=clock, metrics=Metrics(), producer=_Outbox(sent), outbox_topic="outbox",
        late_topic="late",
        sources=2,
    )


async def _ack() -> None:
    pass


async def _a_decided_journey_and_a_later_event(windows: Windows) -> None:
    """A code suggestion accepted at +2 s, then another request's event at +60 s: without a
    floor its window (30 s + 5 s grace) closes."""
    for accepted in (ev("suggestion_shown", 0), ev("suggestion_accepted", 2_000),
                     ev("response_shown", 60_000, request_id=OTHER_REQUEST)):
        await windows.on_event(0, accepted, _ack)


def test_the_adapter_keeps_stream_time_to_the_sources_marks() -> None:
    async def scenario() -> None:
        clock = FakeClock(T0 + 1_000)
        decided: list[bytes] = []
        windows = _adapter(clock, MemoryIO(), decided)
        await _a_decided_journey_and_a_later_event(windows)
        assert decided == []  # no mark yet: stream time stands still, whatever arrives directly
        clock.advance(0.001)
        now = int(clock.now_ms())
        await windows.on_watermark(
            0, {0: SourceMark(now), 1: SourceMark(now, T0 + 1_000)}, _ack, sent_ms=now
        )
        assert decided == []  # input partition 1 is behind, at +1 s
        await windows.on_watermark(0, {1: SourceMark(now - 2)}, _ack, sent_ms=now)
        assert decided == []  # it read an event before the last one here was seen
        await windows.on_watermark(0, {1: SourceMark(now)}, _ack, sent_ms=now)
        assert [orjson.loads(d)["rule"] for d in decided] == ["code_suggestion"]

    asyncio.run(scenario())


def test_watermarks_from_before_a_restart_are_ignored() -> None:
    async def scenario() -> None:
        clock = FakeClock(T0 + 1_000)
        decided: list[bytes] = []
        windows = _adapter(clock, MemoryIO(), decided)
        before = int(clock.now_ms()) - 1  # read again from the rekeyed topic's backlog
        marks = {0: SourceMark(before), 1: SourceMark(before)}
        await windows.on_watermark(0, marks, _ack, sent_ms=before)
        await _a_decided_journey_and_a_later_event(windows)
        assert decided == []  # still standing: nothing is known about the sources
        clock.advance(1)
        now = int(clock.now_ms())
        marks = {0: SourceMark(now), 1: SourceMark(now)}
        await windows.on_watermark(0, marks, _ack, sent_ms=now)
        assert len(decided) == 1

    asyncio.run(scenario())


def test_a_forwarded_event_passed_on_its_way_is_counted() -> None:
    """The invariant's check (worker.windows.watermarks): a forwarded event that finds stream
    time past both what the partition had seen when it was read and its own time is counted;
    one read after the partition saw that far is not."""

    async def scenario() -> None:
        clock = FakeClock(T0 + 1_000)
        windows = _adapter(clock, MemoryIO(), [])
        windows.sources = 0  # no floor: stream time follows the direct events freely
        read_ms = int(clock.now_ms())
        clock.advance(0.001)
        await _a_decided_journey_and_a_later_event(windows)  # stream time: +60 s
        late = ev("response_shown", 1_000, request_id=OTHER_REQUEST)
        windows.sources = 2
        await windows.on_event(0, late, _ack, read_ms=read_ms)
        assert windows.metrics.stream_time_overruns._value.get() == 1
        await windows.on_event(0, ev("response_shown", 2_000), _ack, read_ms=int(clock.now_ms()))
        assert windows.metrics.stream_time_overruns._value.get() == 1

    asyncio.run(scenario())
