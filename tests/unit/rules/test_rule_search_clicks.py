"""Search clicks: any click; click-through rate over distinct results (DESIGN 4)."""

from __future__ import annotations

import pytest

from tests.unit.rules.ruleskit import signal_of, verdict
from worker.rules import Signal


def shown(count: int) -> Signal:
    return signal_of("results_shown", 0, result_count=count)


def test_no_click_is_false_with_zero_rate() -> None:
    result = verdict("search_clicks", shown(10))
    assert result is not None
    assert result.rating is False
    assert result.scores == {"click_through_rate": 0}


def test_distinct_results_by_id_then_position_then_event() -> None:
    clicks = [
        signal_of("result_clicked", 1_000, result_id="doc-1"),
        signal_of("result_clicked", 2_000, result_id="doc-1", position=7),  # same result
        signal_of("result_clicked", 3_000, position=2),
        signal_of("result_clicked", 4_000, position=2),  # same position
        signal_of("result_clicked", 5_000),  # anonymous: counts by itself
        signal_of("result_clicked", 6_000),  # another anonymous one
    ]
    result = verdict("search_clicks", shown(8), *clicks)
    assert result is not None and result.rating is True
    assert result.scores == {"click_through_rate": 50}  # 4 of 8


@pytest.mark.parametrize(
    ("clicked", "count", "rate"),
    [(1, 3, 33), (2, 3, 67), (1, 8, 13), (1, 200, 1), (1, 201, 0), (3, 2, 100), (1, 1, 100)],
)
def test_rate_rounds_half_up_and_caps(clicked: int, count: int, rate: int) -> None:
    clicks = [signal_of("result_clicked", i, result_id=f"r{i}") for i in range(clicked)]
    result = verdict("search_clicks", shown(count), *clicks)
    assert result is not None and result.scores == {"click_through_rate": rate}


def test_result_count_comes_from_the_anchor() -> None:
    again = signal_of("results_shown", 1_000, result_count=100)
    click = signal_of("result_clicked", 2_000, result_id="a")
    result = verdict("search_clicks", shown(4), again, click)
    assert result is not None and result.scores == {"click_through_rate": 25}
