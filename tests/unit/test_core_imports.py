"""The core (rules, window engine) imports no I/O library (STYLE 4.1).

Checked in a fresh interpreter, because pytest itself may already have imported them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

IO_LIBRARIES = {"faust", "aiokafka", "httpx", "prometheus_client"}
ROOT = Path(__file__).resolve().parents[2]


def run_probe(code: str) -> str:
    """Run ``code`` in a fresh interpreter that imports this checkout's ``worker``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
    )
    return out.stdout.strip()


def test_core_imports_no_io_libraries() -> None:
    probe = (
        "import sys, worker.rules, worker.windows; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        f"set({sorted(IO_LIBRARIES)!r})))"
    )
    assert run_probe(probe) == "[]"


def test_collector_core_imports_no_io_libraries() -> None:
    """The collector's batch parsing and policies are pure (issue 15): no HTTP server,
    no Kafka client, no metrics registry."""
    probe = (
        "import sys, worker.collector.batch, worker.collector.policy, "
        "worker.partitioner; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        f"set({sorted(IO_LIBRARIES | {'aiohttp'})!r})))"
    )
    assert run_probe(probe) == "[]"


def test_the_probe_would_notice_an_io_import() -> None:
    """Guard against a probe that can never fail: an I/O module does show up."""
    probe = "import sys, json; print(sorted({m.split('.')[0] for m in sys.modules} & {'json'}))"
    assert run_probe(probe) == "['json']"


def test_delivery_core_imports_no_io_libraries() -> None:
    """Delivery's pure half (policy, whole-state merge) imports no I/O library at all."""
    probe = (
        "import sys, worker.delivery, worker.delivery_state; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        f"set({sorted(IO_LIBRARIES | {'aiohttp'})!r})))"
    )
    assert run_probe(probe) == "[]"


def test_delivery_engine_imports_no_faust_http_or_metrics() -> None:
    """The engine gets tables, a send function, a poster and a clock injected (issue 14: an
    engine no longer lives in its adapter).  It uses Kafka's partitioner (:mod:`worker.partitioner`,
    pure Python) to route a decision to the partition that owns its request, nothing else."""
    probe = (
        "import sys, worker.delivery_engine; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'faust', 'mode', 'httpx', 'prometheus_client', 'aiohttp'}))"
    )
    assert run_probe(probe) == "[]"


def test_health_imports_only_the_standard_library() -> None:
    """Health and supervision are imported by the app and the agents alike, so they import
    no adapter of the worker and no I/O library (issue 17: no import circle through them)."""
    probe = (
        "import sys; before = set(sys.modules); import worker.health; "
        "print(sorted(m for m in set(sys.modules) - before "
        "if m.split('.')[0] in {'worker', 'faust', 'mode', 'aiokafka', 'httpx', "
        "'prometheus_client', 'aiohttp'} and m not in {'worker', 'worker.health'}))"
    )
    assert run_probe(probe) == "[]"


def test_prompts_core_imports_no_io_libraries() -> None:
    """Feedback prompts' detection and cooldown are pure (issue 16): the adapter
    (worker.agents.prompts) does the Faust and Kafka work."""
    probe = (
        "import sys, worker.prompts; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        f"set({sorted(IO_LIBRARIES | {'aiohttp'})!r})))"
    )
    assert run_probe(probe) == "[]"
