"""The event-time window engine (DESIGN 4): pure, synchronous, storage-agnostic.

Map of the package::

    engine.py      WindowEngine: one partition's windows over a WindowStore; Outcome
    due.py         DueIndex: which keys need settling before a given time
    watermarks.py  stream time and the detour: the pure functions behind a partition's floor

The public names are re-exported here (``from worker.windows import WindowEngine``).
"""

from __future__ import annotations

from worker.windows.engine import (
    FORMAT,
    META_KEY,
    SESSION_KEY_PREFIX,
    LateEvent,
    LateReason,
    Outcome,
    StateFormatError,
    WindowEngine,
    WindowStore,
)

__all__ = [
    "FORMAT",
    "META_KEY",
    "SESSION_KEY_PREFIX",
    "LateEvent",
    "LateReason",
    "Outcome",
    "StateFormatError",
    "WindowEngine",
    "WindowStore",
]
