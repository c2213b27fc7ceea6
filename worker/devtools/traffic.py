"""Simulated users: realistic UI event streams with a known intent, for the demo, tests and benches.

Each :class:`Journey` is one LLM answer and what one user did after it (chat, code, search or
support), acted out as *satisfied*, *dissatisfied* or *silent*.  The journey knows which
rating its behaviour should earn under the default rules (and ``CODE_RETAINED_MIN_PCT``, which
:func:`generate` is told), so a run can be checked end to end: the decisions the worker writes
must match :attr:`Journey.expected`.

Code journeys that act on the suggestion sometimes go further: an accepted one may report
later how much of it was kept (``suggestion_retained``: mostly kept, or mostly deleted), and
some users also press a thumbs after acting, so code suggestions have explicit ratings to be
calibrated against.  The thumbs always comes after the action that ended the window, so the
window's rating stands (it is posted, then the thumbs replaces it in Helicone).

Times are event times in milliseconds; window lengths come in as a :class:`Windows` so the
demo can shorten them and the journeys shrink with them.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from worker.rules.code_retention import retained_pct

__all__ = ["Intent", "Journey", "Windows", "generate", "hostile_record", "iso"]

Intent = Literal["satisfied", "dissatisfied", "silent"]
Kind = Literal["chat", "code", "search", "support", "explicit"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PROMPTS = [
    "How do I rotate my API key?",
    "Why is my deployment failing with exit code 137?",
    "Summarise this contract in three bullet points",
    "What is the difference between a list and a tuple in Python?",
    "Write a SQL query for monthly active users",
]


def iso(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 with an offset."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Windows:
    """Window lengths the journeys are shaped for (milliseconds)."""

    engagement_ms: int = 60_000
    code_ms: int = 30_000
    clicks_ms: int = 300_000
    ticket_ms: int = 86_400_000


@dataclass
class Journey:
    request_id: str
    kind: Kind
    intent: Intent
    start_ms: int
    events: list[dict[str, Any]] = field(default_factory=list)
    #: rule name -> the rating this behaviour should earn (None: no rating expected; the rule
    #: may still write a decision without one: scores only, or an abstention).
    expected: dict[str, bool | None] = field(default_factory=dict)

    def add(self, type_: str, at_ms: int, **properties: Any) -> None:
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=random.getrandbits(128), version=4)),
            "type": type_,
            "request_id": self.request_id,
            "session_id": f"s-{self.request_id[:8]}",
            "occurred_at": iso(at_ms),
        }
        if properties:
            event["properties"] = properties
        self.events.append(event)


def _request_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _chat(j: Journey, rng: random.Random, w: Windows, retained_min_pct: int | None) -> None:
    t = j.start_ms
    prompt = rng.choice(PROMPTS)
    j.add("response_shown", t, prompt_text=prompt)
    if j.intent == "satisfied":  # copies, clicks, stays past the long-read threshold
        j.add("response_copied", t + w.engagement_ms // 6)
        j.add("link_clicked", t + w.engagement_ms // 4, url="https://docs.example.com")
        j.expected["engagement"] = True
    elif j.intent == "dissatisfied":  # asks again and leaves quickly
        j.add("response_regenerated", t + w.engagement_ms // 30)
        j.add("page_left", t + w.engagement_ms // 20)
        j.expected["engagement"] = False
    else:  # one positive (stays), one negative (asks for a human): a tie, no decision
        j.add("human_requested", t + w.engagement_ms // 3)
        j.expected["engagement"] = None


#: Of the code journeys that accept, the share that later report what was kept; of those,
#: the share that kept most of it (the rest deleted most of it).
_RETAINED_SHARE = 0.6
_MOSTLY_KEPT_SHARE = 0.5
#: Of the code journeys that act on the suggestion, the share that also press a thumbs.
_CODE_THUMBS_SHARE = 0.4


def _code(j: Journey, rng: random.Random, w: Windows, retained_min_pct: int | None) -> None:
    t = j.start_ms
    j.add("suggestion_shown", t)
    if j.intent == "silent":
        j.expected["code_suggestion"] = None  # nobody acted: the window abstains
        return
    satisfied = j.intent == "satisfied"
    acted = t + (w.code_ms // 5 if satisfied else w.code_ms // 10)
    if satisfied:
        j.add(rng.choice(["suggestion_accepted", "suggestion_modified"]), acted)
    else:
        j.add("suggestion_rejected", acted)
    j.expected["code_suggestion"] = satisfied
    liked = satisfied
    if satisfied and rng.random() < _RETAINED_SHARE:  # the editor reports back later
        suggested = rng.randrange(200, 1_000)
        mostly_kept = rng.random() < _MOSTLY_KEPT_SHARE
        share = rng.randrange(80, 101) if mostly_kept else rng.randrange(5, 25)
        kept = suggested * share // 100
        j.add("suggestion_retained", acted + w.code_ms // 2, retained_chars=kept,
              suggested_chars=suggested)
        below = retained_min_pct is not None and retained_pct(kept, suggested) < retained_min_pct
        j.expected["code_retention"] = False if below else None
        liked = mostly_kept  # who deleted most of it would not rate it up
    if rng.random() < _CODE_THUMBS_SHARE:  # after the action: the window's rating stands
        j.add("feedback_given", acted + w.code_ms // 4, rating=liked)
        j.expected["explicit"] = liked


def _search(j: Journey, rng: random.Random, w: Windows, retained_min_pct: int | None) -> None:
    t = j.start_ms
    ids = [f"doc-{i}" for i in range(10)]
    j.add("results_shown", t, result_count=len(ids), result_ids=ids)
    if j.intent == "satisfied":
        for n, doc in enumerate(rng.sample(ids, 2)):
            j.add("result_clicked", t + (n + 1) * w.clicks_ms // 10, result_id=doc)
        j.expected["search_clicks"] = True
    else:
        j.expected["search_clicks"] = False


def _support(j: Journey, rng: random.Random, w: Windows, retained_min_pct: int | None) -> None:
    t = j.start_ms
    ticket = f"T-{rng.randrange(10_000, 99_999)}"
    j.add("ticket_opened", t, ticket_id=ticket)
    if j.intent == "satisfied":
        j.add("ticket_resolved", t + w.ticket_ms // 3, ticket_id=ticket)
        j.expected["ticket_resolution"] = True
    elif j.intent == "dissatisfied":
        j.add("ticket_resolved", t + w.ticket_ms // 4, ticket_id=ticket)
        j.add("ticket_reopened", t + w.ticket_ms // 2, ticket_id=ticket)
        j.expected["ticket_resolution"] = False
    else:
        j.expected["ticket_resolution"] = False  # unresolved at close


def _explicit(j: Journey, rng: random.Random, w: Windows, retained_min_pct: int | None) -> None:
    t = j.start_ms
    j.add("response_shown", t, prompt_text=rng.choice(PROMPTS))
    rating = j.intent == "satisfied"
    j.add("feedback_given", t + w.engagement_ms // 10, rating=rating)
    j.add("response_copied", t + w.engagement_ms // 8)
    j.expected["explicit"] = rating
    j.expected["engagement"] = None  # an explicit rating wins: no implicit rating


_BUILDERS = {"chat": _chat, "code": _code, "search": _search, "support": _support,
             "explicit": _explicit}
_KIND_WEIGHTS = {"chat": 0.45, "code": 0.2, "search": 0.2, "support": 0.05, "explicit": 0.1}
_INTENT_WEIGHTS = {"satisfied": 0.5, "dissatisfied": 0.3, "silent": 0.2}


def generate(
    requests: int,
    *,
    start_ms: int,
    spread_ms: int,
    windows: Windows | None = None,
    seed: int = 1,
    kinds: dict[str, float] | None = None,
    retained_min_pct: int | None = None,
) -> list[Journey]:
    """``requests`` journeys whose answers are shown uniformly over ``spread_ms`` from
    ``start_ms``; deterministic for a seed.  ``retained_min_pct``: the worker's
    ``CODE_RETAINED_MIN_PCT``, which decides whether a mostly deleted suggestion is meant to
    be rated false."""
    rng = random.Random(seed)
    random.seed(seed)  # event ids in Journey.add
    w = windows or Windows()
    weights = kinds or _KIND_WEIGHTS
    journeys = []
    for _ in range(requests):
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        intent = rng.choices(list(_INTENT_WEIGHTS), weights=list(_INTENT_WEIGHTS.values()))[0]
        journey = Journey(_request_id(rng), kind, intent, start_ms + rng.randrange(spread_ms))  # type: ignore[arg-type]
        _BUILDERS[kind](journey, rng, w, retained_min_pct)
        journeys.append(journey)
    return journeys


def in_time_order(journeys: list[Journey]) -> Iterator[dict[str, Any]]:
    """Every event of ``journeys`` sorted by ``occurred_at`` (as a live stream would be)."""
    events = [e for j in journeys for e in j.events]
    events.sort(key=lambda e: e["occurred_at"])
    yield from events


def hostile_record(rng: random.Random) -> bytes:
    """One malformed record of the kinds real producers send by mistake."""
    return rng.choice(
        [
            b"",
            b"not json at all",
            b"[1,2,3]",
            b'{"type": "response_copied"}',
            b'{"event_id": "x", "type": "page_left", "request_id": "nope", '
            b'"occurred_at": "2026-01-01T00:00:00Z"}',
            b'{"event_id": "0c5d6f7a-8b9c-4d0e-8f1a-000000000001", "type": "feedback_given", '
            b'"request_id": "018f6f5e-4e8c-7b8a-9a51-8a5d8c1f2e3a", '
            b'"occurred_at": "2026-01-01T00:00:00Z", "properties": {"rating": true}}',
        ]
    )
