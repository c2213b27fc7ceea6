"""worker.faust_compat.recovery: a changelog that ends before its local store is reported,
not fatal.

The end-to-end case (a broker restarted empty under a running worker) is
tests/chaos/test_broker_restart.py; here the decision and the wrapping.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from worker.faust_compat.recovery import behind, report_lost_changelogs

A = TP("fw-windows-changelog", 0)
B = TP("fw-windows-changelog", 1)
C = TP("fw-delivery-done-changelog", 2)


def test_only_stores_past_the_changelog_end_are_behind() -> None:
    stored = {A: 57, B: 10, C: -1}
    ends = {A: -1, B: 10, C: 4}  # A: emptied; B: caught up; C: nothing applied yet
    assert behind(stored, ends) == [(A, 57, -1)]
    assert behind({A: 3}, {A: 2}) == [(A, 3, 2)]
    assert behind({}, {A: 2}) == []  # not in the store's offsets: nothing to compare


class FakeRecovery:
    def __init__(self) -> None:
        self.active_offsets: Counter[TP] = Counter({A: 57, B: 10})
        self.active_highwaters: Counter[TP] = Counter({A: -1, B: 12})
        self.standby_offsets: Counter[TP] = Counter({C: 8})
        self.standby_highwaters: Counter[TP] = Counter({C: 3})
        self.completed: list[int] = []

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.completed.append(generation_id)


def test_each_lost_changelog_is_logged_and_counted_then_recovery_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recovery = FakeRecovery()
    app: Any = SimpleNamespace(tables=SimpleNamespace(recovery=recovery))
    lost: list[tuple[TP, int, int]] = []
    assert report_lost_changelogs(app, lambda *args: lost.append(args))

    with caplog.at_level(logging.ERROR, logger="worker.faust_compat.recovery"):
        asyncio.run(recovery.on_recovery_completed(7))

    assert lost == [(A, 57, -1), (C, 8, 3)]
    assert recovery.completed == [7]  # Faust's own completion still runs
    assert "changelog fw-windows-changelog[0] ends at offset -1" in caplog.text
    assert "standby store has applied up to 8" in caplog.text


def test_an_unknown_faust_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    app: Any = SimpleNamespace(tables=SimpleNamespace(recovery=SimpleNamespace()))
    with caplog.at_level(logging.WARNING, logger="worker.faust_compat.recovery"):
        assert not report_lost_changelogs(app, lambda *args: None)
    assert "cannot be checked" in caplog.text
