"""worker.faust_compat.rebalance: the order Faust resumes, seeks and fetches in after a
rebalance, and what its fetch returns for partitions paused meanwhile.

The Faust consumer here is a small stand-in with the same methods: what is tested is the
wrapping (which call is kept back, which passes, what is released when).
tests/unit/test_compat_real.py installs the patches on Faust's real consumer, and the
join/leave chaos test (tests/chaos) runs them against a real broker.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from worker.errors import IncompatibleLibraryError
from worker.faust_compat.names import installed_versions
from worker.faust_compat.rebalance import count_gaps, keep_dropped_records, seek_before_fetch

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
    seek_before_fetch(app)
    consumer = app.consumer

    consumer.resume_partitions({CHANGELOG})  # recovery reads changelogs first
    consumer.resume_partitions({*INPUT, CHANGELOG})  # Faust: just before perform_seek
    assert consumer.resumed == [{CHANGELOG}, {CHANGELOG}]

    asyncio.run(seek(app))
    assert consumer.seeks == 1
    assert consumer.resumed[-1] == set(INPUT)  # resumed only once the seek is done

    asyncio.run(seek(app))  # nothing kept paused any more: nothing resumed twice
    assert len(consumer.resumed) == 3


def test_a_seek_that_began_before_the_resume_does_not_release_it() -> None:
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


def test_a_new_rebalance_drops_what_the_previous_one_kept_paused() -> None:
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


def test_an_unknown_faust_stops_the_worker_for_correctness_patches_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without the resume kept back or the hand-back commits may skip records: the worker must not
    start.  Without the gap count only a metric is missing: a warning."""
    app = SimpleNamespace(consumer=SimpleNamespace())
    with pytest.raises(IncompatibleLibraryError) as refused:
        seek_before_fetch(app)
    message = str(refused.value)
    assert "seek_before_fetch cannot install" in message
    assert "Consumer.perform_seek" in message and "App.rebalancing" in message
    assert "may commit past records" in message
    assert f"faust-streaming {installed_versions()['faust-streaming']}" in message
    assert "faust-streaming>=0.11,<0.16" in message  # pyproject's range
    with pytest.raises(IncompatibleLibraryError, match="keep_dropped_records cannot install"):
        keep_dropped_records(app)
    assert not hasattr(app.consumer, "_getmany")  # nothing was changed
    with caplog.at_level(logging.WARNING, logger="worker.faust_compat.rebalance"):
        assert not count_gaps(app, lambda topic, missing: None)
    assert "cannot be counted" in caplog.text


def test_gaps_in_stream_partitions_are_counted_and_still_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = fake_app()
    counted: list[tuple[str, int]] = []
    assert count_gaps(app, lambda topic, missing: counted.append((topic, missing)))

    with caplog.at_level(logging.WARNING, logger="worker.faust_compat.rebalance"):
        # Faust's call when offset 55 arrives after read offset 43: 44..54 are missing.
        asyncio.run(app.consumer._add_gap(INPUT[0], 44, 55))
        asyncio.run(app.consumer._add_gap(CHANGELOG, 3, 5))

    assert counted == [("ui-events", 11)]  # changelog gaps are recovery's business
    assert "ui-events[0]: offsets 44..54 were never fetched" in caplog.text
    assert app.consumer.gaps == [(INPUT[0], 44, 55), (CHANGELOG, 3, 5)]


class FakeAIOKafka:
    """aiokafka's consumer as the hand-back sees it: assignment, positions, seeks."""

    def __init__(self, positions: dict[TP, int]) -> None:
        self.positions = positions
        self.seeks: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return set(self.positions)

    async def position(self, tp: TP) -> int:
        return self.positions[tp]

    def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset


class FakeThread:
    def __init__(self, aiokafka: FakeAIOKafka) -> None:
        self.aiokafka = aiokafka
        self.calls = 0

    def _ensure_consumer(self) -> FakeAIOKafka:
        return self.aiokafka

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        self.calls += 1
        return await fun(*args)


def records(first: int, after: int) -> list[Any]:
    return [SimpleNamespace(offset=offset) for offset in range(first, after)]


def fetching_app(fetched: dict[TP, list[Any]], *, during: Any = None) -> Any:
    """A Faust consumer whose fetch returns ``fetched`` (and advances the positions past
    it), calling ``during(asked)`` while it waits, as Faust's rebalance does meanwhile."""
    aiokafka = FakeAIOKafka({tp: batch[-1].offset + 1 for tp, batch in fetched.items()})
    consumer = SimpleNamespace(_thread=FakeThread(aiokafka), _buffered_partitions=set(),
                               asked=[])

    async def _getmany(active_partitions: set[TP], timeout: float) -> dict[TP, list[Any]]:
        consumer.asked.append(active_partitions)
        if during is not None:
            during(active_partitions)
        return fetched

    consumer._getmany = _getmany
    app = SimpleNamespace(consumer=consumer)
    keep_dropped_records(app)
    return app


def test_records_of_a_partition_paused_during_the_fetch_are_handed_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    active = set(INPUT)
    app = fetching_app({INPUT[0]: records(41, 92), INPUT[1]: records(7, 9)},
                       during=lambda asked: active.discard(INPUT[0]))  # kept paused by a rebalance
    with caplog.at_level(logging.INFO, logger="worker.faust_compat.rebalance"):
        got = asyncio.run(app.consumer._getmany(active, 1.0))
    assert list(got) == [INPUT[1]]  # what Faust would drop is not passed on
    assert app.consumer._thread.aiokafka.seeks == [(INPUT[0], 41)]  # fetched again later
    assert "ui-events[0]: 51 fetched record(s) handed back" in caplog.text


def test_the_fetch_gets_its_own_copy_of_the_active_partitions() -> None:
    active = set(INPUT)
    app = fetching_app({INPUT[1]: records(0, 3)}, during=lambda asked: active.clear())
    asyncio.run(app.consumer._getmany(active, 1.0))
    (asked,) = app.consumer.asked
    assert asked == set(INPUT) and asked is not active  # Faust emptying its set meanwhile
    # would have made aiokafka fetch every partition ("no partitions" means "all")


def test_nothing_active_fetches_nothing() -> None:
    app = fetching_app({INPUT[0]: records(0, 3)})
    assert asyncio.run(app.consumer._getmany(set(), 1.0)) == {}
    assert app.consumer.asked == []


def test_a_partition_sought_meanwhile_keeps_the_position_of_the_seek() -> None:
    active = set(INPUT)

    def rebalance(asked: set[TP]) -> None:
        active.discard(INPUT[0])

    app = fetching_app({INPUT[0]: records(41, 92)}, during=rebalance)
    app.consumer._thread.aiokafka.positions[INPUT[0]] = 30  # the seek came after the drain
    assert asyncio.run(app.consumer._getmany(active, 1.0)) == {}
    assert app.consumer._thread.aiokafka.seeks == []


def test_revoked_and_buffered_partitions() -> None:
    active = set(INPUT)

    def rebalance(asked: set[TP]) -> None:
        active.clear()
        app.consumer._buffered_partitions.add(INPUT[1])  # Faust keeps a full buffer's records

    app = fetching_app({INPUT[0]: records(5, 8), INPUT[1]: records(2, 4)}, during=rebalance)
    del app.consumer._thread.aiokafka.positions[INPUT[0]]  # revoked: not assigned any more
    got = asyncio.run(app.consumer._getmany(active, 1.0))
    assert list(got) == [INPUT[1]]
    assert app.consumer._thread.aiokafka.seeks == []


def test_a_fetch_with_every_partition_still_active_goes_straight_through() -> None:
    app = fetching_app({INPUT[0]: records(0, 3)})
    got = asyncio.run(app.consumer._getmany(set(INPUT), 1.0))
    assert list(got) == [INPUT[0]] and app.consumer._thread.calls == 0


def test_the_cli_refuses_to_start_with_the_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """``feedback-worker run`` prints the error (no traceback) and exits 2."""
    from click.testing import CliRunner

    import worker.app
    import worker.kafka
    from worker.cli import main

    async def no_topics(settings: Any, **kwargs: Any) -> list[str]:
        return []

    def build_app(settings: Any, **kwargs: Any) -> Any:
        seek_before_fetch(SimpleNamespace(consumer=SimpleNamespace()))

    monkeypatch.setattr(worker.kafka, "ensure_topics", no_topics)
    monkeypatch.setattr(worker.app, "build_app", build_app)
    monkeypatch.setenv("FEEDBACK_DRY_RUN", "true")
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 2
    assert "feedback-worker: worker.faust_compat.rebalance.seek_before_fetch cannot install" in (
        result.output
    )
    assert "Traceback" not in result.output
