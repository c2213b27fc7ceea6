"""The evidence lane's waiting properties, kept in a changelogged table so they outlive the
process: written when they change, read back into the lane when partitions are assigned.

No Faust here: the table is anything with ``get``/``__setitem__``/``__delitem__``/``items``
(a dict in tests), records go out through an injected ``send``.  The Faust adapter
(:mod:`worker.agents.deliver`) declares the table ``evidence-properties``
(:data:`worker.kafka.EVIDENCE_TABLE`, changelog ``<group>-evidence-properties-changelog``),
routes this module's records to :meth:`PendingStore.apply`, and calls
:meth:`PendingStore.restore` after every recovery.

Map of the module::

    PROPERTY_KIND          the retry-topic record kind that asks for a write
    encode / decode        a :class:`~worker.evidence.Pending` as the table stores it
    PendingStore           writes, deletes and restores the lane's entries

What holds, and why:

* **Co-partitioned with the outbox, like ``delivery-state``.**  An entry's key is
  ``b"<partition>/<request id>"``, where the partition is the one the request id maps to:
  the outbox is keyed by it and the delivery engine merges a decision only on that partition
  (it forwards it there first), so the lane is offered a decision by that partition's
  handler, the only writer of its keys.
* **Durable before the outbox record is acked.**  An offer that adds or replaces a request's
  properties writes its entry while the handler merges the decision, and the adapter flushes
  this table with ``delivery-state`` before it acknowledges the record
  (:mod:`worker.agents.buffered`), so a crash after the ack finds it in the changelog.
* **Progress is written by the handler too.**  A property call ends in the sender task,
  which writes no table (a call may end after its partition moved to another worker).  So
  the requests whose entry changed (a new
  due time and counters after "Request not found", one property left, settled, dropped) are
  named in a ``property`` record on the delivery retry topic, on their partition; when the
  partition's handler reads it, :meth:`PendingStore.apply` writes what the lane holds for each
  *at that moment* (or deletes the entry when it holds none).  Writing the lane's current
  view, not a snapshot carried in the record, means a record that arrives after a newer
  offer cannot bring back older properties.
* **At-least-once.**  The table may lag the lane by one record (a crash between a call's end
  and its record): the restored entry is then sent again, or tried once more for "Request not
  found".  A property call is an idempotent write (Helicone keeps the last value per key), so
  a second one is harmless; nothing is lost, and a resend costs one call.
* **The schedule resumes.**  Entries keep absolute wall-clock due times and their counters,
  so a restored "Request not found" entry waits out what was left of its wait and is dropped
  after as many answers as it would have been without the restart.
* **Rebalance.**  The new owner of a partition restores its entries on recovery and goes on
  with them; the old owner finishes the calls its lane still holds (a duplicate PUT is
  harmless), and its ``property`` records land on the partition, where the new owner writes
  its own view.  A worker whose lane already holds a request keeps its own entry.

Turning ``HELICONE_EVIDENCE_PROPERTIES`` off leaves the table unread; turning it on again
sends what it held, if the rating's rank still allows it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import orjson

from worker.envelopes import KIND_HEADER
from worker.evidence import Pending, PropertyLane
from worker.partitioner import partition_for

if TYPE_CHECKING:
    from worker.delivery_ports import KeyValueTable, Send

__all__ = ["PROPERTY_KIND", "PendingStore", "decode", "encode"]

log = logging.getLogger(__name__)

#: The ``KIND_HEADER`` of the retry-topic records that ask the owner to write entries.
PROPERTY_KIND: Final = b"property"
#: Requests whose entries change within this long of each other share one record.
LINGER_S: Final = 0.1
#: After a record could not be sent, it is tried again this much later.
_RETRY_S: Final = 1.0


def encode(saved: Pending) -> bytes:
    return orjson.dumps({
        "rank": list(saved.rank),
        "properties": [list(pair) for pair in saved.properties],
        "due_ms": saved.due_ms,
        "not_found": saved.not_found,
        "attempts": saved.attempts,
        "first_failed_ms": saved.first_failed_ms,
    })


def decode(raw: bytes) -> Pending:
    """The entry ``raw`` holds; ValueError, KeyError or TypeError if it is not one."""
    doc = orjson.loads(raw)
    a, b, c, d = doc["rank"]
    first = doc.get("first_failed_ms")
    return Pending(
        (int(a), int(b), int(c), str(d)),
        tuple((str(key), str(value)) for key, value in doc["properties"]),
        int(doc["due_ms"]),
        not_found=int(doc.get("not_found", 0)),
        attempts=int(doc.get("attempts", 0)),
        first_failed_ms=None if first is None else int(first),
    )


def _table_key(partition: int, request_id: str) -> bytes:
    return f"{partition}/{request_id}".encode()


class PendingStore:
    """Keeps a :class:`~worker.evidence.PropertyLane`'s entries in ``table`` (see the module
    docstring).  ``save_offered`` and ``apply`` run in the handler of the key's partition;
    ``mark_changed`` anywhere; ``restore`` after recovery."""

    def __init__(
        self,
        table: KeyValueTable,
        send: Send,
        *,
        retry_topic: str,
        partitions: int,
        linger_s: float = LINGER_S,
    ) -> None:
        self._table = table
        self._send = send
        self._retry_topic = retry_topic
        self._partitions = partitions
        self._linger_s = linger_s
        self._dirty: dict[int, set[str]] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def __repr__(self) -> str:
        return f"PendingStore(dirty={sum(map(len, self._dirty.values()))})"

    def partition_of(self, request_id: str) -> int:
        return partition_for(request_id.encode(), self._partitions)

    def _write(self, lane: PropertyLane, request_id: str, partition: int) -> None:
        key = _table_key(partition, request_id)
        saved = lane.snapshot(request_id)
        if saved is not None:
            self._table[key] = encode(saved)
        elif self._table.get(key) is not None:
            del self._table[key]

    def save_offered(self, lane: PropertyLane, partition: int) -> None:
        """In the handler that offered a decision: write what changed on ``partition``; any
        other change (an entry evicted to make room) goes to its own partition by record."""
        others = []
        for request_id in lane.take_changed():
            if self.partition_of(request_id) == partition:
                self._write(lane, request_id, partition)
            else:
                others.append(request_id)
        self.mark_changed(others)

    def mark_changed(self, request_ids: Iterable[str]) -> None:
        """From anywhere: ask each request's partition to write its entry (by record)."""
        for request_id in request_ids:
            partition = self.partition_of(request_id)
            self._dirty.setdefault(partition, set()).add(request_id)
            if partition not in self._tasks:
                task = asyncio.ensure_future(self._flush(partition))
                self._tasks[partition] = task

    async def _flush(self, partition: int) -> None:
        """After the linger, send one record naming the partition's changed requests; until
        the broker acknowledges it."""
        try:
            await asyncio.sleep(self._linger_s)
            while requests := self._dirty.pop(partition, None):
                value = orjson.dumps({"requests": sorted(requests)})
                try:
                    await self._send(self._retry_topic, b"properties", value, partition,
                                     [(KIND_HEADER, PROPERTY_KIND)])
                except Exception:
                    log.warning("could not record %d property change(s) of partition %d; "
                                "trying again", len(requests), partition, exc_info=True)
                    self._dirty.setdefault(partition, set()).update(requests)
                    await asyncio.sleep(_RETRY_S)
        finally:
            self._tasks.pop(partition, None)

    def apply(self, lane: PropertyLane, value: bytes | None, partition: int) -> int:
        """A ``property`` record, in its partition's handler: write the lane's current view of
        each request it names; how many were named."""
        try:
            requests = [str(r) for r in orjson.loads(value or b"{}")["requests"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring a malformed property record on partition %d", partition)
            return 0
        for request_id in requests:
            self._write(lane, request_id, partition)
        return len(requests)

    def restore(
        self, lane: PropertyLane, items: Iterable[tuple[bytes, bytes]], owned: set[int]
    ) -> int:
        """After recovery: put the entries of ``owned`` partitions back into the lane; how
        many were restored (entries the lane already holds are left as they are)."""
        restored = 0
        for key, raw in items:
            partition, _, request_id = key.decode(errors="replace").partition("/")
            if raw is None or not partition.isdigit() or int(partition) not in owned:
                continue
            try:
                saved = decode(raw)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("ignoring an unreadable evidence entry %r", key)
                continue
            restored += lane.restore(request_id, saved)
        log.info("evidence: %d pending request(s) restored on partitions %s",
                 restored, sorted(owned))
        return restored

    async def drain(self) -> None:
        """Wait until every change marked so far has been sent (tests, and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def cancel(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
