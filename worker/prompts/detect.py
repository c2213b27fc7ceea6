"""Candidate detection: one request's events folded into a :class:`Watch`, pure.

``observe(watch, event, event_time_ms, ...) -> (watch, candidate or None)``.

Invariants, and why they hold:

* **At most one candidate per request.**  The watch remembers that it produced one
  (``prompted``) and never produces another; and since the prompt id is a function of the
  request id (:func:`~worker.prompts.record.prompt_id_for`), even a watch lost in a restart
  can only produce the *same* prompt id again, which the cooldown step recognises.
* **As early as possible.**  A candidate is returned by the very event that completes the
  evidence: the ``message_sent`` with a correction phrase (the same phrase test as the
  engagement rule, :func:`~worker.rules.engagement.find_correction`), ``response_regenerated``,
  ``human_requested``, or whichever of ``response_shown`` / ``page_left`` arrives second when
  the page was left within ``quick_exit_ms`` of the answer (the engagement rule's threshold).
  Nothing waits for the window to close.
* **Order does not matter for the quick exit.**  Both times are kept (the earliest of each),
  whichever arrives first, so a ``page_left`` delivered before its ``response_shown`` gives
  the same candidate.  (With *several* ``response_shown`` of one request out of order, an
  early verdict can differ from a late one: asking early is the point, so it is accepted.)
* The candidate's ``signal_at`` is the event time of the evidence (for a quick exit, of the
  later of the two events), so the cooldown works on event time and is replay-deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from worker.prompts.record import PromptReason, PromptRecord
from worker.rules.engagement import find_correction

if TYPE_CHECKING:
    from worker.events import UIEvent
    from worker.rules import RuleConfig

__all__ = ["INITIAL_WATCH", "Watch", "observe"]

_DIRECT: dict[str, PromptReason] = {
    "response_regenerated": "regenerated",
    "human_requested": "human_requested",
}


@dataclass(frozen=True, slots=True)
class Watch:
    """What one request's events told so far (a few fields: thousands fit in memory)."""

    shown_at_ms: int | None = None
    left_at_ms: int | None = None
    #: The first user and session ids seen on any of the request's events.
    user_id: str | None = None
    session_id: str | None = None
    #: A candidate was produced: the request is done with.
    prompted: bool = False


INITIAL_WATCH = Watch()


def _earliest(known: int | None, t: int) -> int:
    return t if known is None else min(known, t)


def _reason(watch: Watch, event: UIEvent, cfg: RuleConfig) -> PromptReason | None:
    if event.type in _DIRECT:
        return _DIRECT[event.type]
    if event.type == "message_sent":
        text = event.properties.text
        return "correction" if text and find_correction(text, cfg) else None
    if event.type in ("response_shown", "page_left"):
        shown, left = watch.shown_at_ms, watch.left_at_ms
        if shown is not None and left is not None and 0 <= left - shown <= cfg.quick_exit_ms:
            return "quick_exit"
    return None


def observe(
    watch: Watch, event: UIEvent, event_time_ms: int, *, cfg: RuleConfig, ttl_ms: int
) -> tuple[Watch, PromptRecord | None]:
    """Fold one event of the watch's request; return the new watch and a candidate, if this
    event makes one (module docstring)."""
    if watch.prompted or event.request_id is None:  # session events have no answer to ask about
        return watch, None
    watch = replace(
        watch,
        user_id=watch.user_id or event.user_id,
        session_id=watch.session_id or event.session_id,
    )
    if event.type == "response_shown":
        watch = replace(watch, shown_at_ms=_earliest(watch.shown_at_ms, event_time_ms))
    elif event.type == "page_left":
        watch = replace(watch, left_at_ms=_earliest(watch.left_at_ms, event_time_ms))
    reason = _reason(watch, event, cfg)
    if reason is None:
        return watch, None
    signal_ms = event_time_ms
    if reason == "quick_exit":
        assert watch.shown_at_ms is not None and watch.left_at_ms is not None
        signal_ms = max(watch.shown_at_ms, watch.left_at_ms)
    candidate = PromptRecord.build(
        request_id=event.request_id,
        reason=reason,
        user_id=watch.user_id,
        session_id=watch.session_id,
        signal_ms=signal_ms,
        ttl_ms=ttl_ms,
    )
    return replace(watch, prompted=True), candidate
