"""/healthz's crash-loop check: three agent crashes within a minute make the worker unhealthy."""

from __future__ import annotations

from worker.app import Liveness
from worker.clock import FakeClock


def test_a_crash_loop_is_unhealthy_and_recovers_once_the_crashes_age_out() -> None:
    clock = FakeClock(1_000_000)
    liveness = Liveness(clock=clock)
    assert liveness.recent_crashes() == 0
    for _ in range(liveness.limit - 1):
        liveness.crashed()
        clock.advance(1.0)
    assert liveness.recent_crashes() == liveness.limit - 1  # still healthy
    liveness.crashed()
    assert liveness.recent_crashes() >= liveness.limit  # crash loop
    clock.advance(liveness.window_ms / 1000 + 0.001)
    assert liveness.recent_crashes() == 0
