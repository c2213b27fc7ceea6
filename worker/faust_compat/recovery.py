"""What the worker does when a changelog is shorter than its local store says.

Invariant: such a changelog never stops the worker and never costs it its local state; each
one is reported (an error log and ``feedback_changelog_behind_store_total``).  The report is
the only part that reads Faust's internals (``Recovery``'s offsets and highwaters); where it
cannot install, a warning says so and the worker runs on, keeping its state as before.

Each RocksDB partition remembers the last changelog offset it has applied, and recovery reads
the changelog from there.  If the broker's changelog ends before that offset, it lost records
the store has: the topic was deleted and created again, or the broker lost its data (the
in-memory Tansu broker of the tests and the demo loses everything on restart).  Or the broker
reports a wrong end: Tansu's ListOffsets answer after multi-record batches is too low
(DESIGN 2), so there a plain warm restart looks the same.

Faust's answer is its ``recovery_consistency_check``: it raises ``ConsistencyError`` and
the worker exits, and restarts on the same state directory exit again until an operator
deletes the state.  The worker turns that check off (:func:`worker.app.build_app`) and
uses :func:`report_lost_changelogs` instead: it keeps the local state (the only copy left of
what the changelog lost, such as open windows and the decisions already made) and carries
on, logs an error per partition and counts it in ``feedback_changelog_behind_store_total``.

Nothing needs rewinding: recovery reads nothing from such a partition (its store is ahead),
and the store's remembered offset is replaced by the changelog's own offset at the next
write (Faust's tables on send, :meth:`worker.faust_compat.stores.TableIO.committed` for the
windows).  What is lost stays lost for any *other* worker that takes the partition over
later: it can only rebuild what the changelog still has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["report_lost_changelogs"]

log = logging.getLogger(__name__)


def report_lost_changelogs(app: Any, on_lost: Callable[[Any, int, int], object]) -> bool:
    """At the end of each recovery, call ``on_lost(tp, store_offset, changelog_end)`` (and
    log an error) for every changelog partition whose end lies before the offset its local
    store has applied.

    Reporting only (the state is kept by ``recovery_consistency_check=False`` either way):
    returns False, with a warning, and changes nothing where the Faust version's recovery
    lacks what this reads; the worker runs on without the report."""
    recovery = app.tables.recovery
    names = ("on_recovery_completed", "active_offsets", "active_highwaters",
             "standby_offsets", "standby_highwaters")
    if not all(hasattr(recovery, name) for name in names):
        log.warning("this faust version's recovery cannot be checked for lost changelogs")
        return False
    faust_completed = recovery.on_recovery_completed

    async def on_recovery_completed(generation_id: int = 0) -> None:
        for kind, stored, ends in (
            ("active", recovery.active_offsets, recovery.active_highwaters),
            ("standby", recovery.standby_offsets, recovery.standby_highwaters),
        ):
            for tp, store_offset, changelog_end in behind(stored, ends):
                log.error(
                    "changelog %s[%d] ends at offset %d but this worker's %s store has "
                    "applied up to %d: the broker lost changelog records (topic re-created "
                    "or broker data lost) or reports a wrong end offset. Keeping the local "
                    "state; a worker that takes this partition over later can only rebuild "
                    "what the changelog has.",
                    tp.topic, tp.partition, changelog_end, kind, store_offset,
                )
                on_lost(tp, store_offset, changelog_end)
        await faust_completed(generation_id)

    recovery.on_recovery_completed = on_recovery_completed
    return True


def behind(
    stored: Mapping[Any, int | None], ends: Mapping[Any, int | None]
) -> list[tuple[Any, int, int]]:
    """``(tp, store_offset, changelog_end)`` for each partition whose store is past the end
    of its changelog.  Both are offsets of the last record (Faust's convention: -1 when
    there is none)."""
    found = []
    for tp, changelog_end in ends.items():
        store_offset = stored.get(tp)
        if store_offset is not None and changelog_end is not None and store_offset > changelog_end:
            found.append((tp, store_offset, changelog_end))
    return found
