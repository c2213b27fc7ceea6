"""The soak's growth and drain criterion (bench/_soak_criterion.py) on shaped series."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _load() -> ModuleType:
    # bench/ is scripts, not a package; load the module from its file (pytest chdirs to tmp).
    path = Path(__file__).resolve().parents[2] / "bench" / "_soak_criterion.py"
    spec = importlib.util.spec_from_file_location("_soak_criterion", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


crit = _load()
LIMIT = crit.GrowthLimit(rel_tolerance=0.10, abs_floor=10.0)
TIMES = [10.0 * i for i in range(60)]  # ten minutes, a sample every 10 s


def _judge(values: Sequence[float | None], limit: object = LIMIT) -> Any:
    return crit.judge_growth("rss_mib", TIMES[: len(values)], values, limit)


def test_flat_series_passes() -> None:
    verdict = _judge([200.0 + (i % 3) for i in range(60)])
    assert not verdict.failed and not verdict.inconclusive
    assert verdict.reason.startswith("ok")


def test_warmup_spike_is_ignored() -> None:
    # Climbs to 400 while caches fill, then settles at 250: the first 20 % is not judged.
    values = [100.0 + 30 * i for i in range(10)] + [250.0] * 50
    verdict = _judge(values)
    assert not verdict.failed


def test_fault_spike_in_the_last_third_passes() -> None:
    # Lag: ~0, then a restart's catch-up of a few samples near the end, then back to ~0.
    values = [5.0] * 60
    values[45:48] = [5_000.0, 3_000.0, 800.0]
    verdict = crit.judge_growth("lag_records", TIMES, values,
                                crit.GrowthLimit(rel_tolerance=0.3, abs_floor=1_000.0))
    assert not verdict.failed


def test_sawtooth_restart_passes() -> None:
    # RSS warms up from 150 to 250 after each of two restarts (at samples 20 and 40).
    values = [min(250.0, 150.0 + 10 * (i % 20)) for i in range(60)]
    verdict = _judge(values)
    assert not verdict.failed, verdict.reason


def test_restart_late_in_the_run_passes() -> None:
    # Flat, then a restart at sample 50 whose warm-up is still under way when the run ends.
    values = [250.0] * 50 + [150.0 + 10 * i for i in range(10)]
    verdict = _judge(values)
    assert not verdict.failed, verdict.reason


def test_restart_segments_judge_the_last_process_only() -> None:
    # A restart at sample 30; the new process warms up from 80 to 200 and then holds: judged
    # alone, its warm-up is dropped and the rest is flat.
    values = [200.0] * 30 + [min(200.0, 80.0 + 20 * i) for i in range(30)]
    pids = [1] * 30 + [2] * 30
    assert not crit.judge_growth("rss_mib", TIMES, values, LIMIT, segments=pids).failed
    # The same process leaking after the restart still fails.
    leaking = [200.0] * 30 + [150.0 + 4.0 * i for i in range(30)]
    assert crit.judge_growth("rss_mib", TIMES, leaking, LIMIT, segments=pids).failed


def test_a_short_last_segment_is_inconclusive() -> None:
    values = [200.0 + 2.0 * i for i in range(60)]
    pids = [1] * 55 + [2] * 5
    verdict = crit.judge_growth("rss_mib", TIMES, values, LIMIT, segments=pids)
    assert verdict.inconclusive and not verdict.failed
    assert "last process" in verdict.reason


def test_linear_growth_fails() -> None:
    values = [200.0 + 2.0 * i for i in range(60)]  # +0.2 MiB/s, never levelling off
    verdict = _judge(values)
    assert verdict.failed
    assert verdict.reason.startswith("GROWS")
    assert verdict.slope_per_s == pytest.approx(0.2)


def test_growth_from_zero_fails_on_the_floor() -> None:
    # A queue that never catches up: the relative part is 0 at first, the floor decides.
    values = [30.0 * i for i in range(60)]
    verdict = crit.judge_growth("backlog", TIMES, values,
                                crit.GrowthLimit(rel_tolerance=0.3, abs_floor=300.0))
    assert verdict.failed


def test_growth_that_levelled_off_passes() -> None:
    # Rose in the middle, flat for the whole last third: bounded.
    values = [200.0] * 25 + [200.0 + 10 * i for i in range(15)] + [350.0] * 20
    verdict = _judge(values)
    assert not verdict.failed
    assert "levelled off" in verdict.reason


def test_noise_below_the_floor_passes() -> None:
    values = [float(i % 7) for i in range(60)]
    assert not _judge(values).failed


def test_missing_samples_are_skipped() -> None:
    values: list[float | None] = [200.0 + 2.0 * i for i in range(60)]
    values[30] = None
    values[31] = math.nan
    assert _judge(values).failed


def test_too_few_samples_is_inconclusive_not_failed() -> None:
    verdict = _judge([1.0, 100.0, 1_000.0, 10_000.0])
    assert verdict.inconclusive and not verdict.failed


def test_least_squares_slope() -> None:
    assert crit.least_squares_slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert crit.least_squares_slope([5], [1]) == 0.0
    assert crit.least_squares_slope([2, 2], [1, 9]) == 0.0


def test_drain() -> None:
    ok = crit.judge_drain({"lag_records": 0, "windows_open": 0, "retry_queue": 0, "backlog": 0})
    assert not ok.failed and ok.reason == "everything drained"
    bad = crit.judge_drain({"lag_records": 0, "windows_open": 12, "retry_queue": 0})
    assert bad.failed
    assert set(bad.left) == {"windows_open", "backlog"}  # backlog was never measured
    assert "windows_open=12" in bad.reason
