"""``feedback-worker calibrate``: each implicit rule's ratings against the users' thumbs.

Reads the outbox (``TOPIC_OUTBOX``) from the beginning to its end, keeps the decisions
(anything else on the topic is counted and skipped), and prints what
:func:`worker.calibration.calibrate` computes.  Reading stops at each partition's high
watermark as fetch responses report it, not ListOffsets, which Tansu gets wrong for
multi-record batches (DESIGN 2); the same approach as ``dlq list``.

The outbox is the record: its retention bounds how far back ``--since`` can see.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click
import orjson
from rich.console import Console
from rich.table import Table

from worker.calibration import Proportion, RuleCalibration, calibrate
from worker.commands.common import load_settings_or_exit, read_decisions
from worker.commands.dlq import _DURATION

if TYPE_CHECKING:
    pass

__all__ = ["calibrate_command"]


def _pct(p: Proportion) -> str:
    if p.value is None:
        return "-"
    low, high = p.interval or (0.0, 0.0)
    return f"{100 * p.value:.0f}% [{100 * low:.0f}-{100 * high:.0f}] of {p.trials}"


def _table(results: list[RuleCalibration], title: str) -> Table:
    table = Table(title=title)
    for column in (
        "rule",
        "decisions",
        "decided nothing",
        "with thumbs",
        "agreement",
        "precision of true",
        "precision of false",
    ):
        table.add_column(column, justify="left" if column == "rule" else "right")
    for r in results:
        table.add_row(
            r.rule,
            str(r.decisions),
            _pct(r.undecided_share),
            str(r.paired),
            _pct(r.agreement),
            _pct(r.positive_precision),
            _pct(r.negative_precision),
        )
    return table


@click.command("calibrate")
@click.option(
    "--since",
    type=_DURATION,
    default=None,
    help="Only decisions made within this long (e.g. 7d); default: the whole outbox.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document per rule, per line.")
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to allow for reading the outbox.",
)
def calibrate_command(since: timedelta | None, as_json: bool, timeout: float) -> None:
    """How far each implicit rule agrees with explicit thumbs, read from the outbox.

    Per rule: decisions; the share that decided nothing (records with neither a rating nor
    a shadow, whatever their scores, over all the rule's records); requests that also got
    an explicit rating; agreement; and the precision of the rule's true and of its false
    ratings against the thumbs, each with a 95 % Wilson interval.  A rating the thumbs
    overrode counts too (its shadow_rating).  Windows the rule decided nothing for
    (engagement ties, untouched suggestions) are counted through their abstention records,
    written while OUTBOX_ABSTENTIONS is on (the default); with it off they are missing.
    """
    settings = load_settings_or_exit()
    with Console(stderr=True).status(f"reading {settings.topic_outbox}"):
        read = asyncio.run(read_decisions(settings, timeout_s=timeout))
    if read is None:
        Console(stderr=True).print(f"{settings.topic_outbox} does not exist: nothing decided yet")
        return
    decisions, skipped = read
    cutoff = datetime.now(UTC) - since if since is not None else None
    results = calibrate(decisions, since=cutoff)
    if as_json:
        for result in results:
            click.echo(orjson.dumps(result.as_dict()).decode())
        return
    window = f"the last {since}" if since is not None else "the whole outbox"
    title = f"{len(decisions)} decisions in {settings.topic_outbox}, {window}"
    console = Console(soft_wrap=False)
    console.print(_table(results, title))
    console.print(
        "decided nothing: the rule's records with no rating and no shadow (abstentions "
        "included), of all its records"
    )
    console.print(
        "precision: share of the rule's true (false) ratings the user's thumbs confirmed; "
        "\\[low-high]: 95 % Wilson interval"
    )
    if not settings.outbox_abstentions:
        console.print(
            "OUTBOX_ABSTENTIONS is off in this environment: if it is off for the worker too, "
            "windows that decided nothing wrote no record and \"decided nothing\" undercounts "
            "them"
        )
    if skipped:
        console.print(f"{skipped} records on {settings.topic_outbox} were not decisions")
