"""Chaos fixtures: a seed per test (printed, so a failure can be replayed with CHAOS_SEED),
and a broker of a test's own that can be restarted on the same port.

The short forms in ``make test`` draw their seed from the test's name, so the suite runs the
same scenarios every time and a failure there is a change in the code, not a new draw.  Only
``make test-chaos`` (CHAOS_FULL=1) draws fresh seeds, to explore; the run ends with a list
of every test's seed, passed or not, so an explored draw can be replayed.
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator

import pytest

from tests.chaos.scenarios import FULL
from worker.devtools.broker import EmbeddedBroker, free_port


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    """``CHAOS_SEED=n`` replays a run; otherwise a fixed seed per test in the short form and a
    fresh one in the long form, printed and kept in the report either way."""
    if os.environ.get("CHAOS_SEED"):
        seed = int(os.environ["CHAOS_SEED"])
    elif FULL:
        seed = random.randrange(2**31)
    else:
        seed = zlib.crc32(request.node.nodeid.encode()) & 0x7FFFFFFF
    print(f"chaos seed {seed} (replay: CHAOS_SEED={seed})")
    request.node.user_properties.append(("chaos_seed", seed))
    return seed


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per chaos test that drew a seed: its outcome and the seed."""
    seeds: dict[str, tuple[str, int]] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            properties = dict(getattr(report, "user_properties", ()))
            if "chaos_seed" not in properties:
                continue
            earlier = seeds.get(report.nodeid, ("passed", 0))[0]
            outcome = report.outcome if earlier == "passed" else earlier  # the first failure
            seeds[report.nodeid] = (outcome, properties["chaos_seed"])
    if seeds:
        terminalreporter.section("chaos seeds (replay: CHAOS_SEED=n)")
        for nodeid, (outcome, seed) in sorted(seeds.items()):
            terminalreporter.line(f"{seed:>10}  {outcome:<7} {nodeid}")


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A Tansu of this test only, on a fixed port, so it can be restarted at the same address."""
    log_path = tmp_path_factory.mktemp("own-tansu") / "tansu.log"
    broker = EmbeddedBroker(port=free_port(), log_path=log_path)
    broker.start()
    yield broker
    broker.stop()
