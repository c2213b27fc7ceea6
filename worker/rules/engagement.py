"""Engagement (DESIGN 4): did the user get on with the chat after an answer, or push back?

Window: ``response_shown`` + 60 s.  Signals and what they count as::

    positive  continued   a message_sent that is neither a correction nor a repeat
              copied      response_copied
              shared      response_shared
              link        link_clicked
              long_read   time spent > 30 s
    negative  quick_exit  page_left within 10 s of response_shown
              short_read  time spent < 5 s
              repeat      response_regenerated, or a message_sent whose text is a
                          near-duplicate of prompt_text (normalised, difflib ratio >= 0.9)
              human       human_requested
    decisive  correction  a message_sent containing a correction phrase: the window ends at
                          that message and the rating is false, whatever else happened

Time spent runs from ``response_shown`` to the first ``page_left``, or to the window's end
when the user did not leave.  More positive kinds than negative: true; more negative: false;
a tie: no decision.  Score: ``time_spent_s`` (whole seconds, rounded down).

**Each kind counts once, however often it occurs.**  Occurrence counts would let one
repeated gesture (five copies, three link clicks, a frontend that emits an event per
keystroke or retries with fresh ids) outvote a different behaviour, so a verdict would
measure how chatty the frontend is rather than how the answer landed.  Counting kinds also
keeps the verdict stable when a window hits its signal cap.  Both ways of asking again
(regenerate, or re-typing the question) are one kind, as DESIGN lists them as one signal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from worker.rules._base import RuleSpec, Signal, Verdict, cite

if TYPE_CHECKING:
    from worker.events import UIEvent
    from worker.rules.config import RuleConfig

__all__ = [
    "NAME",
    "OPENER",
    "RULE",
    "RULE_VERSION",
    "SIGNALS",
    "EngagementState",
    "closes_early",
    "decide",
    "extract",
    "find_correction",
    "is_near_duplicate",
    "normalise",
    "observe",
]

NAME = "engagement"
RULE_VERSION = 1
OPENER = "response_shown"
SIGNALS = frozenset(
    {
        "message_sent",
        "response_copied",
        "response_shared",
        "link_clicked",
        "response_regenerated",
        "human_requested",
        "page_left",
    }
)

_KIND_OF_TYPE = {
    "response_copied": "copied",
    "response_shared": "shared",
    "link_clicked": "link",
    "response_regenerated": "repeat",
    "human_requested": "human",
}
_POSITIVE = frozenset({"continued", "copied", "shared", "link", "long_read"})
_NEGATIVE = frozenset({"quick_exit", "short_read", "repeat", "human"})

_NON_WORD = re.compile(r"[\W_]+")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


# --------------------------------------------------------------------------- text


def normalise(text: str, *, max_chars: int) -> str:
    """Lower case, punctuation and runs of whitespace to one space, trimmed, then cut."""
    return _NON_WORD.sub(" ", text.lower()).strip()[:max_chars]


@lru_cache(maxsize=16)
def _correction_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = sorted(
        {r"\s+".join(re.escape(w) for w in p.translate(_QUOTES).split()) for p in phrases},
        key=len,
        reverse=True,
    )
    return re.compile(
        r"(?<!\w)(?:" + "|".join(a for a in alternatives if a) + r")(?!\w)", re.IGNORECASE
    )


def find_correction(text: str, cfg: RuleConfig) -> str | None:
    """The first correction phrase in ``text`` (case-insensitive, whole words), or None."""
    match = _correction_pattern(cfg.correction_phrases).search(text.translate(_QUOTES))
    return " ".join(match.group(0).lower().split()) if match else None


def is_near_duplicate(a: str, b: str, threshold: float) -> bool:
    """True when two *normalised* texts are at least ``threshold`` similar (difflib ratio).

    The cheap upper bounds run first, so most different texts never reach the quadratic
    ``ratio()``.
    """
    if not a or not b:
        return False
    if a == b:
        return True
    if 2.0 * min(len(a), len(b)) / (len(a) + len(b)) < threshold:  # real_quick_ratio
        return False
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    return matcher.quick_ratio() >= threshold and matcher.ratio() >= threshold


# --------------------------------------------------------------------------- the fold


def extract(event: UIEvent, cfg: RuleConfig) -> Any:
    """``response_shown``: the normalised prompt (or None).  ``message_sent``:
    ``[correction phrase or None, normalised text or None]``.  Other types: None."""
    if event.type == "response_shown":
        prompt = event.properties.prompt_text
        return normalise(prompt, max_chars=cfg.repeat_max_chars) if prompt else None
    if event.type == "message_sent":
        text = event.properties.text
        if not text:
            return [None, None]
        return [find_correction(text, cfg), normalise(text, max_chars=cfg.repeat_max_chars)]
    return None


def closes_early(signal: Signal) -> bool:
    """A correction ends the window at once (at the message's event time)."""
    return signal.type == "message_sent" and bool(signal.data and signal.data[0])


@dataclass(frozen=True, slots=True)
class EngagementState:
    shown_at_ms: int | None = None
    #: The normalised prompt of the first opener that had one, for the repeat test.
    prompt: str | None = None
    left_at_ms: int | None = None
    corrected: bool = False
    #: Kinds known without the prompt (copied, shared, link, repeat, human).
    kinds: frozenset[str] = frozenset()
    #: Every signal in order; messages are classified in ``decide``, which has the config.
    seen: tuple[Signal, ...] = ()


INITIAL = EngagementState()


def observe(state: EngagementState, signal: Signal) -> EngagementState:
    shown_at, prompt, left_at = state.shown_at_ms, state.prompt, state.left_at_ms
    corrected, kinds = state.corrected, state.kinds
    match signal.type:
        case "response_shown":
            if shown_at is None:
                shown_at = signal.time_ms
            if prompt is None:
                prompt = signal.data
        case "page_left":
            if left_at is None:
                left_at = signal.time_ms
        case "message_sent":
            corrected = corrected or closes_early(signal)
        case kind_type if kind_type in _KIND_OF_TYPE:
            kinds = kinds | {_KIND_OF_TYPE[kind_type]}
    return EngagementState(shown_at, prompt, left_at, corrected, kinds, (*state.seen, signal))


def _classify(message: Signal, prompt: str | None, cfg: RuleConfig) -> str:
    correction, text = message.data if message.data else (None, None)
    if correction:
        return "correction"
    if (
        prompt is not None
        and text is not None
        and is_near_duplicate(text, prompt, cfg.repeat_similarity)
    ):
        return "repeat"
    return "continued"


def decide(state: EngagementState, closed_at_ms: int, cfg: RuleConfig) -> Verdict | None:
    shown = state.shown_at_ms if state.shown_at_ms is not None else closed_at_ms
    until = state.left_at_ms if state.left_at_ms is not None else closed_at_ms
    spent_ms = max(0, until - shown)
    kinds = set(state.kinds)
    details: list[str | None] = []
    for signal in state.seen:
        if signal.type == "message_sent":
            label = _classify(signal, state.prompt, cfg)
            kinds.add(label)
            details.append(label)
        elif signal.type == "response_shown":
            details.append("shown_again")
        elif signal.type == "page_left":
            details.append(f"left after {signal.time_ms - shown} ms")
        else:
            details.append(_KIND_OF_TYPE.get(signal.type))
    if spent_ms > cfg.long_read_ms:
        kinds.add("long_read")
    if spent_ms < cfg.short_read_ms:
        kinds.add("short_read")
    if state.left_at_ms is not None and state.left_at_ms - shown <= cfg.quick_exit_ms:
        kinds.add("quick_exit")
    positive = sorted(kinds & _POSITIVE)
    negative = sorted(kinds & _NEGATIVE)
    if details:  # the anchor (always first) carries the summary of the window
        details[0] = (
            f"time spent {spent_ms} ms; positive: {', '.join(positive) or '-'}; "
            f"negative: {', '.join(negative) or '-'}"
        )
    evidence = tuple(cite(s, d) for s, d in zip(state.seen, details, strict=True))
    scores = {"time_spent_s": spent_ms // 1000}
    if state.corrected:
        return Verdict(rating=False, scores=scores, evidence=evidence)
    if len(positive) == len(negative):
        return None  # DESIGN 4: equal: no decision
    return Verdict(rating=len(positive) > len(negative), scores=scores, evidence=evidence)


RULE: RuleSpec[EngagementState] = RuleSpec(
    name="engagement",
    version=RULE_VERSION,
    kind="window",
    target="request",
    opener=OPENER,
    signals=SIGNALS,
    initial=INITIAL,
    extract=extract,
    observe=observe,
    decide=decide,
    closes_early=closes_early,
    window_ms=lambda cfg: cfg.engagement_window_ms,
)
