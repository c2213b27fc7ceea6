"""Code suggestion: the first action decides (DESIGN 4)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.rules.ruleskit import sig, verdict
from worker.rules.code_suggestion import closes_early

SHOWN = sig("suggestion_shown", 0)


def test_first_action_decides() -> None:
    for action, rating in [
        ("suggestion_accepted", True),
        ("suggestion_modified", True),
        ("suggestion_rejected", False),
    ]:
        result = verdict("code_suggestion", SHOWN, sig(action, 1_000))
        assert result is not None and result.rating is rating
        assert result.scores == {}
        assert closes_early(sig(action, 1_000))


def test_no_action_no_decision() -> None:
    assert verdict("code_suggestion", SHOWN) is None
    assert not closes_early(SHOWN)


def test_earliest_action_wins_in_event_time() -> None:
    result = verdict(
        "code_suggestion",
        SHOWN,
        sig("suggestion_rejected", 3_000),
        sig("suggestion_accepted", 2_000),
    )
    assert result is not None and result.rating is True
    assert [e.detail for e in result.evidence] == [None, "first action", None]


@given(
    st.lists(
        st.sampled_from(["suggestion_accepted", "suggestion_modified", "suggestion_rejected"]),
        min_size=1,
        max_size=6,
    ),
    st.randoms(),
)
def test_order_independent(actions: list[str], rnd: object) -> None:
    signals = [sig(a, 1_000 * (i + 1)) for i, a in enumerate(actions)]
    shuffled = list(signals)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert verdict("code_suggestion", SHOWN, *shuffled) == verdict(
        "code_suggestion", SHOWN, *signals
    )
