"""The broker goes away and a new one comes up on the same address.

Tansu keeps everything in memory, so the restarted broker is empty: topics, committed offsets
and the group are gone (a real Kafka cluster would keep them).  What is asserted is the
worker's behaviour, not that data survives: it stays up and healthy through the outage, says
so (``/readyz`` and its log), rejoins the new broker on its own, reports the changelogs that
lost what its local stores hold (it keeps that state), creates its topics again, and decides
and delivers events published after the restart exactly once, while what it delivered before
the restart is not delivered again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.chaos.scenarios import (
    FULL,
    NO_RESTART_IDLE_CLOSE_S,
    SHAPE,
    env_for,
    historical_start_ms,
    verify,
)
from tests.chaos.workload import records_for, workload
from tests.fixtures.delivery import ReceiverThread
from tests.fixtures.kafka import produce
from tests.fixtures.worker import TestTopics, WorkerProcess
from worker.devtools.broker import EmbeddedBroker

pytestmark = [pytest.mark.chaos, pytest.mark.integration,
              pytest.mark.timeout(900 if FULL else 300)]


@pytest.fixture
def kafka_bootstrap(own_broker: EmbeddedBroker) -> str:
    """This module's workers use a broker of their own (restarting the session one would
    break every other test)."""
    return own_broker.bootstrap_servers


def publish_wave(bootstrap: str, topics: TestTopics, *, start_ms: int, seed: int) -> None:
    journeys = workload(40, start_ms=start_ms, spread_ms=20_000, windows=SHAPE, seed=seed)
    asyncio.run(produce(bootstrap, topics.ui_events, records_for(journeys)))


class WorkerDiedOnRejoin(AssertionError):
    """The worker exited after the broker came back (rather than rejoining it)."""


def alive(worker: WorkerProcess) -> None:
    assert worker.process is not None
    if worker.process.poll() is not None:
        raise WorkerDiedOnRejoin(
            f"the worker exited with {worker.process.returncode} after the broker came back:"
            f"\n{worker.logs()[-4000:]}"
        )


def test_broker_restarted_on_the_same_port(
    own_broker: EmbeddedBroker,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
    chaos_seed: int,
) -> None:
    restarts, down_s = (3, 20.0) if FULL else (1, 2.0)
    bootstrap = own_broker.bootstrap_servers
    env = env_for(helicone_receiver, restores=False, IDLE_CLOSE_S=NO_RESTART_IDLE_CLOSE_S)
    worker: WorkerProcess = worker_factory(**env)
    worker.wait_ready()
    start_ms = historical_start_ms(hours_ago=6)
    publish_wave(bootstrap, topics, start_ms=start_ms, seed=chaos_seed)
    delivered = verify(bootstrap=bootstrap, topics=topics, env=env, receiver=helicone_receiver,
                       workers=[worker], seed=chaos_seed).decisions

    for n in range(1, restarts + 1):
        own_broker.stop()
        outage_ends = time.monotonic() + down_s
        while time.monotonic() < outage_ends:  # through the outage: alive and healthy
            assert worker.process is not None and worker.process.poll() is None, worker.logs()
            assert httpx.get(worker.url("/healthz"), timeout=5).status_code == 200
            time.sleep(0.5)
        logs = worker.logs()
        assert "Unable connect to node" in logs or "Unable to update metadata" in logs, logs[-3000:]
        own_broker.start()
        # It noticed (not ready while it rejoins) and comes back by itself, and stays up.
        saw_not_ready = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            alive(worker)
            try:
                ready = httpx.get(worker.url("/readyz"), timeout=5).status_code == 200
            except httpx.HTTPError:
                continue  # the next alive() check says whether it went away
            saw_not_ready = saw_not_ready or not ready
            if saw_not_ready and ready:
                break
            time.sleep(0.25)
        assert saw_not_ready, "/readyz never reported the lost broker"
        for _ in range(20):  # still up once recovery has run on the new broker
            alive(worker)
            time.sleep(0.5)
        worker.wait_ready(timeout_s=60)
        # It says the changelogs lost what its stores hold (and kept its state:
        # worker.faust_compat.recovery) and created its topics again.
        assert worker.metric_sum("feedback_changelog_behind_store_total") >= n
        logs = worker.logs()
        assert "the broker lost changelog records" in logs, logs[-3000:]
        assert "topics were missing after a rebalance and are created again" in logs

        # The new broker is empty: only what is published now is on it.  Later event times
        # than anything before, since the worker's local state still knows its stream time.
        publish_wave(bootstrap, topics, start_ms=start_ms + n * 3_600_000, seed=chaos_seed + n)
        delivered = verify(bootstrap=bootstrap, topics=topics, env=env,
                           receiver=helicone_receiver, workers=[worker], seed=chaos_seed,
                           also_decisions=delivered).decisions
        alive(worker)
