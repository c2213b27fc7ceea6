"""The worker's changelogged tables, declared one way.

Every table the worker keeps holds bytes it encoded itself (window states, delivery states,
waiting evidence properties, prompt cooldowns), so values pass through Faust untouched, in
the changelog, in RocksDB and when restored; it has ``TOPIC_PARTITIONS`` partitions, so it is
co-partitioned with the topic whose records write it; and its RocksDB databases use the
configured options (ROCKSDB_*).  Keys are bytes, except the windows' string keys, whose
serializer (JSON) is part of their stored format and must not change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from faust.tables.base import Collection

if TYPE_CHECKING:
    import faust
    from faust.types import TableT

    from worker.config import Settings

__all__ = ["changelogged_table"]


def changelogged_table(
    app: faust.App,
    settings: Settings,
    name: str,
    *,
    help: str,
    key_type: type[str] | type[bytes] = bytes,
) -> TableT[Any, bytes]:
    """Declare the changelogged table ``name`` (module docstring); nothing connects yet."""
    table = app.Table(
        name,
        default=None,
        partitions=settings.topic_partitions,
        key_type=key_type,
        value_type=bytes,
        options=settings.rocksdb_options,
        help=help,
    )
    collection = cast(Collection, table)
    collection.key_serializer = "json" if key_type is str else "raw"
    collection.value_serializer = "raw"
    return table
