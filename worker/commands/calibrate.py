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
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click
import orjson
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from worker.calibration import Proportion, RuleCalibration, calibrate
from worker.commands.dlq import _DURATION, _load_settings
from worker.events import Decision

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = ["calibrate_command", "read_decisions"]


async def read_decisions(
    settings: Settings, *, timeout_s: float = 30.0
) -> tuple[list[Decision], int] | None:
    """Every decision on the outbox up to its end, and how many records were not decisions;
    None when the topic does not exist."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from worker.kafka import client_kwargs

    topic = settings.topic_outbox
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, auto_offset_reset="earliest", **client_kwargs(settings)
    )
    await consumer.start()
    decisions: list[Decision] = []
    skipped = 0
    try:
        if topic not in await consumer.topics():
            return None
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=5_000)
            for records in batch.values():
                for record in records:
                    try:
                        decisions.append(Decision.model_validate_json(record.value or b""))
                    except ValidationError:
                        skipped += 1
            if await _caught_up(consumer, tps):
                return decisions, skipped
        raise click.ClickException(
            f"could not read {topic} to its end within {timeout_s:.0f} s "
            "(is the broker reachable? try --timeout)"
        )
    finally:
        await consumer.stop()


async def _caught_up(consumer: Any, tps: list[Any]) -> bool:
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


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

    Per rule: decisions; the share that decided nothing (no rating and no shadow); requests
    that also got an explicit rating; agreement; and the precision of the rule's true and of
    its false ratings against the thumbs, each with a 95 % Wilson interval.  A rating the
    thumbs overrode counts too (its shadow_rating).  Windows that decided nothing and had no
    score (engagement ties, untouched suggestions) write no decision, so they are not in
    "decided nothing".
    """
    settings = _load_settings()
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
        "precision: share of the rule's true (false) ratings the user's thumbs confirmed; "
        "\\[low-high]: 95 % Wilson interval"
    )
    if skipped:
        console.print(f"{skipped} records on {settings.topic_outbox} were not decisions")
