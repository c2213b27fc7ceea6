"""Every use of a private Faust, aiokafka or mode name, in one package.

Invariant: no module of ``worker`` outside this package reads, calls or replaces a name that
faust-streaming, aiokafka or mode-streaming do not offer as public API (an attribute or method
starting with ``_``, or an internal object such as the consumer thread, the fetcher or
table recovery).  The rest of the worker imports what it needs from here.

Why: those names change between releases without notice, and several of the patches here
decide what the consumer commits.  Gathered in one place, each is listed with the release it
was read from (:data:`worker.faust_compat.names.NAMES`), the upstream functions copied or
wrapped are pinned by a hash of their source (:data:`worker.faust_compat.names.UPSTREAM`,
checked by ``tests/unit/test_compat_names.py``), and an upgrade of any of the three libraries
has one package to re-read.

The modules:

* :mod:`~worker.faust_compat.bypass`: worker topics' records batched around Faust's conductor;
* :mod:`~worker.faust_compat.rebalance`: the order Faust resumes, seeks and fetches in after a
  rebalance, and the offsets it would commit past without an acknowledgement;
* :mod:`~worker.faust_compat.recovery`: changelogs that end before their local store;
* :mod:`~worker.faust_compat.stores`: RocksDB partitions used directly
  (:class:`~worker.faust_compat.stores.TableIO`) and their memory;
* :mod:`~worker.faust_compat.consumer`: read offsets, fetch positions, high watermarks and the
  fetch wait of the running consumer;
* :mod:`~worker.faust_compat.names`: the list of names and upstream hashes.

What happens where a patch cannot install on the installed releases:

============================  ===========  ====================================================
patch                         kind         where it cannot install
============================  ===========  ====================================================
``seek_before_fetch``         correctness  :class:`~worker.errors.IncompatibleLibraryError`:
                                           the worker does not start
``keep_dropped_records``      correctness  the same
``TableIO``                   correctness  the same (checked when the app is built)
``install_bypass``            performance  a warning; an ordinary Faust agent reads the input
``count_gaps``                reporting    a warning; no gap metric
``report_lost_changelogs``    reporting    a warning; no lost-changelog log or metric
``set_fetch_max_wait``        latency      a warning; the fetch wait stays Faust's 1.5 s
``read_offset``,              reading      None: the backlog is unknown, so a partition is
``fetch_position``                         never taken for caught up on their account
``rocksdb_memory``            reporting    stores it cannot read count 0
``honour_rocksdb_options``    memory       a warning; a reopened database has RocksDB's
                                           default 8 MiB block cache and no bloom filter
============================  ===========  ====================================================

A correctness patch protects what the worker commits (a commit never covers records whose
window state is not in the changelog); running without one could lose decisions silently,
so refusing to start is the only safe answer.  The others make the worker faster or easier
to watch and have a correct fallback.
"""

from __future__ import annotations

from worker.faust_compat.bypass import Bypass, install_bypass
from worker.faust_compat.consumer import (
    aiokafka_consumer,
    consumer_lags,
    fetch_position,
    highwater,
    read_offset,
    recovery_completed,
    set_fetch_max_wait,
)
from worker.faust_compat.rebalance import count_gaps, keep_dropped_records, seek_before_fetch
from worker.faust_compat.recovery import report_lost_changelogs
from worker.faust_compat.stores import (
    ROCKSDB_MEMORY_PROPERTIES,
    TableIO,
    honour_rocksdb_options,
    require_rocksdb_store,
    rocksdb_memory,
)

__all__ = [
    "ROCKSDB_MEMORY_PROPERTIES",
    "Bypass",
    "TableIO",
    "aiokafka_consumer",
    "consumer_lags",
    "count_gaps",
    "fetch_position",
    "highwater",
    "honour_rocksdb_options",
    "install_bypass",
    "keep_dropped_records",
    "read_offset",
    "recovery_completed",
    "report_lost_changelogs",
    "require_rocksdb_store",
    "rocksdb_memory",
    "seek_before_fetch",
    "set_fetch_max_wait",
]
