"""Engagement: kinds, time spent, repeats, corrections (DESIGN 4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.rules.ruleskit import signal_of, verdict
from worker.rules import RuleConfig, Signal
from worker.rules.engagement import closes_early, find_correction, is_near_duplicate, normalise

PROMPT = "How do I rotate my API key?"


def shown(prompt: str | None = PROMPT) -> Signal:
    return (
        signal_of("response_shown", 0, prompt_text=prompt)
        if prompt
        else signal_of("response_shown", 0)
    )


def test_no_interaction_and_no_leave_is_a_long_read() -> None:
    result = verdict("engagement", shown())
    assert result is not None
    assert result.rating is True  # time spent = window length = 60 s > 30 s
    assert result.scores == {"time_spent_s": 60}


def test_each_kind_counts_once_however_often_it_occurs() -> None:
    """Three copies and two link clicks are two kinds, outvoted by... nothing but ties."""
    copies = [signal_of("response_copied", 1_000 * i) for i in range(1, 4)]
    links = [signal_of("link_clicked", 5_000 + i, url="https://x.example") for i in range(2)]
    negatives = [
        signal_of("response_regenerated", 20_000),
        signal_of("human_requested", 21_000),
        signal_of("page_left", 25_000),  # 25 s: no quick exit, no long read
    ]
    # positive kinds: copied, link (2); negative kinds: repeat, human (2): a tie
    assert verdict("engagement", shown(), *copies, *links, *negatives) is None
    # one more positive kind breaks the tie; more copies would not
    more_copies = [signal_of("response_copied", 10_000 + i) for i in range(5)]
    assert verdict("engagement", shown(), *copies, *more_copies, *links, *negatives) is None
    shared = signal_of("response_shared", 9_000)
    result = verdict("engagement", shown(), *copies, *links, shared, *negatives)
    assert result is not None and result.rating is True


def test_quick_exit_and_short_read() -> None:
    left_3s = verdict("engagement", shown(), signal_of("page_left", 3_000))
    assert left_3s is not None and left_3s.rating is False  # quick exit + short read
    assert left_3s.scores == {"time_spent_s": 3}
    copied = signal_of("response_copied", 1_000)
    # copied (1) vs quick exit + short read (2)
    result = verdict("engagement", shown(), copied, signal_of("page_left", 3_000))
    assert result is not None and result.rating is False
    # left at 7 s: quick exit only: copied 1 vs 1: no decision
    assert verdict("engagement", shown(), copied, signal_of("page_left", 7_000)) is None
    # left at 20 s: neither; copied wins
    result = verdict("engagement", shown(), copied, signal_of("page_left", 20_000))
    assert result is not None and result.rating is True
    assert result.scores == {"time_spent_s": 20}


def test_time_spent_uses_the_first_page_left() -> None:
    result = verdict(
        "engagement", shown(), signal_of("page_left", 40_000), signal_of("page_left", 2_000)
    )
    assert result is not None and result.scores == {"time_spent_s": 2}


def test_message_kinds() -> None:
    continued = signal_of("message_sent", 8_000, text="Thanks, and for the EU region?")
    repeat = signal_of("message_sent", 8_000, text="how do I rotate my API key??")
    left = signal_of("page_left", 20_000)
    result = verdict("engagement", shown(), continued, left)
    assert result is not None and result.rating is True
    result = verdict("engagement", shown(), repeat, left)
    assert result is not None and result.rating is False
    labels = [e.detail for e in result.evidence]
    assert "repeat" in labels
    # without a prompt nothing can be a repeat
    result = verdict("engagement", shown(None), repeat, left)
    assert result is not None and result.rating is True


def test_regenerate_and_retyped_question_are_one_kind() -> None:
    repeat = signal_of("message_sent", 8_000, text="How do I rotate my API key")
    regen = signal_of("response_regenerated", 9_000)
    copied = signal_of("response_copied", 10_000)
    left = signal_of("page_left", 20_000)
    # copied (1) vs repeat (1): a tie, even with both ways of asking again
    assert verdict("engagement", shown(), repeat, regen, copied, left) is None


def test_correction_is_false_whatever_else_happened() -> None:
    correction = signal_of("message_sent", 12_000, text="Actually, that's not it")
    assert closes_early(correction)
    result = verdict(
        "engagement",
        shown(),
        signal_of("response_copied", 1_000),
        signal_of("response_shared", 2_000),
        signal_of("link_clicked", 3_000),
        correction,
        end_ms=12_000,
    )
    assert result is not None and result.rating is False
    assert result.scores == {"time_spent_s": 12}  # to the early end


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("Actually I meant Python", "actually"),
        ("no, THAT'S WRONG", "that's wrong"),
        ("that\u2019s wrong", "that's wrong"),
        ("that  is\nwrong!", "that is wrong"),
        ("This is not what I asked.", "not what i asked"),
        ("factually correct", None),
        ("actuallyyy", None),
        ("that's wrongful", None),
        ("", None),
    ],
)
def test_correction_phrases_are_whole_words(text: str, phrase: str | None) -> None:
    assert find_correction(text, RuleConfig()) == phrase


def test_correction_phrases_are_configurable() -> None:
    config = RuleConfig(correction_phrases=("nope",))
    assert find_correction("Nope.", config) == "nope"
    assert find_correction("Actually fine", config) is None


def test_repeat_threshold_is_configurable() -> None:
    a = normalise("How do I rotate my API key?", max_chars=1000)
    b = normalise("How can I rotate an API key?", max_chars=1000)
    assert not is_near_duplicate(a, b, 0.9)
    assert is_near_duplicate(a, b, 0.8)
    assert is_near_duplicate(a, a, 1.0)
    assert not is_near_duplicate("", a, 0.5)


def test_normalise() -> None:
    assert normalise("  Hello,   WORLD!! how's_it ", max_chars=100) == "hello world how s it"
    assert normalise("abcdef", max_chars=3) == "abc"


@given(st.permutations(list(range(8))), st.integers(0, 59_000))
def test_verdict_does_not_depend_on_signal_order(order: list[int], leave_at: int) -> None:
    signals = [
        signal_of("response_copied", 1_000),
        signal_of("message_sent", 2_000, text="Thanks!"),
        signal_of("message_sent", 3_000, text="how do i rotate my api key"),
        signal_of("response_regenerated", 4_000),
        signal_of("human_requested", 5_000),
        signal_of("page_left", leave_at),
        signal_of("page_left", leave_at + 500),
        signal_of("link_clicked", 6_000),
    ]
    anchor = shown()
    expected = verdict("engagement", anchor, *signals)
    assert verdict("engagement", anchor, *(signals[i] for i in order)) == expected
