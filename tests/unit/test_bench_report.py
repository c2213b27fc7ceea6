"""bench/report.py renders REPORT.md from a fixed set of results (no broker, no benchmark run)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPORT = Path(__file__).resolve().parents[2] / "bench" / "report.py"


def _report_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _restart(n: int, ready: float, back: int) -> dict[str, Any]:
    return {"ready_s": ready, "windows_back_s": ready + 1.5, "windows_back": back,
            "windows_expected": n, "rss_mib": 300.0, "peak_rss_mib": 310.0, "exit_code": 0,
            "missing": n - back}


def _memory(n: int, peak: float) -> dict[str, Any]:
    return {
        "windows": n, "partitions": 8, "block_cache_bytes": 64 << 20,
        "open": {"events_per_s": 1500.0, "rss_mib": peak - 10, "peak_rss_mib": peak,
                 "rocksdb_mib": 30.0, "rocksdb_mib_after_stop": 20.0},
        "warm": _restart(n, 8.5, n),
        "cold": _restart(n, 12.0, n - 3),
    }


RESULTS: dict[str, Any] = {
    "pipeline": {
        "events": 200_000, "requests": 20_000, "partitions": 8, "publish_per_s": 60_000.0,
        "raw_aiokafka_per_s": 700_000.0, "bare_faust_per_s": 13_000.0, "worker_per_s": 5_200.0,
        "worker_vs_bare_faust": 0.4, "worker_vs_raw_aiokafka": 0.0074,
        "worker_rss_mib": 140, "worker_peak_rss_mib": 150,
        "live": {
            "rate_per_s": 1000, "seconds": 30, "step_ms": 25, "events_sent": 30_000,
            "windows_decided": 7000, "grace_s": 1.0, "idle_close_s": 2.0,
            "stream_time": {"n": 6000, "p50_ms": 120.0, "p99_ms": 640.0, "max_ms": 900.0},
            "idle_timer": {"n": 1000, "p50_ms": 1500.0, "p99_ms": 2900.0, "max_ms": 3000.0},
        },
    },
    "delivery": {"error": "WorkerDied: worker exited with code 1"},
    "memory": [_memory(100_000, 400.0), _memory(1_000_000, 2_000.0)],
    "scaling": {
        "events": 200_000, "partitions": 8, "cpus": 2,
        "runs": [
            {"workers": k, "events_per_s": 5000.0 / k ** 0.5, "speedup": 1 / k ** 0.5,
             "events_per_s_whole_drain": 4000.0, "events_by_worker": [200_000 // k] * k,
             "cpu_s_by_worker": [40.0 / k] * k, "cores_busy": 1.0}
            for k in (1, 2, 4)
        ],
    },
    "durations_s": {"pipeline": 200.0, "delivery": 10.0, "memory": 900.0, "scaling": 300.0},
}
META: dict[str, Any] = {
    "date": "2026-11-22 18:00 UTC", "command": ".venv/bin/python bench/report.py",
    "mode": "full", "duration_s": 1410.0,
    "machine": {"cpus": 2, "cpu_model": "Test CPU", "ram_gib": 23.5, "kernel": "Linux 6",
                "load_avg_at_start": [1.0, 1.0, 1.0], "load_avg_at_end": [2.0, 2.0, 2.0]},
    "versions": {"python": "3.11.7", "faust-streaming": "0.15.3", "worker_commit": "abc123"},
}


def test_report_renders_every_section_with_verdicts() -> None:
    text = _report_module().render(RESULTS, META)

    assert text.startswith("# Benchmark report")
    for heading in ("## Machine and versions", "## Targets", "## Failed runs",
                    "## 1. Pipeline", "## 3. Memory", "## 4. Scaling", "## Run time"):
        assert heading in text
    assert "Test CPU, 2 cores" in text and "abc123" in text
    assert "`.venv/bin/python bench/report.py`" in text
    # pipeline ratio 0.4 misses 0.8; p99 640 ms meets 1 s; 2,000 MiB misses 1.5 GiB
    targets = text.split("## Targets", 1)[1].split("\n## ", 1)[0]
    assert "| 0.40 (5,200 vs 13,000 events/s) | >= 0.8 | **missed** |" in targets
    assert "| 640 ms (p50 120 ms) | <= 1,000 ms | **met** |" in targets
    assert "2,000 MiB | <= 1,536 MiB (1.5 GiB) | **missed** |" in targets
    assert targets.count("warm restart ready") == 2
    # a failed benchmark is reported, not hidden
    assert "**delivery**: `WorkerDied: worker exited with code 1`" in text
    assert "999,997 of 1,000,000" in text  # cold recovery count is shown, not assumed
    assert "KAFKA_PRODUCER_BATCH_BYTES=1" in text


def test_report_warns_when_the_worker_changed_during_the_run() -> None:
    render = _report_module().render
    quiet = render(RESULTS, {**META, "worker_tree_at_start": "aaa", "worker_tree_at_end": "aaa"})
    changed = render(RESULTS, {**META, "worker_tree_at_start": "aaa", "worker_tree_at_end": "bbb"})

    assert "worker/ changed while the benchmarks ran" not in quiet
    assert "worker/ changed while the benchmarks ran" in changed


COLLECTOR: dict[str, Any] = {
    "events": 40_000, "batch": 20, "clients": 16, "partitions": 8, "cpus": 2,
    "idempotent_producer": False, "rss_idle_mib": 62.0,
    "rounds": 2, "raw_produce_per_s": 26_000.0,
    "raw_produce_runs_per_s": [24_000.0, 26_000.0, 28_000.0],
    "collector_runs_per_s": [8_000.0, 8_700.0], "collector_vs_raw_rounds": [0.32, 0.3346],
    "raw_batches_per_s": 20_000.0, "collector_per_s": 8_700.0, "collector_vs_raw": 0.3346,
    "collector_vs_raw_batches": 0.435, "answers": {"202": 2000}, "accepted": 40_000,
    "collector_cores_busy": 0.9, "clients_cores_busy": 0.5,
    "paced": {
        "batches_per_s": 50, "events_per_s": 1000, "seconds": 30, "answers": {"202": 1500},
        "client_behind_schedule_max_ms": 3.0,
        "collector": {"n": 1500, "p50_ms": 15.6, "p99_ms": 41.0, "max_ms": 109.0},
        "raw_produce": {"n": 1500, "p50_ms": 12.7, "p99_ms": 18.7, "max_ms": 28.9},
        "collector_rss_mib": 66.0, "collector_rss_max_mib": 66.4, "collector_peak_rss_mib": 67.0,
        "collector_cores_busy": 0.17,
    },
}


def test_report_renders_the_collector_section_and_targets() -> None:
    text = _report_module().render({**RESULTS, "collector": COLLECTOR}, META)

    assert "## 5. HTTP collector (`bench/collector.py`)" in text
    assert "COLLECTOR_IDEMPOTENT_PRODUCER=false" in text
    assert "(rounds: 0.320, 0.335)" in text
    targets = text.split("## Targets", 1)[1].split("\n## ", 1)[0]
    assert "| 0.33 (8,700 vs 26,000 events/s) | >= 0.5 | **missed** |" in targets
    assert "| 41.0 ms (raw produce of the same batches: 18.7 ms) | <= 50 ms | **met** |" in targets
    assert "| collector RSS under that load | 66 MiB (idle 62 MiB) | stated | n/a |" in targets


def test_report_runs_as_a_script(tmp_path: Path) -> None:
    """``python bench/report.py`` runs the module top to bottom: every helper ``main`` reaches
    must be defined above the ``__main__`` guard (importing the module, as the tests above
    do, would hide one defined below it)."""
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"results": {**RESULTS, "collector": COLLECTOR}, "meta": META}))
    out = tmp_path / "REPORT.md"

    done = subprocess.run([sys.executable, str(REPORT), "--render", str(saved), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert "## 5. HTTP collector" in out.read_text()
