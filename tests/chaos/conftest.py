"""Chaos fixtures: a seed per test (printed, so a failure can be replayed with CHAOS_SEED),
and a broker of a test's own that can be restarted on the same port."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from worker.devtools.broker import EmbeddedBroker, free_port


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    """``CHAOS_SEED=n`` replays a run; otherwise a fresh seed, printed and kept in the report."""
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(2**31))
    print(f"chaos seed {seed} (replay: CHAOS_SEED={seed})")
    request.node.user_properties.append(("chaos_seed", seed))
    return seed


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A Tansu of this test only, on a fixed port, so it can be restarted at the same address."""
    log_path = tmp_path_factory.mktemp("own-tansu") / "tansu.log"
    broker = EmbeddedBroker(port=free_port(), log_path=log_path)
    broker.start()
    yield broker
    broker.stop()
