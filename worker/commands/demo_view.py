"""What the demo shows while it runs: the worker's ``/metrics`` read back, and the live tables.

:func:`scrape` reads ``/metrics`` into ``{name: [(labels, value), ...]}``, :func:`total` sums
a series over matching labels, :func:`live_view` renders the progress and the decisions so far,
and :func:`settle` waits (watching) until the worker is idle: no open window, nothing left to
deliver, and the counts of decisions and deliveries unchanged for 3 s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worker.commands.demo_traffic import Progress

__all__ = ["live_view", "scrape", "settle", "total"]


async def scrape(http: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
    """``/metrics`` as {name: [(labels, value), ...]}; None when it cannot be read."""
    try:
        text = (await http.get(url)).text
    except httpx.HTTPError:
        return None
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, Any], name: str, **labels: str) -> int:
    return int(
        sum(
            value
            for got, value in samples.get(name, [])
            if all(got.get(k) == v for k, v in labels.items())
        )
    )


async def settle(
    http: httpx.AsyncClient,
    url: str,
    progress: Progress,
    live: Live,
    receiver: Any,
    *,
    timeout_s: float,
) -> dict[str, Any]:
    """Until no window is open and decisions and deliveries held still for 3 s."""
    deadline = time.monotonic() + timeout_s
    samples: dict[str, Any] = {}
    last: tuple[int, ...] = ()
    since = time.monotonic()
    while time.monotonic() < deadline:
        samples = await scrape(http, url) or samples
        live.update(live_view(progress, samples, url, receiver))
        state = (
            total(samples, "feedback_decisions_total"),
            total(samples, "feedback_delivery_delivered_total"),
            total(samples, "feedback_delivery_dlq_total"),
        )
        if state != last:
            last, since = state, time.monotonic()
        idle = (
            total(samples, "feedback_windows_open") == 0
            and total(samples, "feedback_delivery_backlog") == 0
        )
        if samples and idle and time.monotonic() - since >= 3:
            break
        await asyncio.sleep(0.5)
    return samples


def live_view(
    progress: Progress, samples: dict[str, Any], metrics_url: str, receiver: Any
) -> Group:
    elapsed = time.monotonic() - progress.started
    summary = Table(title=f"feedback-worker demo: {progress.phase} ({elapsed:.0f} s)",
                    show_header=False, min_width=60)
    summary.add_column("what")
    summary.add_column("count", justify="right")
    summary.add_row("simulated answers", str(progress.journeys))
    summary.add_row("events published", str(progress.published))
    summary.add_row("  of which through the collector (HTTP, 202)", str(progress.via_collector))
    summary.add_row("hostile records published", str(progress.hostile))
    summary.add_row("events accepted (feedback_events_total)",
                    str(total(samples, "feedback_events_total")))
    summary.add_row("invalid (feedback_events_invalid_total)",
                    str(total(samples, "feedback_events_invalid_total")))
    summary.add_row("open windows", str(total(samples, "feedback_windows_open")))
    summary.add_row("decisions", str(total(samples, "feedback_decisions_total")))
    summary.add_row("delivered", str(total(samples, "feedback_delivery_delivered_total")))
    summary.add_row("retried calls",
                    str(total(samples, "feedback_delivery_attempts_total", outcome="retryable")))
    summary.add_row("dead-lettered", str(total(samples, "feedback_delivery_dlq_total")))
    if receiver is not None:
        summary.add_row("calls received by the local receiver", str(len(receiver.records)))

    decisions = Table(title="decisions by rule and rating", min_width=60)
    decisions.add_column("rule")
    for rating in ("true", "false", "none"):
        decisions.add_column(rating, justify="right")
    rules = sorted({labels["rule"] for labels, _ in samples.get("feedback_decisions_total", [])})
    for rule in rules:
        decisions.add_row(
            rule,
            *(str(total(samples, "feedback_decisions_total", rule=rule, rating=r))
              for r in ("true", "false", "none")),
        )
    return Group(summary, decisions, Text(f"metrics: {metrics_url}", style="dim"))
