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


def _reopened_capacity(path: Path, cache_bytes: int) -> tuple[int, str]:
    """Create a database through Faust's own ``RocksDBOptions``, close it, reopen it the same
    way; the reopened database's block-cache capacity and its OPTIONS file's filter policy."""
    from faust.stores.rocksdb import RocksDBOptions

    options = RocksDBOptions(block_cache_size=cache_bytes, write_buffer_size=256 * 1024)
    db = options.open(path)
    db[b"k"] = b"v"
    db.close()
    db = options.open(path)
    try:
        capacity = db.property_int_value("rocksdb.block-cache-capacity")
    finally:
        db.close()
    latest = max(path.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    policy = next(line.split("=", 1)[1].strip() for line in latest.read_text().splitlines()
                  if line.strip().startswith("filter_policy="))
    return int(capacity or 0), policy


def test_a_reopened_database_keeps_the_configured_cache_and_filter(tmp_path: Path) -> None:
    from faust.stores.rocksdb import RocksDBOptions

    from worker.faust_compat import stores

    installed = RocksDBOptions.open  # patched already if an earlier test built an app
    RocksDBOptions.open = stores._FAUST_OPEN  # type: ignore[method-assign]
    try:
        # Faust's own open: rocksdict takes an existing database's table options from its
        # OPTIONS file, which records neither cache nor filter.  Should this start failing, a
        # release fixed it and the patch can go.
        assert _reopened_capacity(tmp_path / "faust", 2 * 2**20) == (8 * 2**20, "nullptr")
        assert stores.honour_rocksdb_options() and stores.honour_rocksdb_options()  # once
        assert RocksDBOptions.open is stores._open_with_options
        assert _reopened_capacity(tmp_path / "patched", 2 * 2**20) == (
            2 * 2**20, "bloomfilter"
        )
    finally:
        RocksDBOptions.open = installed  # type: ignore[method-assign]


def test_databases_left_by_faust_open_are_repaired_on_reopen(tmp_path: Path) -> None:
    """A state dir written before the patch (OPTIONS without cache or filter) reopens with
    the configured options: upgrading needs no migration."""
    from faust.stores.rocksdb import RocksDBOptions

    from worker.faust_compat import stores

    installed = RocksDBOptions.open
    path = tmp_path / "db"
    RocksDBOptions.open = stores._FAUST_OPEN  # type: ignore[method-assign]
    try:
        db = RocksDBOptions(block_cache_size=2**20).open(path)
        db[b"k"] = b"v"
        db.close()
        stores.honour_rocksdb_options()
        assert _reopened_capacity(path, 3 * 2**20) == (3 * 2**20, "bloomfilter")
        db = RocksDBOptions(block_cache_size=2**20).open(path)
        try:
            assert db[b"k"] == b"v"
        finally:
            db.close()
    finally:
        RocksDBOptions.open = installed  # type: ignore[method-assign]
