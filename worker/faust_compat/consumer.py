"""What the running consumer knows about each partition, read where Faust keeps it.

Invariant: these readers never block and never call into the consumer thread; each returns
None (or leaves the setting alone, with a warning) where the Faust or aiokafka version keeps
the value elsewhere, and None never makes a partition look caught up: the callers treat it
as "unknown" (:func:`worker.kafka.input_backlog`).

Why read internals: the partition backlog that gates idle close (:func:`worker.kafka.
input_backlog`) needs Faust's read offset (``Consumer._read_offset``) and the fetch position
of aiokafka's subscription state.  ``await app.consumer.position()`` would be the public way,
but it is a call into the consumer thread: a tick that made it for every partition each
second would queue behind (and delay) the thread's own work, such as table recovery.  The
fetch wait has no Faust setting at all (:func:`set_fetch_max_wait`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from faust.types import TP

__all__ = [
    "aiokafka_consumer",
    "consumer_lags",
    "fetch_position",
    "highwater",
    "read_offset",
    "recovery_completed",
    "set_fetch_max_wait",
]

log = logging.getLogger(__name__)


def aiokafka_consumer(app: Any) -> Any:
    """The aiokafka consumer inside Faust's consumer thread (None before it starts).

    Private to Faust; the helpers below read it only through getattr and fall back when it
    is missing."""
    return getattr(getattr(app.consumer, "_thread", None), "_consumer", None)


def set_fetch_max_wait(app: Any, wait_ms: int) -> None:
    """Apply KAFKA_FETCH_MAX_WAIT_MS to the running consumer.

    Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting to change
    it.  Apache Kafka answers a fetch as soon as a record arrives, so there it only bounds idle
    polling; Tansu (and any broker that does not answer early) holds new events for the whole
    wait, which alone would put 1.5 s into the decision delay.  The fetcher reads the value for
    every request, so setting it after start is enough.
    """
    fetcher = getattr(aiokafka_consumer(app), "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
        log.warning("cannot set the fetch wait on this faust/aiokafka version; it stays 1.5 s")
        return
    if fetcher._fetch_max_wait_ms != wait_ms:
        fetcher._fetch_max_wait_ms = wait_ms
        log.info("consumer fetch wait set to %d ms (KAFKA_FETCH_MAX_WAIT_MS)", wait_ms)


def read_offset(app: Any, tp: TP) -> int | None:
    """Faust's read offset of ``tp`` (see :func:`worker.kafka.input_backlog`), or None."""
    read_offsets = getattr(app.consumer, "_read_offset", None)
    return read_offsets.get(tp) if isinstance(read_offsets, Mapping) else None


def fetch_position(app: Any, tp: TP) -> int | None:
    """The consumer's next fetch offset for ``tp``, or None while unknown.

    Read from aiokafka's subscription state: ``await app.consumer.position()`` is a call into
    the consumer thread, and a tick that makes it for every partition each second queues
    behind (and delays) the thread's own work, such as table recovery at start-up.

    None as well where Faust keeps no read offsets (:func:`read_offset`): the position counts
    records fetched but not yet processed, so on its own it could call a partition caught up
    while its records wait in the stream buffer (:func:`worker.kafka.input_backlog`)."""
    if not isinstance(getattr(app.consumer, "_read_offset", None), Mapping):
        return None
    consumer = aiokafka_consumer(app)
    subscription = getattr(getattr(consumer, "_subscription", None), "subscription", None)
    assignment = getattr(subscription, "assignment", None)
    state = assignment.state_value(tp) if assignment is not None else None
    if state is None or not state.has_valid_position:
        return None
    return int(state.position)


def highwater(app: Any, tp: TP) -> int | None:
    """The end of ``tp`` as the last fetch answer gave it (None or -1 before one).

    DESIGN 2: the high watermark comes from fetch responses, which Tansu gets right and
    ListOffsets does not."""
    value = app.consumer.highwater(tp)
    return None if value is None else int(value)


def consumer_lags(
    app: Any, progress: dict[tuple[str, int], tuple[int, float]], *, now_s: float
) -> dict[tuple[str, int], tuple[int, float]]:
    """Lag of every owned partition we have processed a record of (records behind, seconds
    since the last one processed while behind); ``progress`` holds (offset, timestamp in s)
    of the last record processed per (topic, partition)."""
    lags = {}
    for tp in app.consumer.assignment():
        seen = progress.get((tp.topic, tp.partition))
        if seen is None:
            continue
        offset, timestamp_s = seen
        end = highwater(app, tp)
        if end is None or end < 0:
            continue
        behind = max(0, end - offset - 1)
        lags[tp.topic, tp.partition] = (behind, max(0.0, now_s - timestamp_s) if behind else 0.0)
    return lags


def recovery_completed(app: Any) -> bool:
    """Whether Faust's table recovery has finished (its ``Recovery.completed`` event)."""
    return bool(app.tables.recovery.completed.is_set())
