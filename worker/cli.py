"""The ``feedback-worker`` command line (DESIGN 8, contract).

Settings are read here, once, and handed down; a bad setting ends the command with exit code 2
and one line per problem on stderr.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import click
import orjson
from pydantic import ValidationError

from worker.commands.calibrate import calibrate_command
from worker.commands.dataset import dataset
from worker.commands.demo import demo
from worker.commands.dlq import dlq
from worker.config import Settings, load_settings
from worker.errors import ConfigError, IncompatibleLibraryError, TopicMismatchError
from worker.logs import logging_config

__all__ = ["main"]

log = logging.getLogger("worker.cli")


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings({k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        click.echo("feedback-worker: invalid configuration", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


def _require(check: Callable[[], object]) -> None:
    """Run a settings check; on a ConfigError print each problem and exit 2."""
    try:
        check()
    except ConfigError as exc:
        click.echo("feedback-worker: invalid configuration", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


def _setup_logging(settings: Settings) -> None:
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="feedback-worker")
def main() -> None:
    """Turn what users do after an LLM answer into feedback in Helicone.

    Configuration comes from environment variables (or a .env file): every one is in
    docs/reference/configuration.md.
    """


@main.command()
def run() -> None:
    """Run the worker: ingest ui-events, decide, write decisions to the outbox.

    Creates the topics it needs at start (TOPIC_PARTITIONS partitions each) and serves
    /metrics, /healthz and /readyz on WORKER_WEB_PORT.  Stop it with SIGTERM or Ctrl-C.
    """
    import faust

    from worker.app import build_app
    from worker.kafka import ensure_topics

    settings = _settings()
    if not settings.feedback_dry_run:
        _require(settings.require_api_key)
    _setup_logging(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_with_retries(lambda: ensure_topics(settings)))
    except TopicMismatchError as exc:
        click.echo(f"feedback-worker: {exc}", err=True)
        sys.exit(2)
    try:
        feedback = build_app(settings)
    except IncompatibleLibraryError as exc:  # a correctness patch cannot install
        click.echo(f"feedback-worker: {exc}", err=True)
        sys.exit(2)
    log.info(
        "starting worker group=%s bootstrap=%s partitions=%d",
        settings.worker_group_id,
        settings.kafka_bootstrap_servers,
        settings.topic_partitions,
    )
    worker = faust.Worker(
        feedback.faust_app,
        loop=loop,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level, settings.log_format),
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()


@main.command()
def collect() -> None:
    """Run the HTTP collector: browsers and backends POST events to /v1/events.

    Validates each batch with the worker's own event checks and answers 202 only after the
    broker acknowledged every record (valid ones to TOPIC_UI_EVENTS, invalid ones with their
    reason to TOPIC_INVALID).  Needs COLLECTOR_WRITE_KEYS; listens on
    COLLECTOR_HOST:COLLECTOR_PORT (default 0.0.0.0:8088), which also serves /metrics,
    /healthz and /readyz.  Creates its two topics at start like `run` does.  Stop it with
    SIGTERM or Ctrl-C.
    """
    from worker.collector.server import serve

    settings = _settings()
    _require(settings.require_write_keys)
    _setup_logging(settings)
    try:
        # Serves at once; topics are ensured as the producer connects (retried while the
        # broker is away, which meanwhile is a 503, not a restart loop).
        asyncio.run(serve(settings))
    except TopicMismatchError as exc:
        click.echo(f"feedback-worker: {exc}", err=True)
        sys.exit(2)


async def _with_retries(
    step: Callable[[], Any], *, attempts: int = 30, delay_s: float = 2.0
) -> Any:
    """Run ``step`` until it succeeds: at start the broker may still be coming up."""
    for attempt in range(1, attempts + 1):
        try:
            return await step()
        except TopicMismatchError:
            raise
        except Exception as exc:
            if attempt == attempts:
                raise
            log.warning("broker not ready (%s); retrying in %.0f s", type(exc).__name__, delay_s)
            await asyncio.sleep(delay_s)
    return None


@main.command()
@click.argument("file", type=click.File("rb"))
@click.option("--topic", default=None, help="Topic to send to (default: TOPIC_UI_EVENTS).")
@click.option(
    "--validate/--no-validate",
    default=True,
    show_default=True,
    help="Check each line against the event schema and skip (and report) invalid ones. "
    "--no-validate sends every line as it is, which is how to test the worker's own checks.",
)
def publish(file: IO[bytes], topic: str | None, validate: bool) -> None:
    """Send events from FILE (JSON Lines, '-' for stdin), keyed by request id.

    Each line is one JSON event.  The key is its request_id (session_id for
    session_feedback_given), so all events of a request land on one partition.
    """
    settings = _settings()
    _setup_logging(settings)
    sent, skipped = asyncio.run(
        _publish(settings, _lines(file), topic or settings.topic_ui_events, validate=validate)
    )
    click.echo(f"sent {sent} events to {topic or settings.topic_ui_events}"
               + (f", skipped {skipped} invalid lines" if skipped else ""))
    if skipped:
        sys.exit(1)


def _lines(file: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(file, start=1):
        stripped = line.strip()
        if stripped:
            yield number, stripped


async def _publish(
    settings: Settings, lines: Iterator[tuple[int, bytes]], topic: str, *, validate: bool
) -> tuple[int, int]:
    from aiokafka import AIOKafkaProducer

    from worker.events import UI_EVENT_ADAPTER
    from worker.kafka import client_kwargs

    producer = AIOKafkaProducer(linger_ms=5, **client_kwargs(settings))
    await producer.start()
    sent = skipped = 0
    try:
        pending = []
        for number, line in lines:
            if validate:
                try:
                    UI_EVENT_ADAPTER.validate_json(line, strict=True)
                except ValidationError as exc:
                    first = exc.errors(include_url=False)[0]
                    where = ".".join(str(p) for p in first["loc"])
                    click.echo(f"line {number}: {where}: {first['msg']}", err=True)
                    skipped += 1
                    continue
            pending.append(await producer.send(topic, key=_key_of(line), value=line))
            sent += 1
        await producer.flush()
        for future in pending:
            await future
    finally:
        await producer.stop()
    return sent, skipped


def _key_of(line: bytes) -> bytes | None:
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    key = document.get("request_id") or document.get("session_id")
    return key.lower().encode() if isinstance(key, str) else None


@main.command()
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("schemas"),
    show_default=True,
    help="Directory to write into.",
)
@click.option("--check", is_flag=True, help="Write nothing; fail if the files differ.")
def schemas(out: Path, check: bool) -> None:
    """Write the JSON Schemas of every event type and of the decision, plus examples."""
    from worker import schemas as schema_files

    if check:
        stale = schema_files.check(out)
        for relative in stale:
            click.echo(f"out of date: {out / relative}", err=True)
        if stale:
            click.echo("run `feedback-worker schemas` to regenerate", err=True)
            sys.exit(1)
        click.echo(f"{out} is up to date")
        return
    written = schema_files.write(out)
    click.echo(f"wrote {len(written)} files to {out}")


main.add_command(dlq)
main.add_command(calibrate_command)
main.add_command(demo)
main.add_command(dataset)


if __name__ == "__main__":  # pragma: no cover
    main()
