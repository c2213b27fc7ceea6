"""worker.rebalance: the order Faust resumes, seeks and fetches in after a rebalance.

The Faust consumer here is a small stand-in with the same methods: what is tested is the
wrapping (which call is held, which passes, what is released when).  The real
thing runs in the join/leave chaos test (tests/chaos), which lost decisions without it.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from worker.rebalance import count_gaps, seek_before_fetch

INPUT = [TP("ui-events", 0), TP("ui-events", 1)]
CHANGELOG = TP("fw-windows-changelog", 0)


class FakeConsumer:
    def __init__(self) -> None:
        self.resumed: list[set[TP]] = []
        self.paused: list[set[TP]] = []
        self.assigned: set[TP] = {*INPUT, CHANGELOG}
        self.gaps: list[tuple[TP, int, int]] = []
        self.seeks = 0
        self.seek_gate: asyncio.Event | None = None

    def resume_partitions(self, tps: Any) -> None:
        self.resumed.append(set(tps))

    def pause_partitions(self, tps: Any) -> None:
        self.paused.append(set(tps))

    def assignment(self) -> set[TP]:
        return self.assigned

    async def perform_seek(self) -> None:
        if self.seek_gate is not None:
            await self.seek_gate.wait()
        self.seeks += 1

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        self.gaps.append((tp, offset_from, offset_to))


def fake_app() -> Any:
    return SimpleNamespace(
        consumer=FakeConsumer(),
        rebalancing=True,
        tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}),
    )


async def seek(app: Any) -> None:
    await app.consumer.perform_seek()


def test_stream_partitions_wait_for_the_seek_changelogs_do_not() -> None:
    app = fake_app()
    assert seek_before_fetch(app)
    consumer = app.consumer

    consumer.resume_partitions({CHANGELOG})  # recovery reads changelogs first
    consumer.resume_partitions({*INPUT, CHANGELOG})  # Faust: just before perform_seek
    assert consumer.resumed == [{CHANGELOG}, {CHANGELOG}]

    asyncio.run(seek(app))
    assert consumer.seeks == 1
    assert consumer.resumed[-1] == set(INPUT)  # resumed only once the seek is done

    asyncio.run(seek(app))  # nothing held any more: nothing resumed twice
    assert len(consumer.resumed) == 3


def test_a_seek_that_began_before_the_hold_does_not_release_it() -> None:
    app = fake_app()
    seek_before_fetch(app)
    consumer = app.consumer

    async def scenario() -> None:
        gate = asyncio.Event()
        consumer.seek_gate = gate
        early = asyncio.ensure_future(consumer.perform_seek())  # e.g. a fetch saw the flow stop
        await asyncio.sleep(0)
        consumer.resume_partitions(set(INPUT))
        gate.set()
        await early
        assert consumer.resumed == []  # that seek may not have covered them
        consumer.seek_gate = None
        await consumer.perform_seek()  # Faust's own, right after its resume
        assert consumer.resumed == [set(INPUT)]

    asyncio.run(scenario())


def test_a_new_rebalance_drops_what_the_previous_one_held() -> None:
    app = fake_app()
    seek_before_fetch(app)
    consumer = app.consumer
    consumer.resume_partitions(set(INPUT))  # its seek is then cancelled by a new rebalance
    consumer.pause_partitions(set(INPUT))  # the new rebalance pauses the whole assignment
    assert consumer.paused == [set(INPUT)]
    asyncio.run(seek(app))  # a seek before the new recovery resumes anything
    assert consumer.resumed == []
    consumer.resume_partitions({INPUT[0]})  # the new recovery's resume, then its seek
    asyncio.run(seek(app))
    assert consumer.resumed == [{INPUT[0]}]


def test_outside_a_rebalance_resuming_passes_straight_through() -> None:
    app = fake_app()
    seek_before_fetch(app)
    app.rebalancing = False
    app.consumer.resume_partitions(set(INPUT))
    assert app.consumer.resumed == [set(INPUT)]


def test_partitions_revoked_meanwhile_are_not_resumed() -> None:
    app = fake_app()
    seek_before_fetch(app)
    app.consumer.resume_partitions(set(INPUT))
    app.consumer.assigned = {INPUT[1]}  # another rebalance took partition 0 away
    asyncio.run(seek(app))
    assert app.consumer.resumed == [{INPUT[1]}]


def test_an_unknown_faust_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    app = SimpleNamespace(consumer=SimpleNamespace())
    with caplog.at_level(logging.WARNING, logger="worker.rebalance"):
        assert not seek_before_fetch(app)
    assert "cannot hold stream partitions" in caplog.text
    assert not count_gaps(app, lambda topic, missing: None)


def test_gaps_in_stream_partitions_are_counted_and_still_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = fake_app()
    counted: list[tuple[str, int]] = []
    assert count_gaps(app, lambda topic, missing: counted.append((topic, missing)))

    with caplog.at_level(logging.WARNING, logger="worker.rebalance"):
        # Faust's call when offset 55 arrives after read offset 43: 44..54 are missing.
        asyncio.run(app.consumer._add_gap(INPUT[0], 44, 55))
        asyncio.run(app.consumer._add_gap(CHANGELOG, 3, 5))

    assert counted == [("ui-events", 11)]  # changelog gaps are recovery's business
    assert "ui-events[0]: offsets 44..54 were never fetched" in caplog.text
    assert app.consumer.gaps == [(INPUT[0], 44, 55), (CHANGELOG, 3, 5)]
