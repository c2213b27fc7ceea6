"""The rules' thresholds (DESIGN 4), as one frozen object handed to every ``decide``.

All durations are milliseconds, the core's one internal unit; the settings layer converts the
``*_S`` environment variables.  Changing what a threshold *means* (not its value) is a reason
to bump the affected rule's ``RULE_VERSION``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_CORRECTION_PHRASES", "RuleConfig"]

#: Phrases that mark a follow-up message as a correction of the answer (DESIGN 4).
DEFAULT_CORRECTION_PHRASES: tuple[str, ...] = (
    "actually",
    "that's wrong",
    "that is wrong",
    "not what I asked",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleConfig:
    """Window lengths and thresholds of the implicit rules; every field has the DESIGN default."""

    #: Engagement window, from ``response_shown``.
    engagement_window_ms: int = 60_000
    #: Code suggestion window, from ``suggestion_shown``.
    code_window_ms: int = 30_000
    #: Search clicks window, from ``results_shown``.
    clicks_window_ms: int = 300_000
    #: Ticket resolution window, from ``ticket_opened``.
    ticket_window_ms: int = 86_400_000
    #: Time spent above this is a positive engagement signal ("long read").
    long_read_ms: int = 30_000
    #: Time spent below this is a negative engagement signal ("short read").
    short_read_ms: int = 5_000
    #: A ``page_left`` at most this long after ``response_shown`` is a negative signal.
    quick_exit_ms: int = 10_000
    #: A ``message_sent`` containing one of these (case-insensitive, whole words) is a
    #: correction: it ends the engagement window with rating false.
    correction_phrases: tuple[str, ...] = DEFAULT_CORRECTION_PHRASES
    #: A ``message_sent`` whose normalised text is at least this similar (difflib ratio, 0-1)
    #: to the normalised ``prompt_text`` is a repeat of the question (negative).
    repeat_similarity: float = 0.9
    #: Normalised texts are cut to this many characters before the similarity test, which
    #: bounds both the state kept per message and difflib's quadratic cost.
    repeat_max_chars: int = 1_000
    #: A ``suggestion_retained`` whose ``retained_pct`` is below this rates the request false
    #: (accepted, then mostly deleted); None (the default) never rates, only scores.
    code_retained_min_pct: int | None = None
    #: A window whose rule decides nothing (no rating, no shadow, no score) still writes a
    #: decision, its *abstention* (rating null, scores empty), so that calibration can count
    #: how often each rule decides nothing; off, such a window writes no decision.  Delivery
    #: treats an abstention as a no-op.
    outbox_abstentions: bool = True

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be > 0"
            for name in (
                "engagement_window_ms",
                "code_window_ms",
                "clicks_window_ms",
                "ticket_window_ms",
                "repeat_max_chars",
            )
            if getattr(self, name) <= 0
        ]
        problems += [
            f"{name} must be >= 0"
            for name in ("long_read_ms", "short_read_ms", "quick_exit_ms")
            if getattr(self, name) < 0
        ]
        if self.short_read_ms > self.long_read_ms:
            problems.append("short_read_ms must not exceed long_read_ms")
        if self.code_retained_min_pct is not None and not 0 <= self.code_retained_min_pct <= 100:
            problems.append("code_retained_min_pct must be in [0, 100]")
        if not 0.0 < self.repeat_similarity <= 1.0:
            problems.append("repeat_similarity must be in (0, 1]")
        if isinstance(self.correction_phrases, str):
            problems.append("correction_phrases must be a sequence of phrases, not one string")
        elif not any(p.strip() for p in self.correction_phrases):
            problems.append("correction_phrases needs at least one non-empty phrase")
        else:  # a list from the settings is fine, but the config must stay hashable
            object.__setattr__(self, "correction_phrases", tuple(self.correction_phrases))
        if problems:
            raise ValueError("invalid RuleConfig: " + "; ".join(problems))
