"""worker.health: the crash-loop count behind /healthz, supervision, and /readyz's checks."""

from __future__ import annotations

import asyncio
import logging

import faust
import pytest

from worker.clock import FakeClock
from worker.health import Liveness, Readiness, healthz, readyz, stop_on_failure, supervised


def test_a_crash_loop_is_unhealthy_and_recovers_once_the_crashes_age_out() -> None:
    clock = FakeClock(1_000_000)
    liveness = Liveness(clock=clock)
    assert liveness.recent_crashes() == 0
    for _ in range(liveness.limit - 1):
        liveness.crashed("ingest")
        clock.advance(1.0)
    assert liveness.recent_crashes() == liveness.limit - 1
    assert healthz(liveness) == ({"status": "ok"}, 200)
    liveness.crashed("rekeyed")
    assert liveness.recent_crashes() == liveness.limit
    assert healthz(liveness) == (
        {"status": "crash_loop", "agent_crashes_last_minute": liveness.limit}, 503
    )
    clock.advance(liveness.window_ms / 1000 + 0.001)
    assert liveness.recent_crashes() == 0
    assert healthz(liveness) == ({"status": "ok"}, 200)


async def test_a_supervised_agent_counts_its_crash_and_still_raises() -> None:
    crashed: list[str] = []
    liveness = Liveness(clock=FakeClock(0), on_crash=crashed.append)

    async def agent(stream: list[int]) -> None:
        raise ValueError(f"bad record {stream[0]}")

    wrapped = supervised("rekeyed", agent, liveness)
    assert wrapped.__name__ == "rekeyed_agent"
    with pytest.raises(ValueError, match="bad record 7"):
        await wrapped([7])
    assert crashed == ["rekeyed"]
    assert liveness.recent_crashes() == 1


async def test_a_supervised_agent_that_ends_counts_nothing() -> None:
    crashed: list[str] = []
    liveness = Liveness(clock=FakeClock(0), on_crash=crashed.append)
    seen: list[int] = []

    async def agent(stream: list[int]) -> None:
        seen.extend(stream)

    await supervised("ingest", agent, liveness)([1, 2])
    assert seen == [1, 2]
    assert crashed == [] and liveness.recent_crashes() == 0


@pytest.mark.parametrize(
    ("joined", "rebalancing", "recovery_done", "delivery", "ready"),
    [
        (True, False, True, True, True),
        (False, False, True, True, False),  # before the first rebalance
        (True, True, True, True, False),  # mid-rebalance, after joining once
        (True, False, False, True, False),  # tables still recovering
        (True, False, True, False, False),  # a component's own check
    ],
)
def test_ready_only_when_every_check_passes(
    joined: bool, rebalancing: bool, recovery_done: bool, delivery: bool, ready: bool
) -> None:
    readiness = Readiness(joined=joined, checks={"delivery": lambda: delivery})
    body, status = readyz(readiness, rebalancing=rebalancing, recovery_done=recovery_done)
    assert body == {
        "ready": ready,
        "checks": {
            "joined_group": joined and not rebalancing,
            "recovery_done": recovery_done,
            "delivery": delivery,
        },
    }
    assert status == (200 if ready else 503)


def _faust_app() -> faust.App:
    return faust.App("stop-on-failure", broker="kafka://127.0.0.1:1", store="memory://",
                     web_enabled=False)


async def test_a_refused_flush_crashes_a_running_faust_app() -> None:
    app = _faust_app()
    refused = RuntimeError("the broker refused the flush")
    crashing = stop_on_failure(app)(refused)
    assert isinstance(crashing, asyncio.Future)
    await crashing
    assert app.should_stop
    assert app.crash_reason is refused


async def test_a_flush_refused_while_stopping_is_logged_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A SIGTERM closes the producer before the app's tasks end, so a flush in that gap is
    refused; crashing then would make a clean stop exit 1 (the join/leave chaos test)."""
    app = _faust_app()
    await app.stop()
    with caplog.at_level(logging.WARNING, logger="worker.health"):
        assert stop_on_failure(app)(RuntimeError("ProducerClosed")) is None
    assert app.crash_reason is None
    assert "refused while the worker stops" in caplog.text
