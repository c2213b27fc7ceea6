"""Keep Faust from committing past records whose window state is not written yet.

After every rebalance Faust's table recovery ends in this order (faust-streaming 0.11 to
0.15, ``Recovery.on_recovery_completed`` and ``Recovery._resume_streams``):

1. resume fetching the stream partitions;
2. seek them to their committed offsets (``Consumer.perform_seek``), which also resets
   Faust's per-partition "read offset" to the committed offset.

Between the two the fetcher already hands records to the agents.  After the seek, the rest
of the batch fetched before it keeps arriving, so the next record is far above the reset
read offset.  Faust takes that jump for a gap in the partition (as compaction or
transaction markers leave) and counts the offsets in it as *acknowledged*.  The records in
it were handed to the agents, but their window state may still be in memory: the windows
adapter acknowledges a record only after its state reached the changelog
(:mod:`worker.agents.windows`).  The next commit then covers them anyway, and if the
partition moves before the state is flushed, the new owner starts after records nobody
wrote down.  Their window is decided without them, and the rest of its events go to the late
topic.

The join/leave chaos test lost decisions that way, about one run in three.  A trace of
every fetched record showed the records delivered before the seek, the jump to a spurious
gap right after it, and the commit over it.

:func:`seek_before_fetch` changes the order: stream partitions resumed during a rebalance
stay paused until the seek has finished.  So the first record a partition hands on after a
rebalance is the one at its committed offset, and Faust records no gap unless the partition
really has one.  :func:`count_gaps` makes any gap Faust records visible (log and metric):
each lets a commit skip records the agents never acknowledged.

:func:`keep_dropped_records` closes a second hole, in Faust's fetch.  Faust asks the
consumer thread for records of its *active* partitions, passing its live set of them, and
drops what comes back for a partition no longer in that set (paused or held meanwhile).
But the consumer's position has moved past those records, and only a later seek to the
committed offsets brings them back.  When the fetch returns *after* that seek (it waits up
to a second for data, and a rebalance with a quick recovery takes less), nothing does: the
partition's records up to its end are gone from this worker until the next rebalance, and
the next record that arrives looks like the end of a gap, which a commit skips.  The set is
also shared with the consumer thread while Faust changes it, and aiokafka reads an empty
set as "every partition".  The join/leave chaos test (seed 537580044) lost 67 of 117
decisions that way, with the fetch of every input partition dropped 4 ms before the seek.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["count_gaps", "keep_dropped_records", "seek_before_fetch"]

log = logging.getLogger(__name__)


def seek_before_fetch(app: Any) -> bool:
    """Hold back the stream partitions Faust resumes during a rebalance until its seek to
    the committed offsets has finished.

    Changelog partitions pass straight through: recovery reads them before the seek.
    Returns False (and changes nothing) where the Faust version lacks the consumer's
    ``resume_partitions``, ``pause_partitions``, ``perform_seek`` or the app's
    ``rebalancing`` flag."""
    consumer = app.consumer
    if not hasattr(app, "rebalancing") or not all(
        callable(getattr(consumer, name, None))
        for name in ("resume_partitions", "pause_partitions", "perform_seek", "assignment")
    ):
        log.warning("this faust version cannot hold stream partitions until they are sought "
                    "to their committed offsets; a rebalance may commit past records whose "
                    "window state is not written")
        return False
    faust_resume_partitions = consumer.resume_partitions
    faust_pause_partitions = consumer.pause_partitions
    faust_perform_seek = consumer.perform_seek
    held: set[Any] = set()

    def pause_partitions(tps: Iterable[Any]) -> None:
        # A new rebalance pauses everything again: what it resumes later is held anew,
        # and a seek meanwhile must not resume what was held for the previous one.
        tps = set(tps)
        held.difference_update(tps)
        faust_pause_partitions(tps)

    def resume_partitions(tps: Iterable[Any]) -> None:
        tps = set(tps)
        if app.rebalancing:
            streams = {tp for tp in tps if tp.topic not in app.tables.changelog_topics}
            held.update(streams)
            tps -= streams
        if tps:
            faust_resume_partitions(tps)

    async def perform_seek() -> None:
        # Only a seek that starts after the hold covers the held partitions (Faust also
        # seeks at other moments, such as a fetch that finds the flow stopped).
        release = bool(held)
        await faust_perform_seek()
        if release and held:
            # Only what is still assigned: a newer rebalance may have taken some away.
            resumed = held & set(consumer.assignment())
            held.clear()
            faust_resume_partitions(resumed)

    consumer.resume_partitions = resume_partitions
    consumer.pause_partitions = pause_partitions
    consumer.perform_seek = perform_seek
    return True


def count_gaps(app: Any, on_gap: Callable[[str, int], object]) -> bool:
    """Call ``on_gap(topic, missing)`` and log each time Faust records a gap in a stream
    partition's offsets (offsets it will commit past without an acknowledgement).

    Returns False where this Faust version has no ``Consumer._add_gap``."""
    consumer = app.consumer
    faust_add_gap = getattr(consumer, "_add_gap", None)
    if not callable(faust_add_gap):
        return False

    async def add_gap(tp: Any, offset_from: int, offset_to: int) -> None:
        if tp.topic not in app.tables.changelog_topics:
            # Faust's interval runs up to the record that revealed the gap, included.
            missing = offset_to - offset_from
            log.warning(
                "%s[%d]: offsets %d..%d were never fetched; they will be committed without "
                "being processed (expected only on topics with transaction markers or "
                "compaction)", tp.topic, tp.partition, offset_from, offset_to - 1,
            )
            on_gap(tp.topic, missing)
        await faust_add_gap(tp, offset_from, offset_to)

    consumer._add_gap = add_gap
    return True


def keep_dropped_records(app: Any) -> bool:
    """Fetch only the partitions active when the fetch starts, and hand back to the consumer
    what comes back for partitions that stopped being active meanwhile (module docstring).

    "Hand back" is a seek of the partition to its first returned record, done on the
    consumer's thread and only while its position is still right after the last returned
    one: a seek meanwhile (to the committed offsets, at the end of a rebalance) decides
    where the partition goes on, not this.  (A seek to exactly that offset in the moment
    between would be undone; it would need the partition lost, processed elsewhere up to
    there and regained within that moment.)  Returns False, and changes nothing, where the
    Faust version lacks the consumer's ``_getmany``, ``_buffered_partitions`` or its
    thread's ``call_thread`` and ``_ensure_consumer``."""
    consumer = app.consumer
    thread: Any = getattr(consumer, "_thread", None)
    if not (
        callable(getattr(consumer, "_getmany", None))
        and callable(getattr(thread, "call_thread", None))
        and callable(getattr(thread, "_ensure_consumer", None))
        and isinstance(getattr(consumer, "_buffered_partitions", None), set)
    ):
        log.warning("this faust version's fetch cannot be checked for dropped records; "
                    "records fetched for a partition paused meanwhile may be skipped")
        return False
    faust_getmany = consumer._getmany

    async def getmany(active_partitions: set[Any] | None, timeout: float) -> Any:
        if active_partitions is None:  # a client-only app: every assigned partition
            return await faust_getmany(active_partitions, timeout)
        wanted = set(active_partitions)  # the thread must not see Faust change it
        if not wanted:
            return {}
        records: Mapping[Any, Sequence[Any]] = await faust_getmany(wanted, timeout)
        # What Faust keeps (Consumer.getmany): records of active or buffered partitions.
        gone = {
            tp: (batch[0].offset, batch[-1].offset + 1)
            for tp, batch in records.items()
            if batch
            and tp not in active_partitions
            and tp not in consumer._buffered_partitions
        }
        if gone:
            await thread.call_thread(_hand_back, thread._ensure_consumer(), gone)
            records = {tp: batch for tp, batch in records.items() if tp not in gone}
        return records

    consumer._getmany = getmany
    return True


async def _hand_back(aiokafka_consumer: Any, gone: Mapping[Any, tuple[int, int]]) -> None:
    """On the consumer's thread: seek each partition of ``gone`` (tp -> first offset
    returned, offset after the last) back to its first record, unless it moved since."""
    assigned = aiokafka_consumer.assignment()
    for tp, (first, after) in gone.items():
        if tp not in assigned:
            continue  # revoked: its next owner starts from the committed offset
        if await aiokafka_consumer.position(tp) != after:
            continue  # sought meanwhile (a rebalance's seek): that position stands
        aiokafka_consumer.seek(tp, first)
        log.info("%s[%d]: %d fetched record(s) handed back to the consumer: the partition "
                 "was paused while they were fetched", tp.topic, tp.partition, after - first)
