"""``feedback-worker dataset``: decided requests from the outbox into a Helicone dataset.

Steps, in order::

    read       every decision on TOPIC_OUTBOX, up to each partition's end (fetch high
               watermarks, as ``dlq`` reads: DESIGN 2)
    select     fold per request and filter (:mod:`worker.datasets`, pure)
    --jsonl    write the selection locally, one JSON object per line
    --dry-run  print what would be added; no call to Helicone at all
    resolve    the dataset id: the state file's, else the one dataset of the name, else new
    add        read what the dataset holds, add the rest in batches, paced
               (:class:`worker.helicone_datasets.DatasetUploader`)

Resuming: the dataset itself is the record of progress.  Each run reads what it holds and sends
only the rest, so a run stopped anywhere (Ctrl-C, a crash, a lost answer) is finished by the
same command, with no request added twice.  The state file
``STATE_DIR/datasets/<name>-<hash>.json`` only remembers the dataset's id for the name and
base URL, because Helicone has no lookup by name and lets two datasets share one; without it
the dataset is found by listing the organisation's datasets.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import logging.config
import os
import re
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import click
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.clock import SystemClock
from worker.commands.common import load_settings_or_exit, read_decisions
from worker.datasets import (
    DEFAULT_BATCH_SIZE,
    MAX_BATCH_SIZE,
    Criteria,
    Selection,
    check_dataset_name,
    fold_decisions,
    parse_duration_s,
    parse_min_score,
    plan_batches,
    select,
    selection_line,
)
from worker.errors import AuthRejected, ConfigError, DeliveryError
from worker.events import RuleName

if TYPE_CHECKING:
    from worker.config import Settings
    from worker.helicone_datasets import UploadReport

__all__ = ["DatasetState", "dataset", "state_path"]

log = logging.getLogger(__name__)

#: Rows of the --dry-run table; the rest are counted, and --jsonl has them all.
_SHOWN = 20


# --------------------------------------------------------------------------- reading the outbox


# --------------------------------------------------------------------------- the state file


class DatasetState(BaseModel):
    """``STATE_DIR/datasets/<name>-<hash>.json``: which dataset a name means at a base URL."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    base_url: str
    dataset_id: str


def state_path(state_dir: str, name: str, base_url: str) -> Path:
    """One file per (name, base URL); the readable part of the file name is only a hint."""
    digest = hashlib.sha256(f"{base_url}\n{name}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:40].strip("-.") or "dataset"
    return Path(state_dir) / "datasets" / f"{slug}-{digest}.json"


def _load_state(path: Path, name: str, base_url: str) -> str | None:
    try:
        state = DatasetState.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        log.warning("ignoring unreadable %s (%s); looking the dataset up by name", path, exc)
        return None
    return state.dataset_id if (state.name, state.base_url) == (name, base_url) else None


def _save_state(path: Path, state: DatasetState) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_bytes(state.model_dump_json(indent=2).encode())
    os.replace(partial, path)


# --------------------------------------------------------------------------- the command


def _min_score(ctx: Any, param: Any, values: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    try:
        return tuple(parse_min_score(v) for v in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _since(ctx: Any, param: Any, value: str | None) -> float | None:
    try:
        return None if value is None else parse_duration_s(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _dataset_id(ctx: Any, param: Any, value: str | None) -> str | None:
    try:  # Helicone answers a malformed id with a 500, which would look worth retrying
        return None if value is None else str(uuid.UUID(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a dataset id (a UUID)") from None


def _name(ctx: Any, param: Any, value: str) -> str:
    try:
        return check_dataset_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--name", required=True, callback=_name, help="The Helicone dataset to fill.")
@click.option("--rating", type=click.Choice(["true", "false"]), default=None,
              help="Only requests whose rating (explicit wins) is this.")
@click.option("--rule", type=click.Choice(get_args(RuleName)), default=None,
              help="Only requests where this rule decided the rating or a score.")
@click.option("--min-score", "min_scores", multiple=True, callback=_min_score,
              metavar="NAME=INT", help="Only requests whose score NAME is >= INT (repeatable).")
@click.option("--since", callback=_since, default=None, metavar="DURATION",
              help="Only requests whose latest window ended within this span (90s, 2h, 7d).")
@click.option("--dry-run", is_flag=True, help="Print what would be added; call nothing.")
@click.option("--jsonl", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the selection to this file, one JSON object per line.")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE),
              default=DEFAULT_BATCH_SIZE, show_default=True, help="Requests per mutate call.")
@click.option("--dataset-id", default=None, callback=_dataset_id,
              help="Add to this dataset (when several datasets share the name).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to allow for reading the outbox.")
def dataset(
    name: str,
    rating: str | None,
    rule: str | None,
    min_scores: tuple[tuple[str, int], ...],
    since: float | None,
    dry_run: bool,
    jsonl: Path | None,
    batch_size: int,
    dataset_id: str | None,
    timeout: float,
) -> None:
    """Add decided requests from the outbox to the Helicone dataset NAME.

    Creates the dataset when missing, adds in batches within DELIVERY_RATE_PER_S (the calls
    count against the same Helicone rate limit as feedback), and can be run again at any
    time: it reads what the dataset holds and adds only the rest.
    """
    settings = load_settings_or_exit()
    criteria = Criteria(
        rating=None if rating is None else rating == "true",
        rule=rule, min_scores=min_scores, since_s=since,
    )
    err = Console(stderr=True)
    with err.status(f"reading {settings.topic_outbox}"):
        decisions, unreadable = asyncio.run(read_decisions(settings, timeout_s=timeout)) or ([], 0)
    folded = fold_decisions(decisions)
    selection = select(folded.outcomes.values(), criteria, now_ms=SystemClock().now_ms())
    _print_summary(settings, len(decisions), unreadable, folded.skipped, selection)
    if jsonl is not None:
        _write_jsonl(jsonl, selection)
        click.echo(f"wrote {len(selection.chosen)} lines to {jsonl}")
    if dry_run or settings.feedback_dry_run:
        _print_dry_run(name, selection, batch_size, forced=not dry_run)
        return
    if not selection.chosen:
        click.echo("nothing to add")
        return
    report = _upload(settings, name, selection, batch_size=batch_size, dataset_id=dataset_id)
    click.echo(
        f"dataset {name!r} ({report.dataset_id}{', created' if report.created else ''}): "
        f"added {report.added}, already there {report.already_present}"
        + (f", stored although Helicone answered an error {report.stored_despite_error}"
           if report.stored_despite_error else "")
        + f"; {report.calls} calls"
    )


def _upload(
    settings: Settings, name: str, selection: Selection, *, batch_size: int, dataset_id: str | None
) -> UploadReport:
    """Resolve the dataset and add the selection, with a progress bar; exit on failure."""
    try:
        return asyncio.run(_run_upload(settings, name, selection, batch_size, dataset_id))
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command again to add the rest "
                   "(nothing is added twice)", err=True)
        sys.exit(130)
    except AuthRejected as exc:
        click.echo(f"feedback-worker: {exc}", err=True)
        sys.exit(1)
    except DeliveryError as exc:
        click.echo(f"feedback-worker: {exc} {exc.body_excerpt[:200]}".rstrip(), err=True)
        click.echo("run the same command again to resume", err=True)
        sys.exit(1)


async def _run_upload(
    settings: Settings, name: str, selection: Selection, batch_size: int, dataset_id: str | None
) -> UploadReport:
    from worker.delivery import AdaptiveRate, RetryPolicy
    from worker.helicone import HeliconeClient
    from worker.helicone_datasets import AmbiguousName, DatasetApi, DatasetUploader

    try:
        settings.require_api_key()
    except ConfigError as exc:
        raise click.ClickException("; ".join(exc.problems)) from None
    clock = SystemClock()
    rate = AdaptiveRate(ceiling_per_s=settings.delivery_rate_per_s, clock=clock)
    base = settings.delivery_backoff_base_s
    policy = RetryPolicy(
        base_s=base, cap_s=max(base, min(settings.delivery_backoff_cap_s, 60.0)),
        max_attempts=settings.delivery_max_attempts,
        max_age_s=min(settings.delivery_max_age_s, 900.0),
    )
    path = state_path(settings.state_dir, name, settings.helicone_base)
    async with HeliconeClient.from_settings(settings) as client:
        api = DatasetApi(client, on_answer=lambda r, s: rate.answered(remaining=r, reset_s=s))
        uploader = DatasetUploader(api, rate=rate, policy=policy, clock=clock)
        known = dataset_id or _load_state(path, name, settings.helicone_base)
        try:
            resolved = await uploader.resolve(name, known_id=known)
        except AmbiguousName as exc:
            raise click.ClickException(str(exc)) from None
        if dataset_id is not None and resolved != dataset_id:
            raise click.ClickException(f"Helicone has no dataset {dataset_id}")
        _save_state(path, DatasetState(
            name=name, base_url=settings.helicone_base, dataset_id=resolved))
        with _progress() as progress:
            task = progress.add_task(f"adding to {name}", total=len(selection.chosen))
            return await uploader.add(
                resolved, selection.request_ids, batch_size=batch_size,
                on_added=lambda n: progress.advance(task, n),
            )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), transient=False,
    )


# --------------------------------------------------------------------------- output


def _print_summary(
    settings: Settings,
    read: int,
    unreadable: int,
    skipped: Any,
    selection: Selection,
) -> None:
    parts = [f"read {read} decisions from {settings.topic_outbox}"]
    if unreadable:
        parts.append(f"{unreadable} records were not decisions")
    if skipped:
        parts.append("skipped " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    click.echo("; ".join(parts))
    excluded = ", ".join(f"{k} {v}" for k, v in sorted(selection.excluded.items()))
    total = len(selection.chosen) + sum(selection.excluded.values())
    click.echo(
        f"{total} requests decided; selected {len(selection.chosen)}"
        + (f" (left out by {excluded})" if excluded else "")
    )


def _print_dry_run(name: str, selection: Selection, batch_size: int, *, forced: bool) -> None:
    batches = plan_batches(selection.request_ids, (), batch_size=batch_size)
    console = Console(soft_wrap=False)
    if selection.chosen:
        table = Table(title=f"first {min(_SHOWN, len(selection.chosen))} of "
                            f"{len(selection.chosen)} selected")
        for column in ("request", "rating", "by rule", "scores", "latest window end"):
            table.add_column(column)
        for outcome in selection.chosen[:_SHOWN]:
            line = selection_line(outcome)
            table.add_row(
                outcome.request_id,
                "" if outcome.rating is None else str(outcome.rating).lower(),
                outcome.rating_rule or "",
                " ".join(f"{k}={v}" for k, v in outcome.scores.items()),
                line["last_window_end"],
            )
        console.print(table)
    why = " (FEEDBACK_DRY_RUN=true)" if forced else ""
    console.print(
        f"dry run{why}: would add up to {len(selection.chosen)} requests to dataset {name!r} "
        f"in {len(batches)} mutate call{'' if len(batches) == 1 else 's'} of at most "
        f"{batch_size}; requests the dataset already "
        "holds are skipped on a real run. Nothing was sent."
    )


def _write_jsonl(path: Path, selection: Selection) -> None:
    with path.open("wb") as out:
        for outcome in selection.chosen:
            out.write(orjson.dumps(selection_line(outcome)) + b"\n")


