"""What the delivery engine knows of each state: the table, decoded copies, and outcomes
whose ``result`` record is not applied yet.

Invariants, and why they hold:

* **Decoded copies are the table's state.**  The engine is the table's only writer and
  writes through (:meth:`KnownStates.write`), so a copy it keeps is the table's state until a
  recovery rewrites the table; the copies are then dropped (:meth:`KnownStates.drop_decoded`).
* **A settled version is not sent again.**  A version settled (2xx or given up) is kept in
  memory until its result record is applied: until then the table still says "due" and must
  not be believed (:meth:`KnownStates.is_due`, :meth:`KnownStates.as_known`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from worker.delivery_state import FeedbackState

if TYPE_CHECKING:
    from worker.clock import Clock
    from worker.delivery_ports import KeyValueTable

__all__ = ["KnownStates"]

#: Decoded states kept in memory (the most recently written due ones); a backlog beyond this
#: is read from the table again when it is sent.
_DECODED_MAX = 4_096


class KnownStates:
    """The ``delivery-state`` table as the engine sees it; see the module docstring."""

    def __init__(self, table: KeyValueTable, *, clock: Clock) -> None:
        self.table = table
        self._clock = clock
        #: Versions settled (2xx or given up) whose result record the agent has not applied to
        #: the table yet: until it has, the table still says "due", and must not be believed.
        self._settled: dict[bytes, tuple[int, bool]] = {}  # key -> (version, delivered?)
        #: Decoded states, written through (see the module docstring).
        self._decoded: dict[bytes, FeedbackState] = {}

    def is_due(self, table_key: bytes, state: FeedbackState) -> bool:
        return state.due and state.version > self.settled_version(table_key)

    def settled_version(self, table_key: bytes) -> int:
        return self._settled.get(table_key, (0, True))[0]

    def settled(self, table_key: bytes, version: int, *, delivered: bool) -> None:
        """``version`` is settled; its result record is on its way."""
        self._settled[table_key] = (version, delivered)

    def applied(self, table_key: bytes, state: FeedbackState) -> None:
        """A result record was applied: the table now knows what memory knew, or more."""
        if max(state.sent, state.dead) >= self.settled_version(table_key):
            self._settled.pop(table_key, None)

    def counted_version(self, table_key: bytes) -> int:
        """The highest version whose decisions are counted (delivered or dead): known in
        memory until its result record is applied, then in the table.  Read both when a call
        ends, not from the call's copy of the state: a record applied meanwhile moves it."""
        stored = self.read(table_key)
        in_table = max(stored.sent, stored.dead) if stored is not None else 0
        return max(self.settled_version(table_key), in_table)

    def as_known(self, table_key: bytes, state: FeedbackState) -> FeedbackState:
        """``state`` with the outcome this process already knows applied (its result record
        may still be on its way), so a merge does not file a decision under a settled version."""
        known = self._settled.get(table_key)
        if known is None:
            return state
        version, delivered = known
        now_ms = self._clock.now_ms()
        return (state.delivered(version, now_ms=now_ms) if delivered
                else state.given_up(version, now_ms=now_ms))

    def read(self, table_key: bytes) -> FeedbackState | None:
        state = self._decoded.get(table_key)
        if state is None:
            raw = self.table.get(table_key)
            if raw is None:
                return None
            state = FeedbackState.from_json(raw)
        return state

    def write(self, table_key: bytes, state: FeedbackState) -> None:
        """Write ``state`` to the table and keep it decoded while it may be read
        again soon: until it is settled.  Settled states are read only by a later merge."""
        self.table[table_key] = state.to_json()
        self._decoded.pop(table_key, None)
        if state.due:
            self._decoded[table_key] = state  # last in the eviction order
            if len(self._decoded) > _DECODED_MAX:
                del self._decoded[next(iter(self._decoded))]

    def forget(self, table_key: bytes) -> None:
        self._decoded.pop(table_key, None)
        with contextlib.suppress(KeyError):
            del self.table[table_key]

    def drop_decoded(self, keys: Iterable[bytes] | None = None) -> None:
        """Drop the decoded copies of ``keys`` (all when None): the table may change under them."""
        if keys is None:
            self._decoded.clear()
            return
        for table_key in list(keys):
            del self._decoded[table_key]

    def decoded_keys(self) -> list[bytes]:
        return list(self._decoded)
