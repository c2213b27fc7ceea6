"""The state the engine keeps per key, as named slot classes, and its wire format.

One key's state is stored as one orjson array (changelog and RocksDB)::

    [FORMAT, stream_time_ms, windows, parked, tombstones, other_ids]
    window    [rule, start, nominal_end, cut_ms|null, anchor, session_id, signals, overflow,
               explicit_ms|null]
    signal    [event_time_ms, event_id, type, data]         (anchor has the same shape)
    parked    [event_time_ms, event_id, type, data, event_json|null, session_id]
    tombstone [rule, start, nominal_end, purge_at_ms, [event_id, ...]]

:data:`FORMAT` guards against misreading: a record of another format is refused
(:class:`StateFormatError`), not guessed.

**The wire format does not change with the classes.**  Each class's ``dump`` writes its
fields in the order its ``load`` reads them, and orjson writes the same compact form for the
same values (dict keys in their stored order, UTF-8 unescaped), so
``KeyState.load(raw).dump(stamp) == raw`` for every record this version or the engine before
these classes wrote; ``tests/unit/test_window_state_format.py`` checks it on recorded states.
A window of the layout before ``explicit_ms`` (eight fields) loads with no override and is
written back with nine, as it always was.
"""

from __future__ import annotations

from typing import Any

import orjson

from worker.rules import Signal

__all__ = [
    "FORMAT",
    "SESSION_KEY_PREFIX",
    "KeyState",
    "Parked",
    "StateFormatError",
    "Tomb",
    "Window",
]

#: Version of the stored state layout; a record with another version is refused, not guessed.
FORMAT = 1
#: Store keys of session-keyed state are prefixed so a session id can never alias a request.
SESSION_KEY_PREFIX = "session:"


class StateFormatError(ValueError):
    """A stored record is not in a layout this version can read.

    Operator action: run the worker version that wrote the state, or clear the table (open
    windows are then lost) after draining it.
    """


def dump_signal(signal: Signal) -> list[Any]:
    return [signal.time_ms, signal.event_id, signal.type, signal.data]


def load_signal(fields: list[Any]) -> Signal:
    time_ms, event_id, type_, data = fields
    return Signal(time_ms, event_id, type_, data)


class Parked:
    """An event kept until an opener claims it or its grace runs out (early signals, and
    events of carried rules parked for grace).

    ``event_json`` is the whole event, so that one no window claims reaches the late topic
    intact; None for an event of a carried rule, which is (almost) never late.
    """

    __slots__ = ("event_json", "session_id", "signal")

    def __init__(self, signal: Signal, event_json: str | None, session_id: str | None) -> None:
        self.signal = signal
        self.event_json = event_json
        self.session_id = session_id

    def dump(self) -> list[Any]:
        s = self.signal
        return [s.time_ms, s.event_id, s.type, s.data, self.event_json, self.session_id]

    @classmethod
    def load(cls, fields: list[Any]) -> Parked:
        time_ms, event_id, type_, data, event_json, session_id = fields
        return cls(Signal(time_ms, event_id, type_, data), event_json, session_id)


class Tomb:
    """What a closed window (or an instant decision) leaves until ``purge_at_ms``: enough to
    report events for it as late and to keep dedupe exact for the events it covered."""

    __slots__ = ("ids", "nominal_end", "purge_at_ms", "rule", "start")

    def __init__(
        self, rule: str, start: int, nominal_end: int, purge_at_ms: int, ids: list[str]
    ) -> None:
        self.rule = rule
        self.start = start
        self.nominal_end = nominal_end
        self.purge_at_ms = purge_at_ms
        self.ids = ids

    def covers(self, rule: str, t: int) -> bool:
        """Whether an event of ``rule`` at ``t`` fell inside the closed window."""
        return self.rule == rule and self.start <= t <= self.nominal_end

    def overlaps(self, rule: str, start: int, end: int) -> bool:
        """Whether a window of ``rule`` over [start, end] would overlap the closed one."""
        return self.rule == rule and start <= self.nominal_end and end >= self.start

    def starts_at(self, rule: str, t: int) -> bool:
        """Whether the closed window (an instant's) is ``rule``'s at ``t``: same decision id."""
        return self.rule == rule and self.start == t

    def dump(self) -> list[Any]:
        return [self.rule, self.start, self.nominal_end, self.purge_at_ms, self.ids]

    @classmethod
    def load(cls, fields: list[Any]) -> Tomb:
        rule, start, nominal_end, purge_at_ms, ids = fields
        return cls(rule, start, nominal_end, purge_at_ms, ids)


class Window:
    """An open window: its rule, range, anchor (the opener) and the signals it collected."""

    __slots__ = (
        "anchor",
        "cut",
        "explicit_ms",
        "nominal_end",
        "overflow",
        "rule",
        "session_id",
        "signals",
        "start",
    )

    def __init__(
        self,
        rule: str,
        start: int,
        nominal_end: int,
        cut: int | None,
        anchor: Signal,
        session_id: str | None,
        signals: list[Signal],
        overflow: int,
        explicit_ms: int | None = None,
    ) -> None:
        self.rule = rule
        self.start = start
        self.nominal_end = nominal_end
        self.cut = cut  # event time of the earliest decisive signal, if any
        self.anchor = anchor
        self.session_id = session_id
        self.signals = signals
        self.overflow = overflow  # signals over the cap, not stored
        self.explicit_ms = explicit_ms  # earliest overriding decision's time, if any

    @property
    def end(self) -> int:
        """The effective end: the nominal end, or the decisive signal's time."""
        return self.nominal_end if self.cut is None else min(self.cut, self.nominal_end)

    def dump(self) -> list[Any]:
        return [
            self.rule,
            self.start,
            self.nominal_end,
            self.cut,
            dump_signal(self.anchor),
            self.session_id,
            [dump_signal(s) for s in self.signals],
            self.overflow,
            self.explicit_ms,
        ]

    @classmethod
    def load(cls, fields: list[Any]) -> Window:
        rule, start, nominal_end, cut, anchor, session_id, signals, overflow, *rest = fields
        if len(rest) > 1:
            raise ValueError(f"a window has {len(fields)} fields, expected 8 or 9")
        return cls(
            rule,
            start,
            nominal_end,
            cut,
            load_signal(anchor),
            session_id,
            [load_signal(s) for s in signals],
            overflow,
            rest[0] if rest else None,
        )


class KeyState:
    """Everything the engine keeps for one key.

    ``ids`` (every event id the state holds, for dedupe) and ``persisted`` (whether the store
    has a record of the key) are derived or runtime-only, and not written.
    """

    __slots__ = ("ids", "other", "parked", "persisted", "tombs", "windows")

    def __init__(self) -> None:
        self.windows: list[Window] = []
        self.parked: list[Parked] = []
        self.tombs: list[Tomb] = []
        self.other: list[str] = []  # ids of events that changed nothing (capped)
        self.ids: set[str] = set()
        self.persisted = False

    def is_empty(self) -> bool:
        return not (self.windows or self.parked or self.tombs)

    def collect_ids(self) -> set[str]:
        ids = set(self.other)
        for w in self.windows:
            ids.add(w.anchor.event_id)
            ids.update(s.event_id for s in w.signals)
        ids.update(h.signal.event_id for h in self.parked)
        for tomb in self.tombs:
            ids.update(tomb.ids)
        return ids

    def dump(self, stream_time_ms: int) -> bytes:
        """The stored record, stamped with the stream time of the write."""
        return orjson.dumps(
            [
                FORMAT,
                stream_time_ms,
                [w.dump() for w in self.windows],
                [h.dump() for h in self.parked],
                [t.dump() for t in self.tombs],
                self.other,
            ]
        )

    @classmethod
    def load(cls, key: str, raw: bytes) -> tuple[KeyState, int]:
        """The state stored under ``key``, and the stream time it was written at."""
        try:
            fmt, stream_time_ms, windows, parked, tombs, other = orjson.loads(raw)
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            raise StateFormatError(f"window state of {key!r} is unreadable: {exc}") from exc
        if fmt != FORMAT:
            raise StateFormatError(
                f"window state of {key!r} has format {fmt!r}, expected {FORMAT}"
            )
        state = cls()
        try:
            state.windows = [Window.load(w) for w in windows]
            state.parked = [Parked.load(h) for h in parked]
            state.tombs = [Tomb.load(t) for t in tombs]
        except (ValueError, TypeError) as exc:
            raise StateFormatError(f"window state of {key!r} is malformed: {exc}") from exc
        state.other = other
        state.ids = state.collect_ids()
        state.persisted = True
        return state, stream_time_ms
