"""``feedback-worker demo``: the whole system on one machine, checked end to end (DESIGN 8).

It starts the embedded Tansu broker, a local Helicone-compatible receiver (unless
``HELICONE_API_KEY`` is set, in which case the real API is used), one ``feedback-worker
run`` process with short windows, and the HTTP collector in-process (DESIGN 11); publishes
simulated user journeys in real time, every third journey as a browser would (batches POSTed
to the collector's ``/v1/events`` with a ``sent_at``) and the rest straight to Kafka, plus a
few malformed records (to Kafka, where ingest must cope with them); shows a live table read
from the worker's ``/metrics``; and ends with a table comparing the decisions on the outbox
topic with what each simulated user meant.

Exit code 0 when every intended rating was decided as intended, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import orjson
from rich.console import Console
from rich.live import Live

from worker.commands.common import read_to_end
from worker.commands.demo_check import check_table as _check_table
from worker.commands.demo_check import stored_table as _stored_table
from worker.commands.demo_prompts import assign_users, prompt_report
from worker.commands.demo_traffic import DEMO_WRITE_KEY, Progress, collector_share, ordinal, publish
from worker.commands.demo_view import live_view, settle
from worker.commands.demo_view import scrape as _scrape
from worker.commands.demo_view import total as _total
from worker.config import Settings
from worker.devtools.traffic import Journey, Windows, generate

__all__ = ["DEMO_SETTINGS", "demo"]

#: Short windows so decisions appear within seconds; engagement thresholds scaled with them.
DEMO_SETTINGS: dict[str, str] = {
    "ENGAGEMENT_WINDOW_S": "6",
    "CODE_WINDOW_S": "4",
    "CLICKS_WINDOW_S": "8",
    "TICKET_WINDOW_S": "10",
    "WINDOW_GRACE_S": "1",
    "IDLE_CLOSE_S": "2",
    "ENGAGEMENT_LONG_READ_S": "4",
    "ENGAGEMENT_SHORT_READ_S": "0.6",
    "ENGAGEMENT_QUICK_EXIT_S": "1.2",
    "CODE_RETAINED_MIN_PCT": "50",  # an accepted suggestion mostly deleted later rates false
    # Tansu completes a group join after about half the rebalance timeout (DESIGN 2).
    "KAFKA_REBALANCE_TIMEOUT_S": "6",
    "KAFKA_SESSION_TIMEOUT_S": "10",
}
SHAPE = Windows(engagement_ms=6_000, code_ms=4_000, clicks_ms=8_000, ticket_ms=10_000)
#: The longest a journey lasts (event time) under SHAPE, so the last one ends before traffic.
_LONGEST_JOURNEY_MS = 6_000
DEMO_KEY = "sk-helicone-demo-local-receiver"



# --------------------------------------------------------------------------- the command


@click.command()
@click.option(
    "--seconds",
    type=click.IntRange(5, 600),
    default=60,
    show_default=True,
    help="How long to publish simulated traffic.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0.1, 200),
    default=4.0,
    show_default=True,
    help="Simulated LLM answers per second.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Traffic simulator seed.")
def demo(seconds: int, rate: float, seed: int) -> None:
    """Run everything locally for a minute and check the decisions against the simulated users.

    Starts an embedded Kafka-protocol broker (Tansu), a local Helicone-compatible receiver
    (unless HELICONE_API_KEY is set: then feedback goes to HELICONE_BASE_URL, the real API),
    one worker with short windows, and simulated traffic.  Ends by itself.
    """
    from worker.devtools.broker import BrokerNotAvailable, EmbeddedBroker, free_port

    # The broker start-up probe and the demo's clients log connection retries; they are noise
    # here (a real failure still ends the demo with its error).
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="feedback-demo-"))
    real_key = os.environ.get("HELICONE_API_KEY")
    console.rule("[bold]feedback-worker demo")
    console.print(
        "Short windows for the demo: "
        + ", ".join(f"{k}={v}" for k, v in DEMO_SETTINGS.items() if not k.startswith("KAFKA"))
    )
    console.print(f"Logs and state: {workdir}")

    broker = EmbeddedBroker(log_path=workdir / "broker.log")
    try:
        broker.start()
    except BrokerNotAvailable as exc:
        raise click.ClickException(f"could not start the embedded broker: {exc}") from None
    console.print(f"Broker (Tansu):   {broker.bootstrap_servers}")
    try:
        ok = asyncio.run(
            _run(
                console,
                broker.bootstrap_servers,
                port=free_port(),
                workdir=workdir,
                real_key=real_key,
                seconds=seconds,
                rate=rate,
                seed=seed,
            )
        )
    finally:
        broker.stop()
    sys.exit(0 if ok else 1)


async def _run(
    console: Console,
    bootstrap: str,
    *,
    port: int,
    workdir: Path,
    real_key: str | None,
    seconds: int,
    rate: float,
    seed: int,
) -> bool:
    async with _helicone(console, real_key) as (base_url, receiver):
        env, settings = _configs(
            bootstrap, port=port, workdir=workdir, base_url=base_url, real_key=real_key
        )
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        with _worker(env, workdir / "worker.log") as process:
            console.print(f"Worker:           {metrics_url}  (log: {workdir / 'worker.log'})")
            with console.status("waiting for the worker to join its group ..."):
                await _wait_ready(process, port, workdir / "worker.log")
            async with _collector(settings) as collector_url:
                console.print(
                    f"Collector (HTTP): {collector_url}/v1/events  (every {ordinal()} journey "
                    "goes through it, as batches of events like a browser SDK sends; the rest "
                    "and the malformed records go straight to Kafka)"
                )
                requests = max(1, int(rate * max(1, seconds - _LONGEST_JOURNEY_MS // 1000)))
                journeys = generate(
                    requests,
                    start_ms=int(time.time() * 1000) + 500,
                    spread_ms=max(1_000, seconds * 1000 - _LONGEST_JOURNEY_MS),
                    windows=SHAPE,
                    seed=seed,
                    retained_min_pct=int(DEMO_SETTINGS["CODE_RETAINED_MIN_PCT"]),
                )
                assign_users(journeys, seed=seed)  # so the prompts' cooldown has work
                progress = Progress(journeys=len(journeys))
                samples = await _watch(
                    console, settings, journeys, progress, random.Random(seed),
                    metrics_url=metrics_url, collector_url=collector_url, receiver=receiver,
                )
                console.print()  # the live view leaves the cursor at its end
                console.print(collector_share(progress, collector_url))
        console.print()
        found = await _read_outbox(settings)
        candidates = _total(samples, "feedback_prompt_candidates_total")
        prompts = await prompt_report(settings, journeys, candidates=candidates)
        stored_ok, stored_table = True, None
        if receiver is not None:
            await receiver.settle()  # Helicone's next batch, without its ingestion delay
            stored_table, stored_ok = _stored_table(found, receiver)
    table, ok = _check_table(journeys, found)
    console.print(table)
    if stored_table is not None:
        console.print(stored_table)
        ok = ok and stored_ok
    console.print(prompts)
    console.print(
        "[bold green]every intended rating was decided as intended"
        if ok
        else "[bold red]some decisions differ from what the simulated users meant"
        f" (worker log: {workdir / 'worker.log'})"
    )
    return ok


async def _watch(
    console: Console,
    settings: Settings,
    journeys: list[Journey],
    progress: Progress,
    rng: random.Random,
    *,
    metrics_url: str,
    collector_url: str,
    receiver: Any,
) -> dict[str, Any]:
    """Publish the traffic under a live view of the worker's metrics, then wait until the
    worker settled; the last metrics read."""
    async with httpx.AsyncClient(timeout=3) as http:
        with Live(
            live_view(progress, {}, metrics_url, receiver),
            console=console,
            refresh_per_second=2,
            transient=False,
        ) as live:
            publisher = asyncio.create_task(
                publish(settings, journeys, progress, rng, collector_url=collector_url)
            )
            samples: dict[str, Any] = {}
            while not publisher.done():
                samples = await _scrape(http, metrics_url) or samples
                live.update(live_view(progress, samples, metrics_url, receiver))
                await asyncio.sleep(1)
            await publisher  # re-raise a publishing failure
            progress.phase = "closing the last windows"
            samples = await settle(http, metrics_url, progress, live, receiver, timeout_s=40)
            progress.phase = "done"
            live.update(live_view(progress, samples, metrics_url, receiver))
    return samples


# --------------------------------------------------------------------------- parts


def _configs(
    bootstrap: str, *, port: int, workdir: Path, base_url: str, real_key: str | None
) -> tuple[dict[str, str], Settings]:
    """The worker's environment and the collector's settings: the demo's short windows
    (:data:`DEMO_SETTINGS`), prompts on, and this machine's broker and receiver."""
    env = {
        **os.environ,
        **DEMO_SETTINGS,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "WORKER_GROUP_ID": f"feedback-demo-{uuid.uuid4().hex[:8]}",
        "WORKER_WEB_HOST": "127.0.0.1",
        "WORKER_WEB_PORT": str(port),
        "STATE_DIR": str(workdir / "state"),
        "HELICONE_BASE_URL": base_url,
        "HELICONE_API_KEY": real_key or DEMO_KEY,
        "LOG_FORMAT": "text",
        "PROMPTS_ENABLED": "true",  # the demo reports prompts per 100 answers
    }
    settings = Settings(
        prompts_enabled=True,
        kafka_bootstrap_servers=bootstrap,
        collector_write_keys=DEMO_WRITE_KEY,
        collector_host="127.0.0.1",
        collector_port=0,
        # Tansu has no InitProducerId, so no idempotent producer on it (DESIGN 2).
        collector_idempotent_producer=False,
        **{k.lower(): v for k, v in DEMO_SETTINGS.items()},  # type: ignore[arg-type]
    )
    return env, settings


@contextlib.asynccontextmanager
async def _collector(settings: Settings) -> AsyncIterator[str]:
    """The HTTP collector in this process, on a free local port, writing to the demo's
    topics; yields its base URL once its producer is connected."""
    from worker.collector import start_in_process

    running = await start_in_process(settings)
    try:
        if not await running.wait_ready(timeout_s=30):
            raise click.ClickException("the collector could not connect to the broker")
        yield running.url
    finally:
        await running.stop()


@contextlib.asynccontextmanager
async def _helicone(console: Console, real_key: str | None) -> AsyncIterator[tuple[str, Any]]:
    if real_key:
        base = os.environ.get("HELICONE_BASE_URL", "https://api.helicone.ai")
        console.print(
            f"Helicone:         {base} (HELICONE_API_KEY is set: the real API; simulated "
            "request ids are unknown there, so expect dead letters)"
        )
        yield base, None
        return
    from worker.devtools.receiver import Receiver

    async with Receiver(host="127.0.0.1", port=0) as receiver:
        console.print(f"Helicone:         {receiver.url} (local receiver; set HELICONE_API_KEY "
                      "to use the real API)")
        yield receiver.url, receiver


@contextlib.contextmanager
def _worker(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def _wait_ready(
    process: subprocess.Popen[bytes], port: int, log_path: Path, timeout_s: float = 90
) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise click.ClickException(f"the worker exited ({process.returncode}):\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.25)
    raise click.ClickException(f"the worker was not ready within {timeout_s:.0f} s")


def _document(record: Any) -> dict[str, Any] | None:
    try:
        document = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


async def _read_outbox(settings: Settings, timeout_s: float = 30) -> list[dict[str, Any]]:
    """Every decision on the outbox topic, up to each partition's fetch high watermark (what
    was read by then if that takes over ``timeout_s``; nothing if the topic is missing)."""
    read = await read_to_end(
        settings, settings.topic_outbox, _document,
        timeout_s=timeout_s, poll_ms=300, partial_on_timeout=True,
    )
    return [] if read is None else read.items


