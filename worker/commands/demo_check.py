"""The demo's final checks: the outbox decisions against what each simulated user meant, and
what the local receiver stores against what those decisions mean.

Pure functions of the journeys, the outbox documents and the receiver's stored state; the
demo (:mod:`worker.commands.demo`) and the soak (``bench/soak.py``) print their tables.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.table import Table

from worker.delivery_state import FeedbackState, calls_for, merge
from worker.devtools.traffic import Journey
from worker.events import Decision

__all__ = ["check_table", "stored_table"]


def stored_table(found: list[dict[str, Any]], receiver: Any) -> tuple[Table, bool]:
    """What the local receiver stores (Helicone's batch dedupe applied) against what the
    outbox decisions mean for each request: its rating and every score, in one state."""
    meant: dict[str, FeedbackState] = {}
    for document in found:
        decision = Decision.model_validate(document)
        if decision.target == "request" and decision.request_id:
            meant[decision.request_id], _ = merge(
                meant.get(decision.request_id), decision, now_ms=0
            )
    stored = receiver.stored()
    counts: Counter[str] = Counter()
    for request_id, state in meant.items():
        scores = calls_for(state)[0].body["scores"] if calls_for(state) else {}
        if not scores:
            continue
        counts["requests"] += 1
        got = stored.get(request_id)
        if got is None:
            counts["missing"] += 1
        elif got.scores == scores and got.feedback == state.rating:
            counts["as meant"] += 1
        else:
            counts["different"] += 1
    table = Table(title="final check: what Helicone stores vs. the decisions")
    for column in ("requests", "as meant", "missing", "different"):
        table.add_column(column, justify="right")
    table.add_row(*(str(counts[c]) for c in ("requests", "as meant", "missing", "different")))
    return table, counts["missing"] == counts["different"] == 0


def check_table(journeys: list[Journey], found: list[dict[str, Any]]) -> tuple[Table, bool]:
    """Decisions on the outbox against each simulated user's intent, per rule
    (:attr:`~worker.devtools.traffic.Journey.expected`: code journeys also mean a
    ``code_retention`` and an ``explicit`` rating when they report retained code or press a
    thumbs).  Only ratings are compared: an abstention is no rating."""
    decided: dict[tuple[str, str], set[bool | None]] = {}
    for d in found:
        key = (str(d.get("request_id") or d.get("session_id")), str(d.get("rule")))
        decided.setdefault(key, set()).add(d.get("rating"))
    rows: dict[str, Counter[str]] = {}
    for journey in journeys:
        for rule, intended in journey.expected.items():
            got = decided.get((journey.request_id, rule), set())
            row = rows.setdefault(rule, Counter())
            if intended is None:
                row["no rating meant"] += 1
                row["as meant" if got <= {None} else "extra"] += 1
            else:
                row["rating meant"] += 1
                if not got - {None}:
                    row["missing"] += 1
                elif got == {intended}:
                    row["as meant"] += 1
                else:
                    row["wrong"] += 1
    columns = ["rating meant", "no rating meant", "as meant", "missing", "wrong", "extra"]
    table = Table(
        title="final check: outbox decisions vs. simulated intent",
        caption="extra: a rating where the simulated user meant none (a decision without "
        "one, scores only or an abstention, is as meant there)",
    )
    table.add_column("rule", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right")
    total: Counter[str] = Counter()
    for rule in sorted(rows):
        total.update(rows[rule])
        table.add_row(rule, *(str(rows[rule][c]) for c in columns))
    table.add_row("all", *(str(total[c]) for c in columns), style="bold")
    ok = total["missing"] == total["wrong"] == total["extra"] == 0
    return table, ok
