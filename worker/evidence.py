"""Evidence as Helicone properties (opt-in, ``HELICONE_EVIDENCE_PROPERTIES``): what is set,
and the lane that holds it until it may be sent.

This module is pure: decisions in, calls out, time as data (``now_ms``).  The adapter that
makes the calls, inside the delivery engine's budget, is :mod:`worker.evidence_sender`.

Map of the module::

    RULE_PROPERTY, SIGNALS_PROPERTY   the two property keys set on a rated request
    signal_names(signals)             short stable names of a decision's evidence, capped
    evidence_properties(decision)     the properties one decision sets, or None
    not_found_wait_ms(n, horizon)     when a "Request not found" is tried again, or None
    PropertyCall                      one ``PUT /v1/request/{id}/property`` to make
    PropertyLane                      properties waiting per request: replaced, not queued
    Pending                           what the lane holds for one request, as it is persisted

What holds, and why:

* **Properties follow the rating that Helicone stores.**  Only request decisions with a rating
  set them, and a decision replaces a request's properties only when its
  :func:`~worker.delivery_state.rating_rank` is higher than that of the properties held or
  sent (an explicit thumbs beats any implicit rating, then the later window).  That is the
  order the delivery state uses for the rating itself, so the properties name the rule whose
  rating is in force, whatever order decisions arrive in; a duplicate or replayed decision
  ranks equal and costs nothing.
* **Replaced, not queued.**  A request has at most one entry; a newer decision replaces the
  properties still to be sent, so a request costs two calls however often it is decided
  while it waits.
* **One call per request at a time.**  Helicone sets a property by reading the request's
  latest row and writing it again with the key added (``VersionedRequestStore
  .addPropertyToRequest``), so two calls for one request in flight together could each drop
  the other's key.  The lane hands out a request's properties one after the other.
* **"Request not found" is retried for a bounded time, then dropped, never dead-lettered.**
  Helicone answers 500 "Request not found" until it has logged the request; its own code
  waits 30, 75 and 187 s.  The lane waits 1/10, 1/4 and 5/8 of the horizon
  (``HELICONE_PROPERTY_NOT_FOUND_S``, 300 s: the same waits) and then drops the entry with a
  reason.  The dead-letter topic is for decisions whose *rating* could not be stored and can
  be redriven; a property is a label on a rating that was already delivered, and a request
  still unknown after five minutes was most likely never logged (wrong id, logging off), so
  no redrive could help and dead letters would bury the ones that matter.
* **Bounded.**  At most ``max_pending`` entries wait; past that the oldest waiting one is
  dropped (reason ``overflow``).  The ranks of settled requests are remembered for the last
  ``remember`` requests only: beyond that an old decision arriving very late could set older
  properties again, which costs two calls and no rating.
* **What a restart needs is all in** :class:`Pending`.  :meth:`PropertyLane.snapshot` gives a
  request's properties still to be sent with its absolute due time (wall clock, ms) and its
  counters ("Request not found" answers, retryable failures, first failure);
  :meth:`PropertyLane.restore` puts it back as it was, so the attempt schedule resumes where
  it stood instead of starting again.  :meth:`PropertyLane.take_changed` names the requests
  whose snapshot changed since it was last asked, for :mod:`worker.evidence_store` to write.
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from worker.delivery_state import Rank, rating_rank
from worker.events import is_helicone_request_id

if TYPE_CHECKING:
    from worker.delivery import RetryPolicy
    from worker.events import Decision, Evidence

__all__ = [
    "DROP_REASONS",
    "RULE_PROPERTY",
    "SIGNALS_MAX_CHARS",
    "SIGNALS_PROPERTY",
    "DropReason",
    "LaneOutcome",
    "Pending",
    "PropertyCall",
    "PropertyLane",
    "evidence_properties",
    "not_found_wait_ms",
    "signal_names",
]

#: The rule whose rating Helicone holds for the request (``engagement``, ``explicit``...).
RULE_PROPERTY: Final = "Feedback-Rule"
#: What that rule saw, as short names: ``copied,long_read``.
SIGNALS_PROPERTY: Final = "Feedback-Signals"
#: The longest ``Feedback-Signals`` value: short enough to read in a dashboard column.
SIGNALS_MAX_CHARS: Final = 100
#: The value when a decision cites no evidence with a name.
NO_SIGNALS: Final = "none"

#: Short names of event types, where the type alone says what happened.
_TYPE_NAMES: Final[dict[str, str]] = {
    "response_copied": "copied",
    "response_shared": "shared",
    "link_clicked": "link",
    "response_regenerated": "regenerated",
    "human_requested": "human",
    "page_left": "left",
    "message_sent": "message",
    "suggestion_accepted": "accepted",
    "suggestion_modified": "modified",
    "suggestion_rejected": "rejected",
    "result_clicked": "clicked",
    "ticket_opened": "ticket",
    "ticket_resolved": "resolved",
    "ticket_reopened": "reopened",
    "session_feedback_given": "thumbs",
    "score_reported": "score",
    "signals_dropped": "capped",
}
#: Openers: the context of a window, not evidence about it.
_CONTEXT_TYPES: Final = frozenset({"response_shown", "suggestion_shown", "results_shown"})
#: The engagement rule's summary on its anchor (worker.rules.engagement.decide): its own
#: classification, with the derived kinds (long_read, quick_exit, repeat...).
_SUMMARY: Final = re.compile(r"positive: (?P<positive>[^;]*); negative: (?P<negative>.*)$")
#: Labels the engagement rule writes on single messages that its summary leaves out.
_MESSAGE_LABELS: Final = frozenset({"correction"})
_NOT_NAME: Final = re.compile(r"[^a-z0-9_]+")
_MAX_NAME_CHARS: Final = 32

#: How a property call ended, as the lane needs to know it.
LaneOutcome = Literal["ok", "not_found", "retryable", "rejected", "auth"]
#: Why properties were given up (the ``reason`` label of ``feedback_property_dropped_total``).
DropReason = Literal["not_found", "rejected", "max_attempts", "max_age", "overflow"]
DROP_REASONS: tuple[DropReason, ...] = (
    "not_found", "rejected", "max_attempts", "max_age", "overflow",
)
#: The not-found waits as shares of the horizon: 30, 75 and 187.5 s of 300 s, as Helicone's.
_NOT_FOUND_SHARES: Final = (0.1, 0.25, 0.625)


def _name(text: str) -> str:
    return _NOT_NAME.sub("_", text.strip().lower()).strip("_")[:_MAX_NAME_CHARS]


def _names_of(evidence: Evidence) -> Iterable[str]:
    """The names one piece of evidence contributes when no summary is present."""
    if evidence.type in _CONTEXT_TYPES:
        return ()
    if evidence.type == "feedback_given":
        return ("thumbs_down" if evidence.detail == "thumbs down" else "thumbs_up",)
    return (_TYPE_NAMES.get(evidence.type, evidence.type),)


def signal_names(signals: Sequence[Evidence], *, max_chars: int = SIGNALS_MAX_CHARS) -> str:
    """Short, stable names of what a decision cites, comma-separated: ``copied,long_read``.

    Where the rule summarised its own classification (engagement: ``positive: ...;
    negative: ...``) those kinds are the names, with ``correction`` if a message was one;
    otherwise each cited event gives a short name of its type (openers give none).  Names are
    lower-case ``[a-z0-9_]``, at most 32 characters, without duplicates, sorted, so equal
    evidence gives an equal value.  The result is never longer than ``max_chars``: names that
    do not fit are counted in a last ``+N``.  No evidence with a name gives ``none``.
    """
    if max_chars < 16:
        raise ValueError("max_chars must be >= 16")
    summary = [m for e in signals if e.detail and (m := _SUMMARY.search(e.detail))]
    raw: list[str] = []
    if summary:
        for match in summary:
            for group in ("positive", "negative"):
                raw.extend(part for part in match.group(group).split(",") if part.strip() != "-")
        raw.extend(e.detail for e in signals if e.detail in _MESSAGE_LABELS)
    else:
        for evidence in signals:
            raw.extend(_names_of(evidence))
    names = sorted({name for name in map(_name, raw) if name})
    if not names:
        return NO_SIGNALS
    for kept in range(len(names), -1, -1):
        omitted = len(names) - kept
        value = ",".join([*names[:kept], *([f"+{omitted}"] if omitted else [])])
        if len(value) <= max_chars:
            return value
    raise AssertionError("unreachable: '+N' alone always fits")  # pragma: no cover


def evidence_properties(decision: Decision) -> tuple[tuple[str, str], ...] | None:
    """The properties ``decision`` sets on its request, in the order they are sent, or None.

    None for a session decision (Helicone has no property call for sessions), a request id
    Helicone would refuse, or a decision without a rating (scores alone change no rule).
    """
    if decision.target != "request" or decision.rating is None:
        return None
    if decision.request_id is None or not is_helicone_request_id(decision.request_id):
        return None
    return (
        (RULE_PROPERTY, decision.rule),
        (SIGNALS_PROPERTY, signal_names(decision.signals)),
    )


def not_found_wait_ms(answers: int, horizon_s: float) -> int | None:
    """How long to wait after the ``answers``-th "Request not found" in a row, or None: drop.

    Three waits, at 1/10, 1/4 and 5/8 of the horizon (30, 75, 187.5 s of 300 s); their sum
    stays inside it, so a request is given up within the horizon plus three calls.
    """
    if answers < 1:
        raise ValueError("answers counts not-found answers and starts at 1")
    if answers > len(_NOT_FOUND_SHARES):
        return None
    return max(1, round(horizon_s * _NOT_FOUND_SHARES[answers - 1] * 1000))


@dataclass(frozen=True, slots=True)
class PropertyCall:
    """One property to set; ``generation`` tells the lane whether it is still current."""

    request_id: str
    key: str
    value: str
    generation: int


@dataclass(frozen=True, slots=True)
class Pending:
    """One request's entry as it outlives the process: what to send, when, and how its calls
    fared so far (``due_ms`` is wall-clock time, so it means the same after a restart)."""

    rank: Rank
    properties: tuple[tuple[str, str], ...]
    due_ms: int
    not_found: int = 0
    attempts: int = 0
    first_failed_ms: int | None = None


@dataclass(slots=True)
class _Entry:
    """A request's properties still to be sent, and how its calls fared."""

    rank: Rank
    pending: tuple[tuple[str, str], ...]
    generation: int
    due_ms: int
    in_flight: bool = False
    attempts: int = 0  # retryable failures, for the retry policy
    first_failed_ms: int | None = None
    not_found: int = 0  # "Request not found" answers in a row


class PropertyLane:
    """Properties waiting per request (see the module docstring for what holds).

    ``offer`` adds or replaces a request's properties; ``take`` hands out the next call that
    is due (never two of one request at a time); ``done`` reports how it ended.  Given-up
    entries are reported to ``on_drop`` with their reason.  With ``track_changes`` it
    remembers which requests' :meth:`snapshot` changed, for :meth:`take_changed`.
    """

    def __init__(
        self,
        *,
        policy: RetryPolicy,
        not_found_horizon_s: float,
        max_pending: int = 50_000,
        remember: int = 65_536,
        on_drop: Callable[[DropReason], None] | None = None,
        track_changes: bool = False,
    ) -> None:
        if not not_found_horizon_s > 0 or max_pending < 1 or remember < 0:
            raise ValueError("need not_found_horizon_s > 0, max_pending >= 1, remember >= 0")
        self._policy = policy
        self._horizon_s = not_found_horizon_s
        self._max_pending = max_pending
        self._remember = remember
        self._on_drop = on_drop
        self._entries: dict[str, _Entry] = {}
        self._settled: OrderedDict[str, Rank] = OrderedDict()
        self._heap: list[tuple[int, int, str]] = []
        self._tie = itertools.count()
        self._track = track_changes
        self._changed: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"PropertyLane(pending={len(self._entries)}, settled={len(self._settled)})"

    def offer(
        self,
        request_id: str,
        rank: Rank,
        properties: tuple[tuple[str, str], ...],
        *,
        now_ms: int,
    ) -> Literal["new", "replaced", "stale"]:
        """Add ``properties`` for ``request_id``, or replace those waiting if ``rank`` is
        higher than theirs (or than the last sent); ``stale`` when it is not."""
        entry = self._entries.get(request_id)
        known = entry.rank if entry is not None else self._settled.get(request_id)
        if known is not None and rank <= known:
            return "stale"
        if entry is not None:
            # Keeps its place and its retry counters: the request is the same one.
            entry.rank, entry.pending = rank, properties
            entry.generation += 1
            self._changed_now(request_id)
            return "replaced"
        self._add(request_id, _Entry(rank, properties, 0, now_ms))
        self._changed_now(request_id)
        return "new"

    def _add(self, request_id: str, entry: _Entry) -> None:
        if len(self._entries) >= self._max_pending:
            self._evict_oldest()
        self._entries[request_id] = entry
        heapq.heappush(self._heap, (entry.due_ms, next(self._tie), request_id))

    def snapshot(self, request_id: str) -> Pending | None:
        """What ``request_id`` has waiting, as it would be restored; None when nothing."""
        entry = self._entries.get(request_id)
        if entry is None:
            return None
        return Pending(
            entry.rank, entry.pending, entry.due_ms,
            entry.not_found, entry.attempts, entry.first_failed_ms,
        )

    def restore(self, request_id: str, saved: Pending) -> bool:
        """Put back an entry saved by an earlier process (or the partition's previous owner).

        Does nothing (False) when the lane already holds the request (what it holds is at
        least as recent) or has settled it at an equal or higher rank.  The entry is due at
        its saved time, with its saved counters: the schedule goes on, it does not restart.
        """
        known = self._settled.get(request_id)
        if request_id in self._entries or not saved.properties or (
            known is not None and saved.rank <= known
        ):
            return False
        self._add(request_id, _Entry(
            saved.rank, saved.properties, 0, saved.due_ms, attempts=saved.attempts,
            first_failed_ms=saved.first_failed_ms, not_found=saved.not_found,
        ))
        return True

    def _changed_now(self, request_id: str) -> None:
        if self._track:
            self._changed.add(request_id)

    def take_changed(self) -> set[str]:
        """The requests whose :meth:`snapshot` changed (or ended) since the last call
        (always empty unless the lane was made with ``track_changes``)."""
        changed, self._changed = self._changed, set()
        return changed

    def offer_decision(self, decision: Decision, *, now_ms: int) -> str | None:
        """:meth:`offer` what ``decision`` sets (None: it sets nothing)."""
        properties = evidence_properties(decision)
        if properties is None or decision.request_id is None:
            return None
        return self.offer(decision.request_id, rating_rank(decision), properties, now_ms=now_ms)

    def next_due_ms(self) -> int | None:
        """When the earliest waiting call may go (stale index entries dropped), or None."""
        while self._heap:
            due_ms, _, request_id = self._heap[0]
            entry = self._entries.get(request_id)
            if entry is None or entry.in_flight or entry.due_ms != due_ms:
                heapq.heappop(self._heap)
                continue
            return due_ms
        return None

    def take(self, now_ms: int) -> PropertyCall | None:
        """The next call due at ``now_ms``, marked in flight; None if none is due."""
        due_ms = self.next_due_ms()
        if due_ms is None or due_ms > now_ms:
            return None
        _, _, request_id = heapq.heappop(self._heap)
        entry = self._entries[request_id]
        entry.in_flight = True
        key, value = entry.pending[0]
        return PropertyCall(request_id, key, value, entry.generation)

    def done(
        self,
        call: PropertyCall,
        outcome: LaneOutcome,
        *,
        now_ms: int,
        retry_after_s: float | None = None,
        wait_ms: int = 0,
    ) -> None:
        """How ``call`` ended.  ``wait_ms`` is the auth pause's wait (outcome ``auth``)."""
        entry = self._entries.get(call.request_id)
        if entry is None:
            return
        entry.in_flight = False
        self._changed_now(call.request_id)
        current = entry.generation == call.generation
        if outcome == "ok" or (outcome == "rejected" and not current):
            if current:
                entry.pending = entry.pending[1:]
                entry.not_found, entry.attempts, entry.first_failed_ms = 0, 0, None
            if not entry.pending:
                self._settle(call.request_id, entry)
            else:
                self._schedule(call.request_id, entry, now_ms)
            return
        due_ms = self._after_failure(entry, outcome, now_ms, retry_after_s, wait_ms)
        if isinstance(due_ms, str):
            self._drop(call.request_id, due_ms)
        else:
            self._schedule(call.request_id, entry, due_ms)

    def _after_failure(
        self,
        entry: _Entry,
        outcome: LaneOutcome,
        now_ms: int,
        retry_after_s: float | None,
        wait_ms: int,
    ) -> int | DropReason:
        """When to try again after a failed call, or why to give up."""
        if outcome == "auth":
            return now_ms + max(1, wait_ms)  # the key, not the call: no attempt counted
        if outcome == "rejected":
            return "rejected"
        if outcome == "not_found":
            entry.not_found += 1
            wait = not_found_wait_ms(entry.not_found, self._horizon_s)
            return "not_found" if wait is None else now_ms + wait
        entry.attempts += 1
        if entry.first_failed_ms is None:
            entry.first_failed_ms = now_ms
        at_ms = self._policy.next_attempt_at(
            entry.attempts,
            first_attempt_ms=entry.first_failed_ms,
            now_ms=now_ms,
            retry_after_s=retry_after_s,
        )
        if at_ms is None:
            return "max_attempts" if entry.attempts >= self._policy.max_attempts else "max_age"
        return at_ms

    def _schedule(self, request_id: str, entry: _Entry, due_ms: int) -> None:
        entry.due_ms = due_ms
        heapq.heappush(self._heap, (due_ms, next(self._tie), request_id))

    def _settle(self, request_id: str, entry: _Entry) -> None:
        del self._entries[request_id]
        if self._remember:
            self._settled[request_id] = entry.rank
            self._settled.move_to_end(request_id)
            while len(self._settled) > self._remember:
                self._settled.popitem(last=False)

    def _drop(self, request_id: str, reason: DropReason) -> None:
        entry = self._entries[request_id]
        self._changed_now(request_id)
        self._settle(request_id, entry)  # an equal or older decision must not bring it back
        if self._on_drop is not None:
            self._on_drop(reason)

    def _evict_oldest(self) -> None:
        for request_id, entry in self._entries.items():
            if not entry.in_flight:
                self._drop(request_id, "overflow")
                return
