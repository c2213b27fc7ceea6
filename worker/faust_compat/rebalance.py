"""Faust commits only offsets whose records were processed, across rebalances too.

Invariant: an offset of a stream partition is committed only once every record below it
was handed to an agent and acknowledged, or Faust recorded it as a gap (:func:`count_gaps`
makes every such gap visible).  The windows adapter acknowledges a record only after its
window state reached the changelog (:mod:`worker.agents.windows`), so a commit never covers
state that is still in memory, and a partition that moves is taken over exactly where its
state ends.

Why Faust alone does not keep it.  After every rebalance its table recovery ends in this
order (``Recovery._resume_streams``): (1) resume fetching the stream partitions; (2) seek
them to their committed offsets (``Consumer.perform_seek``), which also resets Faust's
per-partition read offset to the committed one.  Records fetched between the two keep
arriving after the seek, far above the reset read offset, and Faust takes that jump for a gap
(as compaction or transaction markers leave) and counts the offsets in it as acknowledged:
the next commit covers records whose state may still be in memory.
:func:`seek_before_fetch` keeps stream partitions resumed during a rebalance paused until the
seek has finished, so the first record a partition hands on after a rebalance is the one at
its committed offset.

And in its fetch: Faust asks the consumer thread for records of its *active* partitions,
passing its live set of them, and drops what comes back for a partition no longer in that
set (paused meanwhile).  The consumer's position has moved past those records, and only a
later seek brings them back; when the fetch returns after the rebalance's seek (it waits up
to a second for data, a quick recovery takes less), nothing does, and the next record looks
like the end of a gap.  The set is also shared with the consumer thread while Faust changes
it, and aiokafka reads an empty set as "every partition".  :func:`keep_dropped_records`
fetches a copy of the set and hands what Faust would drop back to the consumer.

Both are correctness patches: :func:`seek_before_fetch` and :func:`keep_dropped_records`
raise :class:`~worker.errors.IncompatibleLibraryError` when they cannot install, and the
worker does not start.  :func:`count_gaps` only reports (a log line and a metric), so where
it cannot install it warns and the worker runs without the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from worker.faust_compat.names import incompatible

__all__ = ["count_gaps", "keep_dropped_records", "seek_before_fetch"]

log = logging.getLogger(__name__)


def seek_before_fetch(app: Any) -> None:
    """Keep the stream partitions Faust resumes during a rebalance paused until its seek to
    the committed offsets has finished.

    Changelog partitions pass straight through: recovery reads them before the seek.
    Raises :class:`~worker.errors.IncompatibleLibraryError` (and changes nothing) where the
    Faust version lacks the consumer's ``resume_partitions``, ``pause_partitions``,
    ``perform_seek``, ``assignment`` or the app's ``rebalancing`` flag."""
    consumer = app.consumer
    missing = [
        f"Consumer.{name}"
        for name in ("resume_partitions", "pause_partitions", "perform_seek", "assignment")
        if not callable(getattr(consumer, name, None))
    ]
    if not hasattr(app, "rebalancing"):
        missing.append("App.rebalancing")
    if missing:
        raise incompatible(
            f"{__name__}.seek_before_fetch", missing,
            "a rebalance may commit past records whose window state is not written",
        )
    faust_resume_partitions = consumer.resume_partitions
    faust_pause_partitions = consumer.pause_partitions
    faust_perform_seek = consumer.perform_seek
    kept_paused: set[Any] = set()

    def pause_partitions(tps: Iterable[Any]) -> None:
        # A new rebalance pauses everything again: what it resumes later is kept paused anew,
        # and a seek meanwhile must not resume what was kept paused for the previous one.
        tps = set(tps)
        kept_paused.difference_update(tps)
        faust_pause_partitions(tps)

    def resume_partitions(tps: Iterable[Any]) -> None:
        tps = set(tps)
        if app.rebalancing:
            streams = {tp for tp in tps if tp.topic not in app.tables.changelog_topics}
            kept_paused.update(streams)
            tps -= streams
        if tps:
            faust_resume_partitions(tps)

    async def perform_seek() -> None:
        # Only a seek that starts after the resume covers the partitions kept paused (Faust also
        # seeks at other moments, such as a fetch that finds the flow stopped).
        release = bool(kept_paused)
        await faust_perform_seek()
        if release and kept_paused:
            # Only what is still assigned: a newer rebalance may have taken some away.
            resumed = kept_paused & set(consumer.assignment())
            kept_paused.clear()
            faust_resume_partitions(resumed)

    consumer.resume_partitions = resume_partitions
    consumer.pause_partitions = pause_partitions
    consumer.perform_seek = perform_seek


def count_gaps(app: Any, on_gap: Callable[[str, int], object]) -> bool:
    """Call ``on_gap(topic, missing)`` and log each time Faust records a gap in a stream
    partition's offsets (offsets it will commit past without an acknowledgement).

    Reporting only: returns False, with a warning, where this Faust version has no
    ``Consumer._add_gap``; the worker runs on without the report."""
    consumer = app.consumer
    faust_add_gap = getattr(consumer, "_add_gap", None)
    if not callable(faust_add_gap):
        log.warning("this faust version's gaps in stream partitions cannot be counted "
                    "(feedback_consumer_offsets_skipped_total stays 0)")
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


def keep_dropped_records(app: Any) -> None:
    """Fetch only the partitions active when the fetch starts, and hand back to the consumer
    what comes back for partitions that stopped being active meanwhile (module docstring).

    "Hand back" is a seek of the partition to its first returned record, done on the
    consumer's thread and only while its position is still right after the last returned
    one: a seek meanwhile (to the committed offsets, at the end of a rebalance) decides
    where the partition goes on, not this.  (A seek to exactly that offset in the moment
    between would be undone; it would need the partition lost, processed elsewhere up to
    there and regained within that moment.)  Raises
    :class:`~worker.errors.IncompatibleLibraryError` (and changes nothing) where the Faust
    version lacks the consumer's ``_getmany``, ``_buffered_partitions`` or its thread's
    ``call_thread`` and ``_ensure_consumer``."""
    consumer = app.consumer
    thread: Any = getattr(consumer, "_thread", None)
    missing = [
        what
        for what, present in (
            ("Consumer._getmany", callable(getattr(consumer, "_getmany", None))),
            ("Consumer._buffered_partitions (a set)",
             isinstance(getattr(consumer, "_buffered_partitions", None), set)),
            ("Consumer._thread.call_thread", callable(getattr(thread, "call_thread", None))),
            ("Consumer._thread._ensure_consumer",
             callable(getattr(thread, "_ensure_consumer", None))),
        )
        if not present
    ]
    if missing:
        raise incompatible(
            f"{__name__}.keep_dropped_records", missing,
            "records fetched for a partition paused meanwhile may be skipped and committed "
            "unprocessed",
        )
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
