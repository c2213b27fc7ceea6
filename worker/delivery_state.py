"""A target's whole feedback state, the unit that delivery sends (DESIGN 5, contract).

Helicone turns every feedback or score call into one "scores message" per request, and when
two messages of one request meet in a batch of its consumer only the later one is kept
(DESIGN 6).  So a call must never carry part of what was decided: each call carries the
request's *whole* state, the rating as the integer score ``helicone-score-feedback`` next to
every score decided so far.  Whichever message Helicone keeps is then complete.

This module is pure: decisions in, states out, time as data.  The deliver adapter keeps one
:class:`FeedbackState` per target in a changelogged table and sends it whenever it changes.

What holds, and why:

* **Merging is a last-writer-wins register per field, ordered by the decision, not by
  arrival.**  The rating is the one with the highest :func:`rating_rank`: any explicit rating
  beats any implicit one (DESIGN 4: an explicit rating wins), then the later window, then the
  later decision time, then the decision id.  Each score keeps the value of its highest
  :func:`score_rank`.  Because a rank is a total order computed from the decision alone, merging
  is commutative, associative and idempotent: a decision replayed after a crash, duplicated on
  the outbox or redriven from the dead-letter topic leaves the state as it was, and any order
  of the same decisions gives the same state.
* **A version counts changes of what would be posted.**  ``version`` grows by one whenever
  the rating or a score value changes (a rank that changes without changing a value does
  not count: nothing new would be posted).  ``sent`` is the highest version Helicone answered
  2xx for, ``dead`` the highest one dead-lettered.  The state is *due* while ``version``
  exceeds both.  A newer decision replaces what waits to be sent instead of queueing behind it,
  so a request costs one call per change however long Helicone was away.
* **Implicit and explicit ratings of a request are paired once per rule, for calibration.**
  ``implicit`` keeps, per implicit rule, the rating it decided or (under an explicit rating)
  would have decided, its ``shadow_rating``, ranked like the rating.  The first merge that
  finds both an explicit rating and a rule's implicit one records the rule in ``paired``;
  :func:`new_pairs` reports it once, for ``feedback_rule_agreement_total``.  Both orders meet
  here, which is why the pairing lives in this fold and not in the window engine: an explicit
  rating before the window closed leaves the window's rating as a shadow in its decision, an
  explicit rating after it leaves the window's (already posted) rating in its decision, and
  either way both decisions merge into this state.  Replays and duplicates find the rule in
  ``paired`` and count nothing again.  Neither field changes what is posted: no version.
* **Evidence for the dead-letter topic is kept until it is settled.**  ``unsent`` holds the
  decisions that produced a version not settled yet, each with that version; they are what
  ``feedback-dlq`` receives when a version is given up, so ``dlq redrive`` can put them
  back, where they merge again.  A decision that changes nothing posted produces no version
  and is not kept: it needs no call, and losing it loses nothing Helicone would store.
* **An abstention is a no-op.**  A window whose rule decided nothing writes a decision with
  no rating, no shadow and no scores (``Decision.is_abstention``), for calibration to count.
  It cannot change the rating, a score or a pairing, so :func:`merge` returns the state it
  was given, unchanged (no version, no evidence kept, no duplicate id remembered), and the
  adapter, asking ``is_abstention`` first, creates no state for it: a request that only
  ever got abstentions costs no state, no call and no place in the backlog.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

from worker.delivery import Endpoint, RetryState
from worker.events import Decision

__all__ = [
    "FEEDBACK_SCORE_KEY",
    "Call",
    "FeedbackState",
    "RatingPair",
    "RatingVia",
    "calls_for",
    "implicit_rating",
    "merge",
    "new_pairs",
    "rating_rank",
    "score_rank",
    "state_key",
]

#: The score key Helicone stores feedback under (DESIGN 6).  Sent as the integer 1 or 0: a JSON
#: boolean would be stored as ``helicone-score-feedback-hcone-bool`` and not count as feedback.
FEEDBACK_SCORE_KEY = "helicone-score-feedback"
#: How many settled decision ids a state remembers, to count duplicates for the metrics.
_RECENT_IDS = 16
#: How many unsettled decisions a state keeps as evidence for the dead-letter topic.  A request
#: gets a handful of decisions (one per rule and window); past this the oldest evidence goes.
_MAX_UNSENT = 64

RatingVia = Literal["score", "feedback"]
Rank = tuple[int, int, int, str]


def rating_rank(decision: Decision) -> Rank:
    """Where a decision's rating stands: explicit first, then the later window.

    Only event-time fields and the (deterministic) decision id take part, never
    ``decided_at``: a replay of the same input must store the same rating.
    """
    return (
        1 if decision.rule == "explicit" or decision.rule == "session_feedback" else 0,
        _ms(decision.window_end),
        _ms(decision.window_start),
        decision.decision_id,
    )


#: Rules whose ratings are explicit: what implicit ratings are calibrated against.
_EXPLICIT_RULES = frozenset({"explicit", "session_feedback"})


def implicit_rating(decision: Decision) -> bool | None:
    """The implicit rating a request decision stands for: its rating, or the shadow an
    explicit rating left in its place; None for explicit decisions and sessions."""
    if decision.target != "request" or decision.rule in _EXPLICIT_RULES:
        return None
    return decision.rating if decision.rating is not None else decision.shadow_rating


def score_rank(decision: Decision) -> Rank:
    """Where a decision's scores stand: the later window wins, key by key."""
    return (0, _ms(decision.window_end), _ms(decision.window_start), decision.decision_id)


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


def state_key(decision: Decision) -> str | None:
    """The target a decision belongs to: ``r:<request id>`` or ``s:<session id>``."""
    if decision.target == "request":
        return f"r:{decision.request_id}" if decision.request_id else None
    return f"s:{decision.session_id}" if decision.session_id else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsent:
    """A decision merged into a version that is not settled yet."""

    version: int
    merged_at_ms: int
    decision: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackState:
    """One target's feedback as Helicone should store it, and how far delivery got."""

    target: Literal["request", "session"]
    target_id: str
    rating: bool | None = None
    rating_rank: Rank | None = None
    #: name -> (value, rank of the decision that set it)
    scores: Mapping[str, tuple[int, Rank]] = field(default_factory=dict)
    version: int = 0
    sent: int = 0
    dead: int = 0
    unsent: tuple[Unsent, ...] = ()
    recent_ids: tuple[str, ...] = ()
    retry: RetryState = field(default_factory=RetryState)
    updated_at_ms: int = 0
    #: rule -> (implicit or shadow rating, rank of the decision that set it)
    implicit: Mapping[str, tuple[bool, Rank]] = field(default_factory=dict)
    #: Rules whose implicit rating was already paired with the explicit one (counted once).
    paired: tuple[str, ...] = ()

    @property
    def explicit_rating(self) -> bool | None:
        """The rating when an explicit decision set it, else None."""
        rank = self.rating_rank
        return self.rating if rank is not None and rank[0] == 1 else None

    @property
    def due(self) -> bool:
        """Whether a version waits to be sent (neither delivered nor given up)."""
        return self.version > max(self.sent, self.dead)

    @property
    def oldest_unsent_ms(self) -> int | None:
        """When the oldest change not yet delivered was merged (the backlog's age)."""
        return min((u.merged_at_ms for u in self.unsent), default=None) if self.due else None

    def score_values(self) -> dict[str, int]:
        return {name: value for name, (value, _) in sorted(self.scores.items())}

    # ---- outcomes of a call, reported for a version

    def delivered(self, version: int, *, now_ms: int) -> FeedbackState:
        """Helicone answered 2xx for ``version``: it and everything before it are settled."""
        sent = max(self.sent, version)
        left = tuple(u for u in self.unsent if u.version > sent)
        retry = self.retry if left and self.version > sent else RetryState()
        return replace(self, sent=sent, unsent=left, retry=retry, updated_at_ms=now_ms)

    def failed(self, retry: RetryState, *, now_ms: int) -> FeedbackState:
        """A retryable failure: keep ``retry`` (attempts, when next) for the due version."""
        return replace(self, retry=retry, updated_at_ms=now_ms)

    def given_up(self, version: int, *, now_ms: int) -> FeedbackState:
        """``version`` went to the dead-letter topic; a newer change starts afresh."""
        dead = max(self.dead, version)
        left = tuple(u for u in self.unsent if u.version > dead)
        return replace(self, dead=dead, unsent=left, retry=RetryState(), updated_at_ms=now_ms)

    def settled_decisions(self, version: int, *, after: int = 0) -> list[dict[str, Any]]:
        """The decisions a call for ``version`` carried that were not settled before: those
        merged into versions in ``(after, version]``.  ``after`` is a version the caller knows
        was settled although this copy of the state does not show it yet."""
        return [u.decision for u in self.unsent if after < u.version <= version]

    # ---- encoding

    def to_json(self) -> bytes:
        """The table's encoding; orjson writes the dataclass ``retry`` field by field, and a
        state that never failed (the common case) stores ``null`` for it."""
        document: dict[str, Any] = {
            "target": self.target,
            "id": self.target_id,
            "rating": self.rating,
            "rating_rank": self.rating_rank,
            "scores": {k: [v, r] for k, (v, r) in self.scores.items()},
            "version": self.version,
            "sent": self.sent,
            "dead": self.dead,
            "unsent": [[u.version, u.merged_at_ms, u.decision] for u in self.unsent],
            "recent_ids": self.recent_ids,
            "retry": None if self.retry == _NO_RETRY else self.retry,
            "updated_at_ms": self.updated_at_ms,
        }
        if self.implicit:  # written only when set: older states keep their exact encoding
            document["implicit"] = {k: [v, r] for k, (v, r) in self.implicit.items()}
        if self.paired:
            document["paired"] = self.paired
        return orjson.dumps(document)

    @classmethod
    def from_json(cls, raw: bytes) -> FeedbackState:
        doc = orjson.loads(raw)
        retry = dict(doc.get("retry") or {})
        retry["done"] = tuple(retry.get("done", ()))
        rank = doc.get("rating_rank")
        return cls(
            target=doc["target"],
            target_id=doc["id"],
            rating=doc.get("rating"),
            rating_rank=_rank(rank) if rank is not None else None,
            scores={k: (int(v), _rank(r)) for k, (v, r) in doc.get("scores", {}).items()},
            version=int(doc.get("version", 0)),
            sent=int(doc.get("sent", 0)),
            dead=int(doc.get("dead", 0)),
            unsent=tuple(
                Unsent(version=int(v), merged_at_ms=int(at), decision=d)
                for v, at, d in doc.get("unsent", ())
            ),
            recent_ids=tuple(doc.get("recent_ids", ())),
            retry=RetryState(**retry),
            updated_at_ms=int(doc.get("updated_at_ms", 0)),
            implicit={k: (bool(v), _rank(r)) for k, (v, r) in doc.get("implicit", {}).items()},
            paired=tuple(doc.get("paired", ())),
        )


_NO_RETRY = RetryState()


def _rank(value: Iterable[Any]) -> Rank:
    a, b, c, d = value
    return (int(a), int(b), int(c), str(d))


def merge(
    state: FeedbackState | None,
    decision: Decision,
    *,
    now_ms: int,
    force: bool = False,
) -> tuple[FeedbackState, bool]:
    """``decision`` merged into ``state``; and whether what would be posted changed.

    ``force`` (a redriven decision) makes a new version even when nothing changed, so the
    whole state is sent again.  The decision must belong to the state's target.  An
    abstention returns ``state`` itself, even forced (there is nothing of it to send); the
    caller creates no state for one (``Decision.is_abstention``), so with no state this
    returns a new, empty one only to keep the signature.
    """
    if state is None:
        target_id = decision.request_id if decision.target == "request" else decision.session_id
        assert target_id is not None, "the caller checks the target id first"
        state = FeedbackState(target=decision.target, target_id=target_id)
    if decision.is_abstention:
        return state, False
    rating, rating_rank_ = state.rating, state.rating_rank
    if decision.rating is not None:
        rank = rating_rank(decision)
        if rating_rank_ is None or rank > rating_rank_:
            rating, rating_rank_ = decision.rating, rank
    scores = dict(state.scores)
    rank = score_rank(decision)
    for name, value in decision.scores.items():
        if name == FEEDBACK_SCORE_KEY:
            continue  # the rating owns this key; a reported score must not override it
        kept = scores.get(name)
        if kept is None or rank > kept[1]:
            scores[name] = (int(value), rank)
    changed = rating != state.rating or {k: v for k, (v, _) in scores.items()} != {
        k: v for k, (v, _) in state.scores.items()
    }
    version = state.version + 1 if changed or force else state.version
    unsent = state.unsent
    if version != state.version:
        entry = Unsent(
            version=version, merged_at_ms=now_ms, decision=decision.model_dump(mode="json")
        )
        unsent = (*unsent, entry)[-_MAX_UNSENT:]
    implicit, paired = _pair(state, decision, rating, rating_rank_)
    recent = state.recent_ids
    if decision.decision_id not in recent:
        recent = (*recent, decision.decision_id)[-_RECENT_IDS:]
    merged = replace(
        state,
        rating=rating,
        rating_rank=rating_rank_,
        scores=scores,
        version=version,
        unsent=unsent,
        recent_ids=recent,
        updated_at_ms=now_ms,
        implicit=implicit,
        paired=paired,
    )
    return merged, version != state.version


def _pair(
    state: FeedbackState, decision: Decision, rating: bool | None, rank: Rank | None
) -> tuple[Mapping[str, tuple[bool, Rank]], tuple[str, ...]]:
    """The ``implicit`` and ``paired`` fields after ``decision`` (module docstring)."""
    implicit = state.implicit
    value = implicit_rating(decision)
    if value is not None:
        own = rating_rank(decision)
        kept = implicit.get(decision.rule)
        if kept is None or own > kept[1]:
            implicit = {**implicit, decision.rule: (value, own)}
    paired = state.paired
    if rating is not None and rank is not None and rank[0] == 1:
        paired += tuple(sorted(rule for rule in implicit if rule not in paired))
    return implicit, paired


@dataclass(frozen=True, slots=True)
class RatingPair:
    """An implicit rule's rating of a request met the user's explicit one (for the
    ``feedback_rule_agreement_total`` counter)."""

    rule: str
    implicit: bool
    explicit: bool

    @property
    def agrees(self) -> bool:
        return self.implicit == self.explicit


def new_pairs(before: FeedbackState | None, after: FeedbackState) -> list[RatingPair]:
    """The pairs ``after`` made that ``before`` had not: each (request, rule) at most once."""
    explicit = after.explicit_rating
    if explicit is None:
        return []
    done = set(before.paired) if before is not None else set()
    return [
        RatingPair(rule, after.implicit[rule][0], explicit)
        for rule in after.paired
        if rule not in done and rule in after.implicit
    ]


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP call a state needs: which endpoint and the JSON body."""

    endpoint: Endpoint
    body: dict[str, Any]


def calls_for(state: FeedbackState, *, via: RatingVia = "score") -> tuple[Call, ...]:
    """The calls that put ``state`` into Helicone, in order.

    ``via="score"`` (the default, DESIGN 5): a request costs exactly one call,
    ``POST /v1/request/{id}/score`` with every score and the rating as
    ``helicone-score-feedback`` 1/0.  ``via="feedback"``: the rating through ``/feedback``
    and then the scores through ``/score``, for self-hosted versions that keep feedback in a
    table of its own; on Helicone's scores pipeline the second message can clobber the first
    within one batch, which is why it is not the default.  A session has one call, its rating.
    """
    if state.target == "session":
        if state.rating is None:
            return ()
        return (Call("session_feedback", {"rating": state.rating}),)
    scores = state.score_values()
    if via == "feedback":
        calls: list[Call] = []
        if state.rating is not None:
            calls.append(Call("request_feedback", {"rating": state.rating}))
        if scores:
            calls.append(Call("request_score", {"scores": scores}))
        return tuple(calls)
    if state.rating is not None:
        scores[FEEDBACK_SCORE_KEY] = 1 if state.rating else 0
    return (Call("request_score", {"scores": scores}),) if scores else ()
