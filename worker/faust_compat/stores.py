"""How much memory the tables' RocksDB databases hold, for ``feedback_rocksdb_memory_bytes``.

RocksDB's memory is most of a worker's RSS beyond the Python heap, and none of it is visible
to Python: memtables fill with writes until they are flushed (ROCKSDB_WRITE_BUFFER_BYTES), the
block cache with what reads brought in (ROCKSDB_BLOCK_CACHE_BYTES), and the table readers
with index and filter blocks.  Faust opens one database per table partition; this sums
RocksDB's own figures (``rocksdb.cur-size-all-mem-tables`` and the like) over every database
open now, so an operator can tell a full cache from a leak.

It reads Faust's RocksDB store's ``_dbs`` (partition -> rocksdict ``Rdict``); stores of other
kinds (``memory://`` in tests) are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["ROCKSDB_MEMORY_PROPERTIES", "rocksdb_memory"]

log = logging.getLogger(__name__)

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
