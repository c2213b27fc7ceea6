"""rocksdb_memory: RocksDB's own memory figures, summed over the tables' open databases."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import rocksdict

from worker.config import Settings
from worker.faust_compat.stores import ROCKSDB_MEMORY_PROPERTIES, rocksdb_memory


def _table(dbs: Mapping[int, object]) -> SimpleNamespace:
    """The shape of a Faust table with a RocksDB store: ``table._data._dbs``."""
    return SimpleNamespace(_data=SimpleNamespace(_dbs=dbs))


def test_memtables_hold_unflushed_writes_until_the_flush(tmp_path: Path) -> None:
    options = rocksdict.Options()
    options.create_if_missing(True)
    options.set_write_buffer_size(Settings().rocksdb_write_buffer_bytes)
    dbs = {p: rocksdict.Rdict(str(tmp_path / str(p)), options) for p in range(2)}
    try:
        empty = rocksdb_memory([_table(dbs)])
        assert set(empty) == set(ROCKSDB_MEMORY_PROPERTIES)
        for p, db in dbs.items():
            for i in range(2_000):
                db[f"{p}/{i}".encode()] = b"x" * 200
        written = rocksdb_memory([_table(dbs)])
        # both databases' writes (800 KB) sit in their memtables
        assert written["memtables"] - empty["memtables"] > 700_000
        for db in dbs.values():
            db.flush()
        assert rocksdb_memory([_table(dbs)])["memtables"] < written["memtables"] / 10
    finally:
        for db in dbs.values():
            db.close()


def test_tables_without_rocksdb_count_nothing() -> None:
    no_store = SimpleNamespace(_data=None)
    memory_store = SimpleNamespace(_data=SimpleNamespace(data={}))
    closed = _table({0: SimpleNamespace(property_int_value=_raise)})
    assert rocksdb_memory([no_store, memory_store, closed]) == dict.fromkeys(
        ROCKSDB_MEMORY_PROPERTIES, 0
    )


def _raise(prop: str) -> int:
    raise RuntimeError("database closed")
