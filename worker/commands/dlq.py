"""``feedback-worker dlq list|redrive``: what delivery dead-lettered and why, and putting it back.

The dead-letter topic (``TOPIC_DLQ``) is append-only, so redriving cannot remove a record.
Instead ``redrive`` appends a small *redriven* marker (header :data:`REDRIVEN_HEADER`, same key,
so same partition, after the record) and both commands show a decision only while its newest
record is a dead-letter record: a decision that fails again after a redrive shows up again.

Reading stops at each partition's high watermark as reported by fetch responses
(:func:`worker.commands.common.read_to_end`).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.commands.common import load_settings_or_exit, read_to_end
from worker.delivery import DEAD_LETTER_REASONS
from worker.envelopes import REDRIVE_HEADER, REDRIVEN_HEADER

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = ["DeadLetter", "dlq", "open_dead_letters", "read_dead_letters"]

# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter record, as read from the topic."""

    partition: int
    offset: int
    key: bytes | None
    document: dict[str, Any]

    @property
    def decision_id(self) -> str | None:
        value = self.document.get("decision_id")
        return value if isinstance(value, str) else None

    @property
    def reason(self) -> str:
        return str(self.document.get("reason", "?"))

    @property
    def decision(self) -> dict[str, Any] | None:
        value = self.document.get("decision")
        return value if isinstance(value, dict) else None

    @property
    def dead_lettered_at(self) -> datetime | None:
        raw = self.document.get("dead_lettered_at")
        try:
            return datetime.fromisoformat(raw) if isinstance(raw, str) else None
        except ValueError:
            return None

    @property
    def target_id(self) -> str | None:
        decision = self.decision or {}
        target = decision.get("request_id" if decision.get("target") == "request" else "session_id")
        return target if isinstance(target, str) else None


@dataclass(frozen=True, slots=True)
class _Marker:
    partition: int
    offset: int
    decision_id: str


async def read_dead_letters(
    settings: Settings, *, timeout_s: float = 30.0
) -> tuple[list[DeadLetter], list[_Marker]] | None:
    """Every record of the dead-letter topic up to its end; None when the topic is missing."""
    read = await read_to_end(settings, settings.topic_dlq, _parse, timeout_s=timeout_s)
    if read is None:
        return None
    letters = [item for item in read.items if isinstance(item, DeadLetter)]
    markers = [item for item in read.items if isinstance(item, _Marker)]
    return letters, markers


def _parse(record: Any) -> DeadLetter | _Marker | None:
    """A dead letter, a redriven marker, or None for what the worker did not write."""
    headers = dict(record.headers or ())
    try:
        document = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return None  # not written by the worker; nothing to show or redrive
    if not isinstance(document, dict):
        return None
    if REDRIVEN_HEADER in headers:
        decision_id = document.get("decision_id")
        if isinstance(decision_id, str):
            return _Marker(record.partition, record.offset, decision_id)
        return None
    return DeadLetter(record.partition, record.offset, record.key, document)


def open_dead_letters(letters: list[DeadLetter], markers: list[_Marker]) -> list[DeadLetter]:
    """The newest dead-letter record of each decision not redriven since (in topic order).

    Records without a decision id (the outbox held something that was not a decision) are
    always listed: there is nothing to redrive for them.
    """
    newest: dict[str, tuple[tuple[int, int], DeadLetter | None]] = {}
    loose: list[DeadLetter] = []
    for letter in letters:
        decision_id = letter.decision_id
        if decision_id is None:
            loose.append(letter)
            continue
        position = (letter.partition, letter.offset)
        if decision_id not in newest or newest[decision_id][0] < position:
            newest[decision_id] = (position, letter)
    for marker in markers:
        position = (marker.partition, marker.offset)
        current = newest.get(marker.decision_id)
        if current is not None and current[0] < position:
            newest[marker.decision_id] = (position, None)
    kept = [letter for _, letter in newest.values() if letter is not None]
    return sorted(kept + loose, key=lambda letter: (letter.partition, letter.offset))


def _select(
    letters: list[DeadLetter],
    *,
    reasons: tuple[str, ...],
    older_than: timedelta | None,
    newer_than: timedelta | None,
    now: datetime,
) -> list[DeadLetter]:
    chosen = []
    for letter in letters:
        if reasons and letter.reason not in reasons:
            continue
        at = letter.dead_lettered_at
        if older_than is not None and (at is None or now - at < older_than):
            continue
        if newer_than is not None and (at is None or now - at > newer_than):
            continue
        chosen.append(letter)
    return chosen


def _read_selected(
    settings: Settings,
    reasons: tuple[str, ...],
    older_than: timedelta | None,
    newer_than: timedelta | None,
    timeout_s: float,
) -> list[DeadLetter] | None:
    """The open dead letters that pass the filters; None when the DLQ topic does not exist."""
    with Console(stderr=True).status(f"reading {settings.topic_dlq}"):
        read = asyncio.run(read_dead_letters(settings, timeout_s=timeout_s))
    if read is None:
        return None
    return _select(
        open_dead_letters(*read),
        reasons=reasons, older_than=older_than, newer_than=newer_than, now=datetime.now(UTC),
    )


# --------------------------------------------------------------------------- commands


class _Duration(click.ParamType):
    """``90``, ``90s``, ``15m``, ``2h`` or ``7d``."""

    name = "duration"
    _PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
    _UNITS = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400}

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        if isinstance(value, timedelta):
            return value
        match = self._PATTERN.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not a duration like 90s, 15m, 2h or 7d", param, ctx)
        return timedelta(seconds=float(match[1]) * self._UNITS[match[2]])


_DURATION = _Duration()

_filters = [
    click.option(
        "--reason",
        "reasons",
        multiple=True,
        type=click.Choice(DEAD_LETTER_REASONS),
        help="Only this reason (repeatable).",
    ),
    click.option(
        "--older-than", type=_DURATION, default=None,
        help="Only dead-lettered at least this long ago (e.g. 2h).",
    ),
    click.option(
        "--newer-than", type=_DURATION, default=None,
        help="Only dead-lettered within this long (e.g. 30m).",
    ),
    click.option(
        "--timeout", type=float, default=30.0, show_default=True,
        help="Seconds to allow for reading the topic.",
    ),
]


def _with_filters(function: Any) -> Any:
    for option in reversed(_filters):
        function = option(function)
    return function


@click.group()
def dlq() -> None:
    """Dead-lettered decisions (TOPIC_DLQ): list them, or put them back on the outbox."""


@dlq.command("list")
@_with_filters
@click.option("--json", "as_json", is_flag=True, help="One JSON document per line.")
def list_command(
    reasons: tuple[str, ...],
    older_than: timedelta | None,
    newer_than: timedelta | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Show what is dead-lettered and why (newest record per decision, not yet redriven)."""
    settings = load_settings_or_exit()
    letters = _read_selected(settings, reasons, older_than, newer_than, timeout)
    if letters is None:
        Console(stderr=True).print(
            f"{settings.topic_dlq} does not exist: nothing is dead-lettered"
        )
        return
    if as_json:
        for letter in letters:
            click.echo(orjson.dumps(letter.document).decode())
        return
    console = Console(soft_wrap=False)
    if not letters:
        console.print(f"no dead-lettered decisions in {settings.topic_dlq} match")
        return
    table = Table(title=f"{len(letters)} dead-lettered in {settings.topic_dlq}")
    for column in ("dead-lettered at", "decision", "target", "rule", "reason", "attempts",
                   "last status", "why"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        decision = letter.decision or {}
        doc = letter.document
        at = letter.dead_lettered_at
        table.add_row(
            at.strftime("%Y-%m-%d %H:%M:%S") if at else "?",
            letter.decision_id or f"(not a decision: {letter.partition}@{letter.offset})",
            f"{decision.get('target', '?')} {letter.target_id or ''}".strip(),
            str(decision.get("rule", "")),
            letter.reason,
            str(doc.get("attempts", "")),
            "" if doc.get("last_status") is None else str(doc["last_status"]),
            str(doc.get("message", ""))[:160],
        )
    console.print(table)
    reasons_count: dict[str, int] = {}
    for letter in letters:
        reasons_count[letter.reason] = reasons_count.get(letter.reason, 0) + 1
    console.print(
        "by reason: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons_count.items()))
    )


@dlq.command()
@_with_filters
@click.option("--dry-run", is_flag=True, help="Show how many would be redriven; send nothing.")
def redrive(
    reasons: tuple[str, ...],
    older_than: timedelta | None,
    newer_than: timedelta | None,
    timeout: float,
    dry_run: bool,
) -> None:
    """Put dead-lettered decisions back on the outbox (TOPIC_OUTBOX) for delivery.

    Each is sent keyed by its target id, marked so delivery tries it again although it was
    dead-lettered; one already delivered is still skipped.  Fix the cause first (a key, a
    base URL, an outage), or the same decisions come back here.
    """
    settings = load_settings_or_exit()
    err = Console(stderr=True)
    letters = _read_selected(settings, reasons, older_than, newer_than, timeout)
    if letters is None:
        click.echo(f"{settings.topic_dlq} does not exist: nothing to redrive")
        return
    movable = [letter for letter in letters if letter.decision and letter.target_id]
    unmovable = len(letters) - len(movable)
    if dry_run:
        click.echo(f"would redrive {len(movable)} decisions to {settings.topic_outbox}"
                   + (f"; {unmovable} records are not decisions" if unmovable else ""))
        return
    sent = asyncio.run(_redrive(settings, movable, console=err))
    click.echo(
        f"redrove {sent} decisions to {settings.topic_outbox}"
        + (f"; {unmovable} records are not decisions and stay" if unmovable else "")
    )


async def _redrive(settings: Settings, letters: list[DeadLetter], *, console: Console) -> int:
    from aiokafka import AIOKafkaProducer

    from worker.kafka import client_kwargs

    producer = AIOKafkaProducer(linger_ms=5, **client_kwargs(settings))
    await producer.start()
    sent = 0
    try:
        with Progress(
            TextColumn("redriving"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task("redrive", total=len(letters))
            for letter in letters:
                assert letter.decision is not None and letter.target_id is not None
                key = letter.target_id.encode()
                await producer.send_and_wait(
                    settings.topic_outbox,
                    key=key,
                    value=orjson.dumps(letter.decision),
                    headers=[(REDRIVE_HEADER, b"1")],
                )
                marker = {
                    "decision_id": letter.decision_id,
                    "redriven_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "from": {"partition": letter.partition, "offset": letter.offset},
                }
                await producer.send_and_wait(
                    settings.topic_dlq,
                    key=letter.key or key,
                    value=orjson.dumps(marker),
                    headers=[(REDRIVEN_HEADER, b"1")],
                )
                sent += 1
                progress.advance(task)
    finally:
        await producer.stop()
    return sent
