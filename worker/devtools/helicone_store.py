"""What Helicone stores from feedback and score calls, modelled for the receiver.

Helicone turns every ``/feedback`` and ``/score`` call into one "scores message" per request,
queues it (about ten minutes), and consumes the queue in batches, keeping only the latest
message per request in each batch and merging its keys into the request's stored scores
(DESIGN 6, ``ScoreManager.procesScores``).  :class:`HeliconeStore` does exactly that, with a
configurable ingestion delay, so a test can see a rating lost the way Helicone loses it:
``/feedback`` then ``/score`` in one batch keeps only the scores.

Pure: no HTTP, no event loop; the receiver (:mod:`worker.devtools.receiver`) feeds it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Final

from worker.events import is_helicone_request_id

__all__ = [
    "BOOL_SUFFIX",
    "FEEDBACK_KEY",
    "BatchResult",
    "HeliconeStore",
    "KnownRequests",
    "ScoresMessage",
    "StoreCounters",
    "StoredRequest",
    "feedback_message",
    "score_message",
]

#: The score key Helicone's feedback endpoint writes, and the key that makes a score call feedback.
FEEDBACK_KEY: Final = "helicone-score-feedback"
#: Appended to the key of a boolean score (stored as 1/0), so ``{"b": true}`` is ``b-hcone-bool``.
BOOL_SUFFIX: Final = "-hcone-bool"


@dataclass(frozen=True, slots=True)
class ScoresMessage:
    """One accepted feedback or score call, as Helicone queues it (keys already mapped)."""

    request_id: str
    scores: Mapping[str, int]
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """What Helicone holds for a request: its merged scores and the feedback row's rating.

    ``scores`` keeps ``helicone-score-feedback`` too (Helicone merges it like any key);
    ``feedback`` is None until a kept message carried that key.
    """

    scores: dict[str, int]
    feedback: bool | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One consumer run: every consumed message is exactly one of kept, superseded, dropped."""

    consumed: int = 0
    kept: int = 0
    superseded: int = 0
    dropped_unknown: int = 0


@dataclass(frozen=True, slots=True)
class StoreCounters:
    """Totals since the store was made.  ``queued == kept + superseded + dropped_unknown +
    pending`` always holds."""

    queued: int = 0
    kept: int = 0
    superseded: int = 0
    dropped_unknown: int = 0
    batches: int = 0
    pending: int = 0


def feedback_message(request_id: str, rating: bool, created_at_ms: int) -> ScoresMessage:
    """``POST /v1/request/{id}/feedback``: a number score ``helicone-score-feedback`` 1/0."""
    return ScoresMessage(request_id, {FEEDBACK_KEY: 1 if rating else 0}, created_at_ms)


def score_message(
    request_id: str, scores: Mapping[str, int | float | bool], created_at_ms: int
) -> ScoresMessage:
    """``POST /v1/request/{id}/score``: booleans become ``<key>-hcone-bool`` = 1/0.

    Integral floats are stored as ints; other floats are left out, as Helicone's newer consumer
    skips them (the receiver answers them with a 500 before this, as older versions did).
    """
    mapped: dict[str, int] = {}
    for key, value in scores.items():
        if isinstance(value, bool):
            mapped[key + BOOL_SUFFIX] = int(value)
        elif isinstance(value, int):
            mapped[key] = value
        elif float(value).is_integer():
            mapped[key] = int(value)
    return ScoresMessage(request_id, mapped, created_at_ms)


KnownRequests = Callable[[str], bool] | Collection[str] | None


class HeliconeStore:
    """Helicone's scores pipeline without I/O: messages in, batches consumed, stored state out.

    What holds, and why (ScoreManager.procesScores, ScoreStore.putScoresIntoClickhouse):

    * a message becomes visible to the consumer ``ingestion_delay_ms`` after it was created
      (Helicone sends it to its Kafka topic 10 minutes after the call);
    * a batch takes every visible message; per request only the one with the latest
      ``created_at_ms`` is kept (on a tie the earlier one in the batch stays, as Helicone
      compares with a strict ``<``); the others are *superseded* and have no effect at all;
    * a kept message of a request that is not known (never logged, or too old) is dropped
      (Helicone's insert finds no row; the API had answered 2xx);
    * a kept message's keys are merged over the stored scores (newer value per key wins), and
      when it holds ``helicone-score-feedback`` the feedback rating becomes ``bool(value)``.

    Consequently, one message per batch gives the merge of all messages, while in one batch a
    ``/feedback`` followed by a ``/score`` without that key loses the rating.  Session feedback
    is not queued (Helicone sets a property at once) and is kept per session id.

    Time is passed in (``now_ms``), so the model needs no clock and no event loop.
    """

    def __init__(self, *, ingestion_delay_ms: int = 0, known_requests: KnownRequests = None):
        if ingestion_delay_ms < 0:
            raise ValueError("ingestion_delay_ms must be >= 0")
        self._delay_ms = ingestion_delay_ms
        self._known = known_requests
        self._queue: list[ScoresMessage] = []
        self._requests: dict[str, StoredRequest] = {}
        self._sessions: dict[str, bool] = {}
        self._counters = StoreCounters()

    def is_known(self, request_id: str) -> bool:
        """Whether Helicone has this request logged (None: every valid request id)."""
        if self._known is None:
            return is_helicone_request_id(request_id)
        if callable(self._known):
            return bool(self._known(request_id))
        return request_id in self._known

    # ---- in

    def enqueue(self, message: ScoresMessage) -> None:
        self._queue.append(message)
        c = self._counters
        self._counters = replace(c, queued=c.queued + 1, pending=c.pending + 1)

    def set_session_feedback(self, session_id: str, rating: bool) -> None:
        self._sessions[session_id] = rating

    # ---- consuming

    def pending(self) -> int:
        """Messages queued and not consumed yet (visible or not)."""
        return len(self._queue)

    def consume(self, now_ms: int | None = None) -> BatchResult:
        """Run one batch over the messages visible at ``now_ms`` (None: every queued message,
        whatever the ingestion delay) and apply it."""
        if now_ms is None:
            batch, self._queue = self._queue, []
        else:
            due = now_ms - self._delay_ms
            batch = [m for m in self._queue if m.created_at_ms <= due]
            self._queue = [m for m in self._queue if m.created_at_ms > due]
        if not batch:
            return BatchResult()
        latest: dict[str, ScoresMessage] = {}
        for message in batch:
            kept = latest.get(message.request_id)
            if kept is None or kept.created_at_ms < message.created_at_ms:
                latest[message.request_id] = message
        dropped = 0
        for request_id, message in latest.items():
            if not self.is_known(request_id):
                dropped += 1
                continue
            self._apply(message)
        kept_n = len(latest) - dropped
        result = BatchResult(len(batch), kept_n, len(batch) - len(latest), dropped)
        c = self._counters
        self._counters = replace(
            c,
            kept=c.kept + result.kept,
            superseded=c.superseded + result.superseded,
            dropped_unknown=c.dropped_unknown + result.dropped_unknown,
            batches=c.batches + 1,
            pending=len(self._queue),
        )
        return result

    def _apply(self, message: ScoresMessage) -> None:
        before = self._requests.get(message.request_id, StoredRequest({}))
        scores = {**before.scores, **message.scores}
        feedback = before.feedback
        if FEEDBACK_KEY in message.scores:
            feedback = bool(message.scores[FEEDBACK_KEY])
        self._requests[message.request_id] = StoredRequest(scores, feedback)

    # ---- out

    def request(self, request_id: str) -> StoredRequest | None:
        """The stored state of one request (None: nothing stored for it)."""
        stored = self._requests.get(request_id)
        return None if stored is None else StoredRequest(dict(stored.scores), stored.feedback)

    def stored(self) -> dict[str, StoredRequest]:
        """Every request with stored scores (copies: changing them changes nothing here)."""
        return {rid: StoredRequest(dict(s.scores), s.feedback) for rid, s in self._requests.items()}

    def sessions(self) -> dict[str, bool]:
        """Session id -> the last session rating given."""
        return dict(self._sessions)

    @property
    def counters(self) -> StoreCounters:
        return self._counters

    def clear(self) -> None:
        """Forget everything stored and queued, and the counters."""
        self._queue.clear()
        self._requests.clear()
        self._sessions.clear()
        self._counters = StoreCounters()


# --------------------------------------------------------------------------- rate limit
