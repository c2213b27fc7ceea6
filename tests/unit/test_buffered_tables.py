"""BufferedTable and Checkpoints: delivery's tables written in batches, with ordered acks.

What must hold (worker.agents.buffered): a read sees every write, buffered or not; a flush
writes each key once, RocksDB first; a record is acknowledged only once the broker has
confirmed the changelog records of *every* table it changed; acks of a partition keep the
order they were held in, even when a later flush is confirmed first; a refused send acks
nothing on its partition, then or later; nothing of a revoked assignment is acknowledged and
its buffer is dropped.  Faust commits up to the acknowledged records, so any of these broken
would commit a record whose effect the changelog never took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tests.unit.table_ios import UnconfirmedIO, Written
from worker.agents.buffered import BufferedTable, Checkpoints, partition_of_key


class Harness:
    def __init__(self, tables: int = 1) -> None:
        self.ios: list[UnconfirmedIO[bytes]] = [UnconfirmedIO() for _ in range(tables)]
        self.tables = [BufferedTable(io, io.all_items) for io in self.ios]  # type: ignore[arg-type]
        self.failures: list[BaseException] = []
        self.durable: list[tuple[int, int, list[bytes]]] = []  # (table index, partition, keys)
        self.checkpoints = Checkpoints(
            self.tables, on_failure=self.failures.append, flush_keys=3, flush_records=4,
            on_durable=lambda table, partition, keys: self.durable.append(
                (self.tables.index(table), partition, keys)),
        )
        self.acked: list[int] = []

    @property
    def table(self) -> BufferedTable:
        return self.tables[0]

    def ack(self, n: int) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            self.acked.append(n)

        return ack

    async def two_flushes(self) -> tuple[asyncio.Future[Written], asyncio.Future[Written]]:
        """Records 0 and 1 written and flushed one after the other: their two changelog
        sends, both unconfirmed."""
        self.record(0)
        await self.checkpoints.flush(0)
        self.record(1)
        await self.checkpoints.flush(0)
        first, second = self.ios[0].sends
        return first, second

    def record(self, n: int, partition: int = 0, key: bytes | None = None) -> None:
        """Record ``n`` writes one key of its partition, then holds its ack."""
        self.table[key or f"{partition}/r:{n}".encode()] = f"v{n}".encode()
        self.checkpoints.hold(partition, self.ack(n))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_the_partition_is_the_key_s_prefix() -> None:
    assert partition_of_key(b"12/r:abc/def") == 12


def test_reads_see_buffered_writes_and_deletes_before_any_flush() -> None:
    h = Harness()
    h.ios[0].data[0] = {b"0/r:old": b"old", b"0/r:gone": b"gone"}
    h.table[b"0/r:new"] = b"new"
    h.table[b"0/r:old"] = b"newer"
    del h.table[b"0/r:gone"]
    assert h.table.get(b"0/r:new") == b"new"
    assert h.table.get(b"0/r:old") == b"newer"
    assert h.table.get(b"0/r:gone") is None
    assert sorted(h.table.items()) == [(b"0/r:new", b"new"), (b"0/r:old", b"newer")]
    assert h.ios[0].local_writes == []  # nothing reached "RocksDB" yet


async def test_a_flush_writes_each_key_once_rocksdb_first() -> None:
    h = Harness()
    for value in (b"a", b"b", b"c"):
        h.table[b"0/r:x"] = value
    h.table[b"0/r:y"] = b"y"
    del h.table[b"0/r:y"]
    await h.checkpoints.flush(0)
    assert h.ios[0].local_writes == [{b"0/r:x": b"c", b"0/r:y": None}]
    assert h.ios[0].changelog == [(0, {b"0/r:x": b"c", b"0/r:y": None})]
    assert h.table.get(b"0/r:x") == b"c"  # from "RocksDB" now
    assert h.table.pending(0) == 0


async def test_records_are_acked_only_once_their_changelog_is_confirmed() -> None:
    h = Harness()
    for n in range(3):
        h.record(n)
    await h.checkpoints.flush(0)
    await settle()
    assert h.acked == []
    assert h.durable == []  # nothing may be sent before the changelog has it
    h.ios[0].sends[0].set_result(Written(offset=41))
    await settle()
    assert h.acked == [0, 1, 2]
    assert h.ios[0].committed_offsets == [(0, 41)]
    assert h.durable == [(0, 0, [b"0/r:0", b"0/r:1", b"0/r:2"])]


async def test_a_record_that_changed_nothing_still_waits_for_the_records_before_it() -> None:
    h = Harness()
    h.record(0)
    h.checkpoints.hold(0, h.ack(1))  # a duplicate: no write
    await h.checkpoints.flush(0)
    await settle()
    assert h.acked == []
    h.ios[0].sends[0].set_result(Written(offset=1))
    await settle()
    assert h.acked == [0, 1]


async def test_a_later_flush_confirmed_first_still_acks_in_offset_order() -> None:
    h = Harness()
    first, second = await h.two_flushes()
    second.set_result(Written(offset=8))
    await settle()
    assert h.acked == []
    first.set_result(Written(offset=7))
    await settle()
    assert h.acked == [0, 1]


async def test_every_table_a_record_changed_must_be_confirmed_before_its_ack() -> None:
    h = Harness(tables=2)
    h.tables[0][b"0/r:x"] = b"state"
    h.tables[1][b"0/x"] = b"properties"
    h.checkpoints.hold(0, h.ack(0))
    await h.checkpoints.flush(0)
    h.ios[0].sends[0].set_result(Written(offset=3))
    await settle()
    assert h.acked == []  # the evidence table's record is not confirmed yet
    h.ios[1].sends[0].set_result(Written(offset=9))
    await settle()
    assert h.acked == [0]
    assert h.durable == [(0, 0, [b"0/r:x"]), (1, 0, [b"0/x"])]
    assert h.ios[0].committed_offsets == [(0, 3)] and h.ios[1].committed_offsets == [(0, 9)]


async def test_a_refused_send_acks_nothing_on_that_partition_then_or_later() -> None:
    h = Harness()
    first, second = await h.two_flushes()
    first.set_exception(RuntimeError("broker refused"))
    second.set_result(Written(offset=9))
    await settle()
    assert h.acked == [] and h.durable == []
    assert [str(exc) for exc in h.failures] == ["broker refused"]
    assert h.ios[0].committed_offsets == []


async def test_a_revoked_partition_drops_its_buffer_and_acks_nothing() -> None:
    h = Harness()
    h.record(0)
    await h.checkpoints.flush(0)
    h.record(1)  # buffered, not flushed
    h.checkpoints.on_revoked([0])
    assert h.table.pending(0) == 0 and h.table.get(b"0/r:1") is None
    h.ios[0].sends[0].set_result(Written(offset=5))
    await settle()
    h.record(2)  # in flight from before the revocation: not held, not written
    await h.checkpoints.flush_all()
    await settle()
    assert h.acked == [] and h.ios[0].committed_offsets == [] and h.durable == []
    assert len(h.ios[0].sends) == 1 and h.table.get(b"0/r:2") is None
    h.checkpoints.on_assigned([0])  # back again: records are held as before
    h.record(3)
    await h.checkpoints.flush(0)
    h.ios[0].sends[-1].set_result(Written(offset=6))
    await settle()
    assert h.acked == [3]


async def test_partitions_are_acked_independently() -> None:
    h = Harness()
    h.record(0, partition=0)
    h.record(1, partition=1)
    await h.checkpoints.flush_all()
    p0, p1 = h.ios[0].sends
    p1.set_result(Written(offset=1))
    await settle()
    assert h.acked == [1]
    p0.set_result(Written(offset=1))
    await settle()
    assert h.acked == [1, 0]


def test_a_partition_is_due_for_an_early_flush_by_keys_or_by_held_records() -> None:
    h = Harness()
    for n in range(2):
        h.record(n)
    assert not h.checkpoints.full(0)
    h.record(2)  # three keys: flush_keys
    assert h.checkpoints.full(0)
    h2 = Harness()
    for _ in range(4):
        h2.record(0)  # one key written four times, four records held: flush_records
    assert h2.table.pending(0) == 1 and h2.checkpoints.full(0)
