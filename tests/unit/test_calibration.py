"""Calibration statistics (issue 16 part 1) on data with a hand-computed answer."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.calibration import IMPLICIT_RULES, Z_95, Proportion, calibrate, wilson_interval
from worker.events import Decision, decision_id_for

BASE = datetime(2026, 12, 1, tzinfo=UTC)


def request(n: int) -> str:
    return str(uuid.UUID(int=n, version=4))


def decision(
    rule: str,
    n: int,
    *,
    rating: bool | None,
    shadow: bool | None = None,
    minute: int = 0,
    scores: dict[str, int] | None = None,
) -> Decision:
    start = BASE + timedelta(minutes=minute)
    instant = rule in ("explicit", "code_retention", "scores")
    return Decision(
        decision_id=decision_id_for(request(n), rule, int(start.timestamp() * 1000)),
        target="request",
        request_id=request(n),
        session_id=None,
        rule=rule,
        rating=rating,
        shadow_rating=shadow,
        scores=scores or {},
        window_start=start,
        window_end=start if instant else start + timedelta(seconds=60),
        decided_at=start + timedelta(seconds=65),
        rule_version=1,
    )


# --------------------------------------------------------------------------- Wilson


def test_wilson_by_hand_8_of_10() -> None:
    # p = 0.8, z^2 = 3.841459, 1 + z^2/n = 1.3841459
    # centre = (0.8 + 0.1920729) / 1.3841459 = 0.7167422
    # half = 1.959964 * sqrt(0.016 + 0.0096036) / 1.3841459 = 0.2265797
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4901625, abs=1e-6)
    assert high == pytest.approx(0.9433178, abs=1e-6)


def test_wilson_at_the_ends_is_closed_form() -> None:
    z2 = Z_95 * Z_95
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(z2 / (10 + z2))  # 0.2775328
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(10 / (10 + z2)) and high == 1.0  # 0.7224672
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775328, abs=1e-7)


def test_wilson_one_of_two_is_symmetric_about_a_half() -> None:
    low, high = wilson_interval(1, 2)
    assert low + high == pytest.approx(1.0)
    assert low == pytest.approx(0.0945312, abs=1e-6)


@given(st.integers(1, 10_000), st.data())
def test_wilson_contains_the_estimate_and_shrinks_with_n(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    low4, high4 = wilson_interval(4 * k, 4 * n)
    assert high4 - low4 <= high - low + 1e-12


def test_wilson_refuses_nonsense() -> None:
    for k, n in ((0, 0), (3, 2), (-1, 2)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)
    assert Proportion(0, 0).value is None and Proportion(0, 0).interval is None


# --------------------------------------------------------------------------- the join


def known_outbox() -> list[Decision]:
    """Engagement against thumbs, a known table: (implicit, explicit) -> requests
    (T,T) 6, (T,F) 2, (F,F) 1, (F,T) 1; half of them as shadows (thumbs came first)."""
    cells = [(True, True)] * 6 + [(True, False)] * 2 + [(False, False), (False, True)]
    out: list[Decision] = []
    for n, (implicit, explicit) in enumerate(cells):
        if n % 2:  # the thumbs came before the window closed: a shadow
            out.append(decision("engagement", n, rating=None, shadow=implicit))
        else:  # the window was decided (and posted) before the thumbs
            out.append(decision("engagement", n, rating=implicit))
        out.append(decision("explicit", n, rating=explicit, minute=2))
    # undecided engagement windows (ties): one with thumbs, one without
    out.append(decision("engagement", 20, rating=None, scores={"time_spent_s": 12}))
    out.append(decision("explicit", 20, rating=True, minute=2))
    out.append(decision("engagement", 21, rating=None, scores={"time_spent_s": 3}))
    # implicit ratings nobody gave thumbs for: decisions, but not paired
    out += [decision("engagement", 30 + i, rating=True) for i in range(3)]
    # search clicks: one pair that agrees; reported scores are no rule to calibrate
    out.append(decision("search_clicks", 0, rating=True, minute=1))
    out.append(decision("scores", 0, rating=None, scores={"q": 1}, minute=3))
    return out


def test_the_known_table_gives_the_hand_computed_figures() -> None:
    by_rule = {c.rule: c for c in calibrate(known_outbox())}
    assert set(by_rule) == set(IMPLICIT_RULES)
    engagement = by_rule["engagement"]
    assert engagement.decisions == 15 and engagement.undecided == 2
    assert engagement.paired == 10
    assert (engagement.agreement.successes, engagement.agreement.trials) == (7, 10)
    assert (engagement.positive_precision.successes, engagement.positive_precision.trials) == (
        6,
        8,
    )
    assert (engagement.negative_precision.successes, engagement.negative_precision.trials) == (
        1,
        2,
    )
    # 6 of 8: p = 0.75, z^2/n = 0.4801824, centre = (0.75 + 0.2400912) / 1.4801824 = 0.6688981
    # half = 1.959964 * sqrt(0.0234375 + 0.0150057) / 1.4801824 = 0.2596227
    low, high = engagement.positive_precision.interval or (math.nan, math.nan)
    assert low == pytest.approx(0.4092754, abs=1e-6)
    assert high == pytest.approx(0.9285208, abs=1e-6)
    assert engagement.undecided_share.value == pytest.approx(2 / 15)
    clicks = by_rule["search_clicks"]
    assert (clicks.paired, clicks.agreement.successes, clicks.decisions) == (1, 1, 1)
    assert by_rule["code_suggestion"].paired == 0
    assert by_rule["code_suggestion"].agreement.interval is None


def test_duplicates_and_order_do_not_change_the_answer() -> None:
    outbox = known_outbox()
    shuffled = outbox * 3
    random.Random(7).shuffle(shuffled)
    assert calibrate(shuffled) == calibrate(outbox)


def test_the_latest_explicit_rating_counts() -> None:
    outbox = [
        decision("code_suggestion", 1, rating=True),
        decision("explicit", 1, rating=False, minute=1),
        decision("explicit", 1, rating=True, minute=2),  # the user changed their mind
    ]
    (code,) = [c for c in calibrate(outbox) if c.rule == "code_suggestion"]
    assert code.table == {(True, True): 1}


def test_since_keeps_only_recent_decisions() -> None:
    outbox = [
        decision("engagement", 1, rating=True, minute=0),
        decision("explicit", 1, rating=True, minute=1),
        decision("engagement", 2, rating=False, minute=100),
        decision("explicit", 2, rating=True, minute=101),
    ]
    since = BASE + timedelta(minutes=50)
    (engagement,) = [c for c in calibrate(outbox, since=since) if c.rule == "engagement"]
    assert engagement.decisions == 1 and engagement.table == {(False, True): 1}


def test_as_dict_is_plain_json() -> None:
    (engagement,) = [c for c in calibrate(known_outbox()) if c.rule == "engagement"]
    doc = engagement.as_dict()
    assert doc["paired"] == 10 and doc["agreement"]["successes"] == 7
    assert doc["table"]["implicit=true,explicit=false"] == 2
    assert doc["negative_precision"]["ci95"][0] == pytest.approx(0.0945312, abs=1e-6)


def test_abstentions_count_as_decided_nothing_and_never_pair() -> None:
    """Code suggestions: two untouched (abstentions, one of them under thumbs), one accepted
    and confirmed, one rejected with no thumbs; and an engagement tie under thumbs."""
    outbox = [
        decision("code_suggestion", 1, rating=None),  # abstention
        decision("code_suggestion", 2, rating=None),  # abstention...
        decision("explicit", 2, rating=False, minute=1),  # ...the user rated anyway
        decision("code_suggestion", 3, rating=True),
        decision("explicit", 3, rating=True, minute=1),
        decision("code_suggestion", 4, rating=False),
        decision("engagement", 5, rating=None),  # a tie: abstention
        decision("explicit", 5, rating=True, minute=2),
        decision("engagement", 6, rating=None, scores={"time_spent_s": 9}),  # scores only
        decision("engagement", 7, rating=False),
    ]
    by_rule = {c.rule: c for c in calibrate(outbox)}
    code = by_rule["code_suggestion"]
    assert (code.decisions, code.undecided, code.paired) == (4, 2, 1)
    assert code.table == {(True, True): 1}
    assert code.undecided_share.value == pytest.approx(0.5)
    engagement = by_rule["engagement"]
    assert (engagement.decisions, engagement.undecided, engagement.paired) == (3, 2, 0)
    assert engagement.as_dict()["undecided"]["successes"] == 2
