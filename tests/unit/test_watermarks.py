"""worker.windows.watermarks: the pure functions behind a partition's floor, and a simulation of the
race between the direct path and the detour through the rekeyed topic.

The simulation runs the real :class:`~worker.windows.WindowEngine` of one partition ``P`` fed
by two input partitions: ``P`` itself (direct records) and ``S`` (records forwarded to ``P``).
Each source's worker queues forwarded records and marks in its own producer, in order; the
producers append to the rekeyed partition in any interleaving; ``P``'s rekeyed agent applies
that log whenever it gets to it.  Hypothesis chooses every interleaving of reads, routing,
marks, appends, applies and clock steps, and the invariant is checked after each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.rules.eventkit import OTHER_REQUEST, T0, engine, ev, new_id
from worker.clock import FakeClock
from worker.rules import RuleConfig
from worker.validation import Accepted
from worker.windows import WindowEngine
from worker.windows.watermarks import (
    STANDSTILL,
    Floor,
    SeenHistory,
    SourceMark,
    decode_marks,
    encode_marks,
    partition_floor,
    source_mark,
)

# --------------------------------------------------------------------------- SeenHistory


def test_seen_history_answers_what_was_seen_by_then() -> None:
    seen = SeenHistory(initial=10)
    assert seen.as_of(0) == 10  # before the first entry: what the partition had when built
    seen.record(100, 50)
    seen.record(100, 60)  # same millisecond: the later value counts
    seen.record(200, 55)  # not larger: nothing new was seen
    seen.record(150, 70)
    assert [seen.as_of(t) for t in (99, 100, 149, 150, 10_000)] == [10, 60, 60, 70, 70]
    seen.record(120, 80)  # the clock stepped back: recorded at the last time, never earlier
    assert [seen.as_of(t) for t in (149, 150)] == [60, 80]


@given(
    steps=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 1_000)), max_size=60),
    queries=st.lists(st.integers(0, 2_000), max_size=20),
    forget=st.integers(0, 2_000),
)
def test_seen_history_matches_a_plain_log(
    steps: list[tuple[int, int]], queries: list[int], forget: int
) -> None:
    seen = SeenHistory(initial=-1)
    log: list[tuple[int, int]] = []  # (wall, value), as recorded
    wall = best = 0
    for step, value in steps:
        wall += step
        seen.record(wall, value)
        best = max(best, value)
        log.append((wall, best))

    def plain(t: int) -> int:
        return max((v for w, v in log if w <= t), default=-1)

    assert [seen.as_of(q) for q in queries] == [plain(q) for q in queries]
    seen.forget_before(forget)
    later = [q for q in queries if q >= forget]
    assert [seen.as_of(q) for q in later] == [plain(q) for q in later]


# --------------------------------------------------------------------------- marks and floors


def test_a_mark_cuts_before_the_record_being_routed() -> None:
    assert source_mark(now_ms=500, routing_since_ms=None, backlog=0, stream_time=7) == (
        SourceMark(500, None)
    )
    assert source_mark(now_ms=500, routing_since_ms=480, backlog=0, stream_time=7).cut_ms == 480
    assert source_mark(now_ms=500, routing_since_ms=None, backlog=3, stream_time=7) == (
        SourceMark(500, 7)
    )
    assert source_mark(now_ms=500, routing_since_ms=None, backlog=None, stream_time=None) == (
        SourceMark(500, 0)  # nothing known yet: behind, at the start of time
    )


def test_the_floor_is_what_was_seen_before_the_earliest_cut() -> None:
    seen = SeenHistory(initial=0)
    for wall, value in ((100, 1_000), (200, 2_000), (300, 3_000)):
        seen.record(wall, value)
    marks = {0: SourceMark(301), 1: SourceMark(201)}
    assert partition_floor(marks, sources=2, seen_as_of=seen.as_of) == Floor(2_000, 201)
    marks[1] = SourceMark(200)  # an event read at 200 may be on its way: 2_000 came with it
    assert partition_floor(marks, sources=2, seen_as_of=seen.as_of) == Floor(1_000, 200)
    marks[1] = SourceMark(301, behind_ms=1_500)  # partition 1 has records left to read
    assert partition_floor(marks, sources=2, seen_as_of=seen.as_of) == Floor(1_500, None)


def test_the_floor_stands_still_until_every_source_has_a_mark() -> None:
    seen = SeenHistory(initial=0)
    assert partition_floor({}, sources=2, seen_as_of=seen.as_of) == Floor(STANDSTILL, None)
    one = {1: SourceMark(10)}
    assert partition_floor(one, sources=2, seen_as_of=seen.as_of) == Floor(STANDSTILL, None)
    assert STANDSTILL < T0  # below any stream time: keeps it where it is


def test_marks_round_trip_and_unreadable_ones_count_as_none() -> None:
    marks = {0: SourceMark(123, None), 5: SourceMark(456, 789)}
    assert decode_marks(encode_marks(marks)) == marks
    assert decode_marks(b'{"sources": {"0": null}}') == {}  # before cuts: keep waiting
    assert decode_marks(b"not json") == {}
    assert decode_marks(b'{"cuts": {"x": 1}, "sources": {}}') == {}
    assert decode_marks(None) == {}


# --------------------------------------------------------------------------- the race

P, S = 0, 1  # the owning partition (also a source of its own), and another source

Op = Literal["direct", "read", "queue", "mark", "append", "apply", "tick"]


@dataclass
class Forwarded:
    accepted: Accepted
    read_at: int
    #: The largest event time P had seen when S read it: P's stream time may not pass it
    #: while the record is on its way (or the record's own source's time, if larger).
    bound: int


#: On the rekeyed partition: a forwarded event, or (source, its mark).
Record = Forwarded | tuple[int, SourceMark]


@dataclass
class Race:
    clock: FakeClock
    engine: WindowEngine
    marks: dict[int, SourceMark] = field(default_factory=dict)
    routing: Forwarded | None = None  # read by S, not yet queued
    producers: dict[int, list[Record]] = field(default_factory=lambda: {P: [], S: []})
    log: list[Record] = field(default_factory=list)  # the rekeyed partition, unread part
    on_the_way: list[Forwarded] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    #: Forwarded events no newer than anything P had seen when they were read: judged at
    #: once, none of them could have been late.
    on_time: set[str] = field(default_factory=set)

    def now(self) -> int:
        return self.clock.now_ms()

    def floor(self) -> None:
        floor = partition_floor(self.marks, sources=2, seen_as_of=self.engine.seen_as_of)
        self.collect(self.engine.align(floor.stream_ms))

    def collect(self, outcome: object) -> None:
        self.late += [late.event_id for late in getattr(outcome, "late", [])]

    def step(self, op: Op, t: int) -> None:
        if op == "direct":  # P's own input: applied at once
            self.collect(self.engine.process(ev("response_shown", t, request_id=new_id())))
        elif op == "read" and self.routing is None:  # S reads an event owned by P
            accepted = ev("response_shown", t, request_id=new_id())
            seen = self.engine.seen_as_of(self.now())
            if seen <= accepted.event_time_ms:
                self.on_time.add(accepted.event.event_id)
            record = Forwarded(accepted, self.now(), seen)
            self.routing = record
            self.on_the_way.append(record)
        elif op == "queue" and self.routing is not None:
            self.producers[S].append(self.routing)
            self.routing = None
        elif op == "mark":  # both workers send their marks (S's cut respects its routing)
            routing = self.routing.read_at if self.routing is not None else None
            for source, since in ((P, None), (S, routing)):
                mark = source_mark(now_ms=self.now(), routing_since_ms=since, backlog=0,
                                   stream_time=None)
                self.producers[source].append((source, mark))
        elif op == "append":  # one producer's oldest record reaches the rekeyed partition
            producer = self.producers[P if t % 2 == 0 else S]
            if producer:
                self.log.append(producer.pop(0))
        elif op == "apply" and self.log:  # P's rekeyed agent gets to the next record
            item = self.log.pop(0)
            if isinstance(item, Forwarded):
                self.on_the_way.remove(item)
                self.collect(self.engine.process(item.accepted))
            else:
                source, mark = item
                self.marks[source] = mark
                self.floor()
        elif op == "tick":
            self.clock.advance(t / 1000)

    def check(self) -> None:
        stream_time = self.engine.stream_time_ms
        for record in self.on_the_way:
            limit = max(record.bound, record.accepted.event_time_ms)
            assert stream_time is None or stream_time <= max(limit, T0), (
                f"stream time {stream_time} passed {limit} of an event on its way"
            )


ops = st.lists(
    st.tuples(
        st.sampled_from(["direct", "read", "queue", "mark", "append", "apply", "tick"]),
        st.integers(0, 3_000),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(steps=ops)
def test_stream_time_never_passes_an_event_on_its_way(steps: list[tuple[Op, int]]) -> None:
    """Any interleaving: P's stream time stays within what it had seen when each forwarded
    event still on its way was read; no forwarded event is late; and once the marks sent
    after the last read are applied, stream time catches up with everything seen."""
    clock = FakeClock(T0)
    short = RuleConfig(engagement_window_ms=500)  # windows close within the run
    race = Race(clock, engine(clock=clock, grace_ms=200, config=short))
    race.engine.process(ev("response_shown", 0, request_id=OTHER_REQUEST))
    race.floor()  # as the adapter does when it builds the engine: STANDSTILL until marks arrive
    for op, t in steps:
        race.step(op, t)
        race.check()
    assert not race.on_time & set(race.late), "an event on time when read was judged late"
    # Drain: route, then twice advance the clock, mark, deliver and apply it all (the second
    # marks cut after the forwarded events that the first ones came behind were applied).
    race.step("queue", 0)
    for _ in range(2):
        race.step("tick", 1)
        race.step("mark", 0)
        for source in (P, S):
            race.log += race.producers[source]
            race.producers[source] = []
        while race.log:
            race.step("apply", 0)
            race.check()
    assert race.engine.stream_time_ms == race.engine.seen_as_of(race.now())
