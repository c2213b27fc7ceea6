"""worker.faust_compat against Faust's and aiokafka's real classes.

The other test_compat_* modules drive the patches through small stand-ins to pin down their
logic; here the same patches are installed on a real ``faust.App``'s consumer, recovery and
RocksDB store (and a real aiokafka consumer where one is read), nothing connected to a
broker.  Where a call would reach the network or the consumer thread, that one method is
replaced on the instance and everything around it stays Faust's.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiokafka
import faust
import pytest
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.structs import TopicPartition
from faust.tables.recovery import Recovery
from faust.types import TP, Message

from tests.unit.test_compat_bypass import drain
from worker import faust_compat as compat
from worker.agents.buffered import BufferedTable, Checkpoints
from worker.errors import IncompatibleLibraryError
from worker.faust_compat.stores import require_rocksdb_store

INPUT = "ui-events"
TPS = [TP(INPUT, 0), TP(INPUT, 1)]


def real_app(tmp_path: Path) -> Any:
    """A real Faust app (typed Any: the tests reach into what Faust's types leave out)."""
    return faust.App(
        "compat-test",
        broker="kafka://localhost:1",
        store="rocksdb://",
        datadir=str(tmp_path),
        key_serializer="raw",
        value_serializer="raw",
        autodiscover=False,
        web_enabled=False,
    )


def changelog_table(app: Any) -> Any:
    table = app.Table("windows", default=None, partitions=2, key_type=str, value_type=bytes)
    table.key_serializer, table.value_serializer = "json", "raw"
    return table


def message(offset: int, app: Any, partition: int = 0) -> Message:
    tp = TP(INPUT, partition)
    return Message(INPUT, partition, offset, 0.0, 0, None, b"k", b"v", None,
                   generation_id=app.consumer_generation_id, tp=tp)


@contextlib.asynccontextmanager
async def aiokafka_consumer(
    positions: dict[TP, int],
) -> AsyncIterator[aiokafka.AIOKafkaConsumer]:
    """A real aiokafka consumer, never started, with ``positions`` assigned and sought."""
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="localhost:1")
    consumer.assign([TopicPartition(tp.topic, tp.partition) for tp in positions])
    for tp, offset in positions.items():
        consumer._subscription.subscription.assignment.state_value(tp).seek(offset)
    consumer._fetcher = Fetcher(consumer._client, consumer._subscription)
    try:
        yield consumer
    finally:
        await consumer.stop()  # closes the fetcher too


async def test_seek_before_fetch_holds_faust_s_resume_until_faust_s_seek(tmp_path: Path) -> None:
    app = real_app(tmp_path)
    table = changelog_table(app)
    changelog = TP(table.changelog_topic.get_topic_name(), 0)
    consumer = app.consumer
    compat.seek_before_fetch(app)

    committed = {TPS[0]: 40, TPS[1]: 7}

    async def seek_to_committed() -> dict[TP, int]:  # the one call into the consumer thread
        return committed

    consumer.seek_to_committed = seek_to_committed
    app.rebalancing = True
    consumer.resume_partitions({*TPS, changelog})
    assert consumer._get_active_partitions() == {changelog}  # Faust's own active set
    consumer._read_offset[TPS[0]] = 99  # handed out before the rebalance

    # partition 1 was revoked meanwhile: not released
    async with aiokafka_consumer({TPS[0]: 0, changelog: 0}) as real:
        consumer._thread._consumer = real
        await consumer.perform_seek()

    assert consumer._get_active_partitions() == {TPS[0], changelog}
    assert consumer._read_offset[TPS[0]] == 40  # Faust's seek ran, then the release


async def test_count_gaps_reports_and_faust_still_records_the_gap(tmp_path: Path) -> None:
    app = real_app(tmp_path)
    consumer = app.consumer
    counted: list[tuple[str, int]] = []
    assert compat.count_gaps(app, lambda topic, missing: counted.append((topic, missing)))
    consumer._committed_offset[TPS[0]] = 40

    await consumer._add_gap(TPS[0], 44, 55)

    assert counted == [(INPUT, 11)]
    assert [(i.begin, i.end) for i in consumer._gap[TPS[0]]] == [(44, 56)]


async def test_keep_dropped_records_hands_back_through_the_real_consumers(
    tmp_path: Path,
) -> None:
    app = real_app(tmp_path)
    consumer = app.consumer
    thread = consumer._thread
    active = set(TPS)
    fetched = {TPS[0]: [message(o, app) for o in range(41, 44)],
               TPS[1]: [message(o, app, 1) for o in range(7, 9)]}
    asked: list[set[TP]] = []

    async def getmany(active_partitions: set[TP], timeout: float) -> dict[TP, list[Message]]:
        asked.append(active_partitions)
        active.discard(TPS[0])  # paused by a rebalance while the fetch waited
        return fetched

    async def call_thread(fun: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await fun(*args)  # the thread is not running: call on this loop

    thread.getmany = getmany
    thread.call_thread = call_thread
    async with aiokafka_consumer({TPS[0]: 44, TPS[1]: 9}) as real:
        thread._consumer = real
        compat.keep_dropped_records(app)
        got = await consumer._getmany(active, 1.0)  # the patch over Faust's _getmany
        assert list(got) == [TPS[1]]
        assert asked[0] == set(TPS) and asked[0] is not active
        assert await real.position(TopicPartition(INPUT, 0)) == 41  # fetched again later


async def test_bypass_replaces_the_real_fetch_loop_and_acks_through_faust(
    tmp_path: Path,
) -> None:
    app = real_app(tmp_path)
    topic = app.topic(INPUT, key_type=bytes, value_type=bytes)
    consumer = app.consumer
    handled: list[int] = []

    async def handler(record: Any, ack: Callable[[], Awaitable[None]]) -> None:
        handled.append(record.offset)
        await ack()

    bypass = compat.Bypass(app, handler)
    assert compat.install_bypass(app, [(topic, bypass)])
    await app.topics._update_indices()  # what subscribing does: acks enabled for the topic
    assert app.topics.acks_enabled_for(INPUT)
    batches = [[message(o, app) for o in (3, 4, 7)]]

    async def getmany(timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        if not batches:
            consumer._stopped.set()
            return
        for record in batches.pop(0):
            yield record.tp, record

    consumer.getmany = getmany
    app.flow_control.resume()
    consumer._read_offset[TPS[0]] = 2
    consumer._committed_offset[TPS[0]] = 2

    await drain(app, bypass)  # Faust's real consumer, with the copied loop installed

    assert handled == [3, 4, 7]
    assert consumer._read_offset[TPS[0]] == 7
    assert [(i.begin, i.end) for i in consumer._gap[TPS[0]]] == [(5, 8)]  # 5..6 never came
    assert sorted(consumer._acked[TPS[0]]) == [3, 4, 7]


async def test_report_lost_changelogs_wraps_the_real_recovery(tmp_path: Path) -> None:
    app = real_app(tmp_path)
    recovery = app.tables.recovery
    assert isinstance(recovery, Recovery)
    # The wrapper calls Faust's with the generation id only.
    assert list(inspect.signature(Recovery.on_recovery_completed).parameters) == [
        "self", "generation_id",
    ]
    completed: list[int] = []

    async def faust_completed(generation_id: int = 0) -> None:  # needs a running consumer
        completed.append(generation_id)

    recovery.on_recovery_completed = faust_completed  # type: ignore[method-assign]
    changelog = TP("compat-test-windows-changelog", 0)
    recovery.active_offsets[changelog] = 57
    recovery.active_highwaters[changelog] = -1
    lost: list[tuple[Any, int, int]] = []
    assert compat.report_lost_changelogs(app, lambda *args: lost.append(args))

    await recovery.on_recovery_completed(3)

    assert lost == [(changelog, 57, -1)]
    assert completed == [3]
    assert not compat.recovery_completed(app)


async def test_tableio_writes_what_faust_s_rocksdb_store_reads(tmp_path: Path) -> None:
    app = real_app(tmp_path)
    table = changelog_table(app)
    sent: list[tuple[Any, ...]] = []

    class Recorder:
        async def send(self, *args: Any, **kwargs: Any) -> Any:
            sent.append((*args, kwargs))
            return None

    io = compat.TableIO(table, Recorder())
    io.put_local(1, {"1/a": b"x", "1/b": b"y"})
    io.put_local(1, {"1/b": None})
    await io.send_changelog(1, {"1/a": b"x"}, lambda: True)
    io.committed(1, 41)

    store = table.data
    assert store["1/a"] == b"x"  # Faust's own read path
    assert io.get(1, "1/a") == b"x" and list(io.items(1, "1/")) == [("1/a", b"x")]
    assert store.persisted_offset(TP(table.changelog_topic.get_topic_name(), 1)) == 41
    changelog = table.changelog_topic.get_topic_name()
    assert sent == [(changelog, store._encode_key("1/a"), b"x", {"partition": 1})]
    assert set(compat.rocksdb_memory([table])) == {"memtables", "block_cache", "table_readers"}


async def test_delivery_s_buffered_table_writes_what_table_setitem_would(tmp_path: Path) -> None:
    """Delivery's tables (bytes keys and values, raw) written through BufferedTable and
    TableIO: Faust's own read path finds the values, and the changelog records carry exactly
    the bytes ``table[key] = value`` would send, so older workers' changelogs still restore."""
    app = real_app(tmp_path)
    table = app.Table("delivery-state", default=None, partitions=2, key_type=bytes,
                      value_type=bytes)
    sent: list[tuple[Any, ...]] = []

    class Recorder:
        async def send(self, *args: Any, **kwargs: Any) -> Any:
            sent.append((*args, kwargs))
            return None

    buffered = BufferedTable(compat.TableIO(table, Recorder()), table.items)
    buffered[b"1/r:a"] = b'{"v":1}'
    buffered[b"1/r:a"] = b'{"v":2}'
    checkpoints = Checkpoints([buffered])
    await checkpoints.flush(1)

    assert table.data[b"1/r:a"] == b'{"v":2}'  # Faust's own read path
    assert buffered.get(b"1/r:a") == b'{"v":2}'
    changelog = table.changelog_topic
    key, _ = changelog.prepare_key(b"1/r:a", None)
    value, _ = changelog.prepare_value(b'{"v":2}', None)
    assert sent == [(changelog.get_topic_name(), key, value, {"partition": 1})]


def test_a_store_without_what_tableio_uses_stops_the_worker() -> None:
    require_rocksdb_store()  # the installed Faust's
    with pytest.raises(IncompatibleLibraryError, match=r"Store\._db_for_partition"):
        require_rocksdb_store(type("OlderStore", (), {"offset_key": b""}))


async def test_the_consumer_readers_on_real_consumers(tmp_path: Path) -> None:
    app = real_app(tmp_path)
    consumer = app.consumer
    assert compat.read_offset(app, TPS[0]) is None and compat.fetch_position(app, TPS[0]) is None
    consumer._read_offset[TPS[0]] = 12
    assert compat.read_offset(app, TPS[0]) == 12
    async with aiokafka_consumer({TPS[0]: 20}) as real:
        consumer._thread._consumer = real
        assert compat.fetch_position(app, TPS[0]) == 20
        assert compat.fetch_position(app, TPS[1]) is None  # not assigned
        compat.set_fetch_max_wait(app, 25)
        assert real._fetcher._fetch_max_wait_ms == 25
    assert compat.consumer_lags(app, {}, now_s=0.0) == {}  # nothing assigned yet


async def test_without_faust_s_read_offsets_the_position_is_not_trusted_alone(
    tmp_path: Path,
) -> None:
    """The position counts records still waiting in the stream buffer: without the read
    offsets beside it, the backlog must stay unknown rather than look caught up."""
    app = real_app(tmp_path)
    async with aiokafka_consumer({TPS[0]: 20}) as real:
        app.consumer._thread._consumer = real
        del app.consumer._read_offset  # a Faust that keeps them elsewhere
        assert compat.read_offset(app, TPS[0]) is None
        assert compat.fetch_position(app, TPS[0]) is None


def test_build_app_installs_every_patch_on_faust_s_classes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from worker.app import build_app
    from worker.config import load_settings

    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    app: Any = build_app(load_settings()).faust_app
    consumer = app.consumer
    patched = {
        "_drain_messages": consumer._drain_messages,
        "_getmany": consumer._getmany,
        "_add_gap": consumer._add_gap,
        "pause_partitions": consumer.pause_partitions,
        "resume_partitions": consumer.resume_partitions,
        "perform_seek": consumer.perform_seek,
        "on_recovery_completed": app.tables.recovery.on_recovery_completed,
    }
    for name, function in patched.items():
        assert function.__module__.startswith("worker.faust_compat."), name
