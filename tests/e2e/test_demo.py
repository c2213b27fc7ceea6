"""`feedback-worker demo` end to end: broker, receiver, worker and traffic, shortened.

Runs the real command as a process (as `make demo` does) with ``--seconds 15`` and checks that
it ends by itself, exits 0 (every intended rating decided as intended, a third of the journeys
having gone through the HTTP collector) and prints the final check table.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from worker.devtools.broker import BrokerNotAvailable, find_tansu

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_checks_and_exits_0() -> None:
    try:
        find_tansu()
    except BrokerNotAvailable as exc:  # pragma: no cover - the test extra ships it
        pytest.skip(f"no Tansu binary: {exc}")
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.pathsep.join(sys.path),
        "COLUMNS": "120",
        **({"TANSU_BIN": os.environ["TANSU_BIN"]} if "TANSU_BIN" in os.environ else {}),
    }
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo", "--seconds", "15"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "final check: outbox decisions vs. simulated intent" in output
    assert "every intended rating was decided as intended" in output
    assert "ENGAGEMENT_WINDOW_S=6" in output  # the short windows are announced
    assert "/metrics" in output
    # part of the traffic goes through the HTTP collector, and the demo says how much
    assert "/v1/events" in output and "Through the collector (" in output
    for rule in ("engagement", "code_suggestion", "search_clicks"):
        assert rule in output
    # the feedback prompts report: asking every time against asking on early signs
    assert "Feedback prompts: ask only when it matters" in output
    assert "ask after every answer" in output and "per 100 answers shown" in output
