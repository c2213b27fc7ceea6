"""worker.faust_compat.bypass: a topic's records batched around Faust's conductor, and
handed to the topic's handler only while they belong to the current consumer generation.

The Faust app and consumer here are small stand-ins with the attributes the bypass uses:
what is tested is which records reach the handler, in which order, and what is
acknowledged.  tests/unit/test_compat_real.py installs the same loop on Faust's real
consumer, and every integration and chaos test reads the input topic through this path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from worker.faust_compat.bypass import BATCH_RECORDS, Bypass, install_bypass

INPUT = "ui-events"
OTHER = "fw-rekeyed"


def message(topic: str, partition: int, offset: int, generation: int = 1) -> Any:
    return SimpleNamespace(
        topic=topic, partition=partition, offset=offset, tp=TP(topic, partition),
        generation_id=generation,
    )


class FakeConsumer:
    """The parts of Faust's consumer the copied fetch loop and the bypass touch."""

    def __init__(self, fetches: list[list[Any]]) -> None:
        self.fetches = fetches
        self._read_offset: dict[TP, int | None] = defaultdict(lambda: None)  # as Faust's
        self._commit_every = None
        self._n_acked = 0
        self._stopped = asyncio.Event()
        self.should_stop = False
        self.suspend_flow = asyncio.Event()
        self.consumer_stopped_errors = ()
        self.delivered: list[Any] = []
        self.gaps: list[tuple[TP, int, int]] = []
        self.tracked: list[Any] = []
        self.acked: list[Any] = []

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        if not self.fetches:
            self._stopped.set()
            return
        for record in self.fetches.pop(0):
            yield record.tp, record

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def callback(self, record: Any) -> None:  # Faust's conductor
        self.delivered.append(record)

    async def wait_first(self, *coros: Any) -> None:
        await coros[0]
        coros[1].close()

    async def commit(self) -> None: ...

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        self.gaps.append((tp, offset_from, offset_to))

    def track_message(self, record: Any) -> None:
        self.tracked.append(record)

    def ack(self, record: Any) -> bool:
        self.acked.append(record)
        return True

    async def _drain_messages(self, fetcher: Any) -> None:
        raise AssertionError("Faust's own fetch loop must be replaced")


def fake_app(consumer: Any, *, generation: int = 1) -> Any:
    topics: list[Any] = []
    flow = SimpleNamespace(active=True)
    app = SimpleNamespace(
        consumer=consumer,
        consumer_generation_id=generation,
        flow_control=SimpleNamespace(is_active=lambda: flow.active),
        flow=flow,
        sensors=SimpleNamespace(out=[]),
        topics=SimpleNamespace(add=topics.append, added=topics, acks_enabled_for=lambda t: True),
        should_stop=False,
    )
    app.sensors.on_message_out = lambda tp, offset, record: app.sensors.out.append(offset)
    consumer.app = app
    consumer.transport = SimpleNamespace(app=app)
    return app


class FakeTopic:
    def __init__(self, name: str = INPUT) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


def input_topic() -> Any:
    return FakeTopic()


Handled = list[tuple[Any, Callable[[], Awaitable[None]]]]


def recording_handler(handled: Handled) -> Any:
    async def handler(record: Any, ack: Callable[[], Awaitable[None]]) -> None:
        handled.append((record, ack))

    return handler


def recorded(app: Any) -> tuple[Bypass, Handled]:
    """A bypass whose handler records what it is handed, and that record."""
    handled: Handled = []
    return Bypass(app, recording_handler(handled)), handled


async def drain(app: Any, *bypasses: Bypass) -> None:
    """Run the replaced fetch loop over the consumer's fetches, then the bypasses until
    their queues are empty."""
    runners = [asyncio.ensure_future(bypass.run()) for bypass in bypasses]
    await app.consumer._drain_messages(SimpleNamespace(_stopped=asyncio.Event()))
    while not all(bypass.queue.empty() for bypass in bypasses):
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    for runner in runners:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def test_input_records_reach_the_handler_in_order_and_others_the_conductor() -> None:
    records = [message(INPUT, 0, 0), message(OTHER, 0, 7), message(INPUT, 0, 1),
               message(INPUT, 1, 0)]
    consumer = FakeConsumer([records[:2], records[2:]])
    app = fake_app(consumer)
    bypass, handled = recorded(app)
    assert install_bypass(app, [(input_topic(), bypass)])
    assert app.topics.added  # subscribed, as an agent iterating it would

    asyncio.run(drain(app, bypass))

    assert [r.offset for r, _ in handled] == [0, 1, 0]
    assert [r.topic for r, _ in handled] == [INPUT] * 3
    assert consumer.delivered == [records[1]]  # the other topic: Faust's conductor, as before
    assert consumer.tracked == [r for r, _ in handled]  # pending an ack, for Faust's commits
    assert dict(consumer._read_offset) == {TP(INPUT, 0): 1, TP(OTHER, 0): 7, TP(INPUT, 1): 0}
    assert consumer.acked == []  # nothing is acknowledged before the handler says so

    asyncio.run(_awaited(handled[1][1]()))
    assert consumer.acked == [records[2]]
    assert app.sensors.out == [1]


def test_each_bypassed_topic_reaches_its_own_handler_in_order() -> None:
    """The rekeyed topic goes through a bypass too, of its own: its records never wait in
    Faust's conductor behind a full producer buffer, nor behind the input's handler."""
    records = [message(INPUT, 0, 0), message(OTHER, 3, 5), message(INPUT, 0, 1),
               message(OTHER, 3, 6)]
    consumer = FakeConsumer([records])
    app = fake_app(consumer)
    bypass, inputs = recorded(app)
    rekeyed, others = recorded(app)
    assert install_bypass(app, [(input_topic(), bypass), (FakeTopic(OTHER), rekeyed)])

    asyncio.run(drain(app, bypass, rekeyed))

    assert [(r.topic, r.offset) for r, _ in inputs] == [(INPUT, 0), (INPUT, 1)]
    assert [(r.topic, r.offset) for r, _ in others] == [(OTHER, 5), (OTHER, 6)]
    assert consumer.delivered == []  # nothing went through the conductor


def test_a_second_install_adds_its_topics_to_the_same_fetch_loop() -> None:
    """Streams and delivery install their topics separately; the second call must neither
    replace the first's routes nor wrap the replaced loop again."""
    records = [message(INPUT, 0, 0), message(OTHER, 3, 5)]
    consumer = FakeConsumer([records])
    app = fake_app(consumer)
    bypass, inputs = recorded(app)
    later, others = recorded(app)
    assert install_bypass(app, [(input_topic(), bypass)])
    loop = consumer._drain_messages
    assert install_bypass(app, [(FakeTopic(OTHER), later)])
    assert consumer._drain_messages is loop

    asyncio.run(drain(app, bypass, later))

    assert [r.offset for r, _ in inputs] == [0] and [r.offset for r, _ in others] == [5]
    assert consumer.delivered == []


def test_batches_are_bounded_and_keep_the_fetch_order() -> None:
    records = [message(INPUT, 0, offset) for offset in range(BATCH_RECORDS * 2 + 3)]
    consumer = FakeConsumer([records])
    app = fake_app(consumer)
    bypass, handled = recorded(app)
    assert install_bypass(app, [(input_topic(), bypass)])
    sizes: list[int] = []
    put = bypass.queue.put

    async def spy(batch: list[Any]) -> None:
        sizes.append(len(batch))
        await put(batch)

    bypass.queue.put = spy  # type: ignore[method-assign, assignment]
    asyncio.run(drain(app, bypass))

    assert sizes == [BATCH_RECORDS, BATCH_RECORDS, 3]
    assert [r.offset for r, _ in handled] == list(range(len(records)))


def test_records_already_handed_out_are_dropped_and_gaps_reported_as_faust_does() -> None:
    consumer = FakeConsumer([[message(INPUT, 0, 5)], [message(INPUT, 0, 3), message(INPUT, 0, 9)]])
    app = fake_app(consumer)
    bypass, handled = recorded(app)
    assert install_bypass(app, [(input_topic(), bypass)])
    consumer._read_offset[TP(INPUT, 0)] = 4

    asyncio.run(drain(app, bypass))

    assert [r.offset for r, _ in handled] == [5, 9]  # 3 is below the read offset
    assert consumer.gaps == [(TP(INPUT, 0), 6, 9)]  # 6..8 never came: Faust's gap


@pytest.mark.parametrize("stale", ["older generation", "flow stopped"])
def test_records_fetched_before_a_rebalance_are_never_handled_nor_tracked(stale: str) -> None:
    """Faust's seek to the committed offsets fetches them again after the rebalance."""
    consumer = FakeConsumer([[message(INPUT, 0, 0, generation=1)]])
    app = fake_app(consumer, generation=1)
    bypass, handled = recorded(app)
    assert install_bypass(app, [(input_topic(), bypass)])
    if stale == "older generation":
        app.consumer_generation_id = 2
    else:
        app.flow.active = False

    asyncio.run(drain(app, bypass))

    assert handled == []
    assert consumer.tracked == []


def test_a_record_that_crashes_the_handler_stays_unacknowledged_and_the_next_go_on() -> None:
    records = [message(INPUT, 0, offset) for offset in range(3)]
    consumer = FakeConsumer([records])
    app = fake_app(consumer)
    handled: list[int] = []
    crashes: list[BaseException] = []

    async def handler(record: Any, ack: Callable[[], Awaitable[None]]) -> None:
        if record.offset == 1:
            raise ValueError("a bug")
        handled.append(record.offset)
        await ack()

    bypass = Bypass(app, handler, on_crash=crashes.append)
    assert install_bypass(app, [(input_topic(), bypass)])
    asyncio.run(drain(app, bypass))

    assert handled == [0, 2]
    assert [type(exc) for exc in crashes] == [ValueError]
    assert [r.offset for r in consumer.acked] == [0, 2]


def test_clear_drops_what_is_queued() -> None:
    async def scenario() -> int:
        bypass = Bypass(fake_app(FakeConsumer([])), recording_handler([]))
        await bypass.queue.put([message(INPUT, 0, 0)])
        bypass.clear()
        return bypass.queue.qsize()

    assert asyncio.run(scenario()) == 0


def test_a_consumer_without_the_fetch_loop_is_left_alone() -> None:
    consumer = SimpleNamespace(getmany=None)
    app = fake_app(FakeConsumer([]))
    app.consumer = consumer
    bypass = Bypass(app, recording_handler([]))
    assert not install_bypass(app, [(input_topic(), bypass)])
    assert not app.topics.added


async def _awaited(ack: Awaitable[None]) -> None:
    await ack
