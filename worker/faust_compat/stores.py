"""Faust's RocksDB table stores, used below the table: :class:`TableIO` reads and writes a
partition's database directly, and :func:`rocksdb_memory` reports how much memory the
databases hold, for ``feedback_rocksdb_memory_bytes``.

Invariant of :class:`TableIO`: what it writes is byte for byte what Faust's own table would
write (key encoding, values, the persisted-offset key), so Faust's recovery and standbys read
it back unchanged.  It holds because every encoding step is Faust's own store method, called
rather than copied.  The windows' state cannot be kept without it, so a RocksDB store that
lacks one of those methods stops the worker at start (:func:`require_rocksdb_store`, raising
:class:`~worker.errors.IncompatibleLibraryError`) instead of at the first write.

RocksDB's memory is most of a worker's RSS beyond the Python heap, and none of it is visible
to Python: memtables fill with writes until they are flushed (ROCKSDB_WRITE_BUFFER_BYTES), the
block cache with what reads brought in (ROCKSDB_BLOCK_CACHE_BYTES), and the table readers
with index and filter blocks.  Faust opens one database per table partition; this sums
RocksDB's own figures (``rocksdb.cur-size-all-mem-tables`` and the like) over every database
open now, so an operator can tell a full cache from a leak.

It reads Faust's RocksDB store's ``_dbs`` (partition -> rocksdict ``Rdict``); stores of other
kinds (``memory://`` in tests) are skipped.

Invariant of :func:`honour_rocksdb_options`: a database Faust opens has the block cache and
bloom filter the worker configured (ROCKSDB_BLOCK_CACHE_BYTES), whether it is created or
reopened.  Faust's ``RocksDBOptions.open`` passes its options to rocksdict's ``Rdict`` as
``options`` only; rocksdict takes the table options of an *existing* database's column
families from its OPTIONS file, which records neither the cache nor the filter, so after
every restart each database silently had RocksDB's default 8 MiB cache and no bloom filter
(16 databases: 128 MiB where 16 MiB were configured).  Passing the same options for the
``default`` column family, which is the only one Faust uses, makes rocksdict use them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import rocksdict
from faust.stores import rocksdb as faust_rocksdb
from faust.types import TP

from worker.faust_compat.names import incompatible

if TYPE_CHECKING:
    from worker.producing import Producer

__all__ = [
    "ROCKSDB_MEMORY_PROPERTIES",
    "TableIO",
    "honour_rocksdb_options",
    "require_rocksdb_store",
    "rocksdb_memory",
]

log = logging.getLogger(__name__)

#: A table's key type as its store encodes it: ``str`` (the windows) or ``bytes`` (delivery).
K = TypeVar("K", str, bytes)

#: Metric label -> RocksDB integer property.
ROCKSDB_MEMORY_PROPERTIES = {
    "memtables": "rocksdb.cur-size-all-mem-tables",
    "block_cache": "rocksdb.block-cache-usage",
    "table_readers": "rocksdb.estimate-table-readers-mem",
}


def rocksdb_memory(tables: Iterable[Any]) -> dict[str, int]:
    """Bytes per kind (:data:`ROCKSDB_MEMORY_PROPERTIES`), summed over the open databases of
    ``tables`` (Faust tables); kinds a database cannot report count as 0."""
    totals = dict.fromkeys(ROCKSDB_MEMORY_PROPERTIES, 0)
    for table in tables:
        store = getattr(table, "_data", None)  # not table.data: that would open the store
        for db in list(getattr(store, "_dbs", {}).values()):
            for kind, prop in ROCKSDB_MEMORY_PROPERTIES.items():
                try:
                    value = db.property_int_value(prop)
                except Exception:
                    value = None
                totals[kind] += int(value or 0)
    return totals


class TableIO(Generic[K]):
    """One Faust table's RocksDB partitions and changelog, used directly.

    Why not ``table[key] = value``: each such write becomes one changelog message that goes
    through Faust's producer buffer on its own (about 190 us, and the stream stalls with
    "producer buffer full" when a flush writes thousands of keys), and it needs the current
    event to pick the partition.  Here a flush writes the partition's RocksDB instance
    directly and sends the changelog records with the app's producer in one go, so the
    on-disk and changelog layouts stay exactly Faust's (keys encoded by the table's key
    serializer, Faust's persisted-offset key), and recovery and standbys still use Faust's own
    changelog reader.  The flush can also *wait* until the changelog holds the records before
    the inputs are acknowledged, which ``table[key] = value`` never does.

    It relies on the RocksDB store's ``_db_for_partition``, ``_encode_key``, ``_decode_key``,
    ``offset_key`` and ``set_persisted_offset`` (:data:`worker.faust_compat.names.NAMES`),
    checked when it is created (:func:`require_rocksdb_store`).
    """

    def __init__(self, table: Any, producer: Producer) -> None:
        require_rocksdb_store()
        self._table = table
        self._producer = producer

    @property
    def table(self) -> Any:
        """The Faust table (for its public API: recovery callbacks, ``items``)."""
        return self._table

    @property
    def _store(self) -> Any:
        return self._table.data  # created lazily by Faust, after the app starts

    def get(self, partition: int, key: K) -> bytes | None:
        store = self._store
        value: bytes | None = store._db_for_partition(partition).get(store._encode_key(key))
        return value

    def items(self, partition: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        """Entries of ``partition`` whose key starts with ``prefix``, prefix included."""
        store = self._store
        db = store._db_for_partition(partition)
        for raw_key, value in db.items():
            if raw_key == store.offset_key or value is None:
                continue
            key = store._decode_key(raw_key)
            if isinstance(key, str) and key.startswith(prefix):
                yield key, value

    def put_local(self, partition: int, entries: dict[K, bytes | None]) -> None:
        """Write ``entries`` (None deletes) to the partition's RocksDB instance, at once."""
        store = self._store
        db = store._db_for_partition(partition)
        for key, value in entries.items():
            raw_key = store._encode_key(key)
            if value is None:
                db.delete(raw_key)
            else:
                db.put(raw_key, value)

    async def send_changelog(
        self, partition: int, entries: dict[K, bytes | None], owned: Callable[[], bool]
    ) -> list[Awaitable[Any]]:
        """Queue ``entries`` on the changelog, while ``owned()``; returns the futures.

        Stops when the partition is revoked: its next owner writes that changelog now."""
        store = self._store
        topic = self._table.changelog_topic.get_topic_name()
        futures = []
        for key, value in entries.items():
            if not owned():
                break
            futures.append(
                await self._producer.send(
                    topic, store._encode_key(key), value, partition=partition
                )
            )
        return futures

    def committed(self, partition: int, offset: int) -> None:
        """The changelog holds everything up to ``offset``: recovery may start after it."""
        self._store.set_persisted_offset(
            TP(self._table.changelog_topic.get_topic_name(), partition), offset
        )


#: What :class:`TableIO` uses of Faust's RocksDB store.
STORE_NEEDS = ("_db_for_partition", "_encode_key", "_decode_key", "offset_key",
               "set_persisted_offset")


def require_rocksdb_store(store_class: Any = None) -> None:
    """Raise :class:`~worker.errors.IncompatibleLibraryError` unless Faust's RocksDB store
    (or ``store_class``) has everything :class:`TableIO` uses."""
    if store_class is None:
        from faust.stores import rocksdb

        store_class = rocksdb.Store
    missing = [f"Store.{name}" for name in STORE_NEEDS if not hasattr(store_class, name)]
    if missing:
        raise incompatible(
            "worker.faust_compat.stores.TableIO", missing,
            "the windows' state cannot be written to the table or read back",
        )


_FAUST_OPEN = faust_rocksdb.RocksDBOptions.open


def _open_with_options(
    self: faust_rocksdb.RocksDBOptions, path: Path, *, read_only: bool = False
) -> Any:
    """Faust's ``RocksDBOptions.open`` for rocksdict, with the options also given for the
    ``default`` column family (see the module docstring); other drivers go to Faust's."""
    if not self.use_rocksdict:
        return _FAUST_OPEN(self, path, read_only=read_only)
    access_type = (
        rocksdict.AccessType.read_write()
        if self.ttl is None
        else rocksdict.AccessType.with_ttl(self.ttl)
    )
    db = rocksdict.Rdict(
        str(path),
        options=self.as_options(),
        column_families={"default": self.as_options()},
        access_type=access_type,
    )
    db.set_read_options(rocksdict.ReadOptions())
    return db


def honour_rocksdb_options() -> bool:
    """Make every database Faust opens from now on use the configured options, also when it
    is reopened (idempotent).  Returns False, with a warning, where Faust's ``RocksDBOptions``
    lacks what the replacement uses: the databases then run with RocksDB's default cache
    after a restart, which costs memory and reads, never correctness."""
    options_class = faust_rocksdb.RocksDBOptions
    if options_class.open is _open_with_options:
        return True
    missing = [name for name in ("open", "as_options") if not hasattr(options_class, name)]
    if missing:
        log.warning(
            "RocksDB options are not passed for reopened databases (missing %s): their block "
            "cache is RocksDB's default after a restart",
            ", ".join(missing),
        )
        return False
    options_class.open = _open_with_options  # type: ignore[method-assign]
    return True
