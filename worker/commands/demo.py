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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worker.commands.demo_check import check_table as _check_table
from worker.commands.demo_check import stored_table as _stored_table
from worker.commands.demo_prompts import assign_users, prompt_report
from worker.config import Settings
from worker.devtools.traffic import Journey, Windows, generate, hostile_record

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
#: The collector's write key in the demo (write keys are publishable: they only allow writing).
DEMO_WRITE_KEY = "wk-demo-local"
#: Every this many journeys (in generation order) goes through the collector over HTTP.
COLLECTOR_EVERY = 3
#: Least time between two POSTs to the collector: events due meanwhile go in one batch, as
#: an SDK buffers them, and the demo stays under the default COLLECTOR_RATE_PER_S.
COLLECTOR_FLUSH_S = 0.1
#: One malformed record (not JSON, wrong shape, bad ids...) per this many events.
HOSTILE_EVERY = 20


@dataclass
class Progress:
    published: int = 0
    hostile: int = 0
    journeys: int = 0
    #: Events the collector accepted (202), the batches they went in, and invalid ones.
    via_collector: int = 0
    collector_batches: int = 0
    collector_invalid: int = 0
    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)


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
                    f"Collector (HTTP): {collector_url}/v1/events  (every {_ordinal()} journey "
                    "goes through it, as batches of events like a browser SDK sends; the rest "
                    "and the malformed records go straight to Kafka)"
                )
                progress = Progress()
                requests = max(1, int(rate * max(1, seconds - _LONGEST_JOURNEY_MS // 1000)))
                journeys = generate(
                    requests,
                    start_ms=int(time.time() * 1000) + 500,
                    spread_ms=max(1_000, seconds * 1000 - _LONGEST_JOURNEY_MS),
                    windows=SHAPE, seed=seed,
                    retained_min_pct=int(DEMO_SETTINGS["CODE_RETAINED_MIN_PCT"]),
                )
                assign_users(journeys, seed=seed)  # so the prompts' cooldown has work
                progress.journeys = len(journeys)
                async with httpx.AsyncClient(timeout=3) as http:
                    with Live(
                        _live_view(progress, {}, metrics_url, receiver),
                        console=console,
                        refresh_per_second=2,
                        transient=False,
                    ) as live:
                        publisher = asyncio.create_task(
                            _publish(settings, journeys, progress, random.Random(seed),
                                     collector_url=collector_url)
                        )
                        samples: dict[str, Any] = {}
                        while not publisher.done():
                            samples = await _scrape(http, metrics_url) or samples
                            live.update(_live_view(progress, samples, metrics_url, receiver))
                            await asyncio.sleep(1)
                        await publisher  # re-raise a publishing failure
                        progress.phase = "closing the last windows"
                        samples = await _settle(
                            http, metrics_url, progress, live, receiver, timeout_s=40
                        )
                        progress.phase = "done"
                        live.update(_live_view(progress, samples, metrics_url, receiver))
                console.print()  # the live view leaves the cursor at its end
                console.print(_collector_share(progress, collector_url))
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


def _ordinal() -> str:
    return {2: "second", 3: "third", 4: "fourth"}.get(COLLECTOR_EVERY, f"{COLLECTOR_EVERY}th")


def _collector_share(progress: Progress, url: str) -> str:
    share = progress.via_collector / progress.published if progress.published else 0.0
    return (
        f"Through the collector ({url}/v1/events): {progress.via_collector} of "
        f"{progress.published} events ({share:.0%}) in {progress.collector_batches} batches, "
        f"each answered 202 ({progress.collector_invalid} invalid); the other "
        f"{progress.published - progress.via_collector} events and {progress.hostile} "
        "malformed records went straight to Kafka."
    )


@contextlib.asynccontextmanager
async def _collector(settings: Settings) -> AsyncIterator[str]:
    """The HTTP collector in this process (``start_collector``), on a free local port, writing
    to the demo's topics; yields its base URL once its producer is connected."""
    from worker.collector.server import start_collector

    running = await start_collector(settings)
    try:
        if not await running.wait_ready(timeout_s=30):
            raise click.ClickException("the collector could not connect to the broker")
        yield running.url
    finally:
        await running.stop()


class _CollectorSender:
    """Posts events to the collector as a browser SDK does: the events due since the last
    request go in one batch with a ``sent_at``, one request at a time (so a request's events
    keep their order), at most one every :data:`COLLECTOR_FLUSH_S`.  A ``429`` or ``503`` is
    retried after its ``Retry-After``, the whole batch again (``event_id`` dedupe makes that
    safe); any other refusal is a bug in the demo and ends it."""

    def __init__(self, http: httpx.AsyncClient, url: str, progress: Progress,
                 max_events: int) -> None:
        self._http = http
        self._url = f"{url}/v1/events"
        self._progress = progress
        self._max_events = max_events
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="demo-collector-sender")

    def put(self, event: dict[str, Any]) -> None:
        self._pending.append(event)
        self._wake.set()

    def cancel(self) -> None:
        """Stop at once (the demo is failing anyway)."""
        self._task.cancel()

    async def close(self) -> None:
        """Send what is pending and wait for every answer (re-raises a failure)."""
        self._closing = True
        self._wake.set()
        await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._max_events]
                del self._pending[: len(batch)]
                await self._post(batch)
            if self._closing:
                return
            await asyncio.sleep(COLLECTOR_FLUSH_S)

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        from worker.devtools.traffic import iso

        # sent_at is never before an event's occurred_at, which the worker would refuse
        now_ms = max(int(time.time() * 1000), *(_epoch_ms(e["occurred_at"]) for e in batch))
        body = orjson.dumps({"sent_at": iso(now_ms), "events": batch})
        headers = {"Authorization": f"Bearer {DEMO_WRITE_KEY}", "Content-Type": "application/json"}
        for _ in range(10):
            try:
                response = await self._http.post(self._url, content=body, headers=headers)
            except httpx.HTTPError:
                await asyncio.sleep(1)
                continue
            if response.status_code == 202:
                answer = response.json()
                self._progress.via_collector += int(answer["accepted"])
                self._progress.collector_invalid += int(answer["invalid"])
                self._progress.collector_batches += 1
                return
            if response.status_code in (429, 503):
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            raise click.ClickException(
                f"the collector refused a batch: {response.status_code} {response.text}"
            )
        raise click.ClickException("the collector did not accept a batch after 10 attempts")


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


async def _publish(
    settings: Settings,
    journeys: list[Journey],
    progress: Progress,
    rng: random.Random,
    *,
    collector_url: str | None = None,
) -> None:
    """Send every event when its event time comes (a live stream), a hostile record now and
    then.  Every :data:`COLLECTOR_EVERY`-th journey's events go to the collector over HTTP
    (whole journeys, so each request's events take one path, in order); the others and the
    hostile records go to Kafka, keyed by request id like `feedback-worker publish`."""
    from aiokafka import AIOKafkaProducer

    from worker.kafka import client_kwargs

    via_http = (
        {j.request_id for i, j in enumerate(journeys) if i % COLLECTOR_EVERY == 0}
        if collector_url
        else set()
    )
    events = sorted(
        ((e, j.request_id) for j in journeys for e in j.events), key=lambda p: p[0]["occurred_at"]
    )
    epoch_ms = {id(e): _epoch_ms(e["occurred_at"]) for e, _ in events}
    producer = AIOKafkaProducer(linger_ms=5, **client_kwargs(settings))
    await producer.start()
    progress.phase = "publishing traffic"
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            sender = (
                _CollectorSender(http, collector_url, progress, settings.collector_max_events)
                if collector_url
                else None
            )
            try:
                for event, request_id in events:
                    delay = epoch_ms[id(event)] / 1000 - time.time()
                    if delay > 0:
                        await producer.flush()
                        await asyncio.sleep(delay)
                    if sender is not None and request_id in via_http:
                        sender.put(event)
                    else:
                        await producer.send(
                            settings.topic_ui_events,
                            key=request_id.lower().encode(),
                            value=orjson.dumps(event),
                        )
                    progress.published += 1
                    if progress.published % HOSTILE_EVERY == 1:  # the first, then 1 in 20
                        await producer.send(settings.topic_ui_events, value=hostile_record(rng))
                        progress.hostile += 1
                await producer.flush()
            except BaseException:
                if sender is not None:
                    sender.cancel()
                raise
            if sender is not None:
                await sender.close()
    finally:
        await producer.stop()


def _epoch_ms(occurred_at: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(occurred_at).timestamp() * 1000)


async def _scrape(http: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
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


def _total(samples: dict[str, Any], name: str, **labels: str) -> int:
    return int(
        sum(
            value
            for got, value in samples.get(name, [])
            if all(got.get(k) == v for k, v in labels.items())
        )
    )


async def _settle(
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
        samples = await _scrape(http, url) or samples
        live.update(_live_view(progress, samples, url, receiver))
        state = (
            _total(samples, "feedback_decisions_total"),
            _total(samples, "feedback_delivery_delivered_total"),
            _total(samples, "feedback_delivery_dlq_total"),
        )
        if state != last:
            last, since = state, time.monotonic()
        idle = (
            _total(samples, "feedback_windows_open") == 0
            and _total(samples, "feedback_delivery_backlog") == 0
        )
        if samples and idle and time.monotonic() - since >= 3:
            break
        await asyncio.sleep(0.5)
    return samples


async def _read_outbox(settings: Settings, timeout_s: float = 30) -> list[dict[str, Any]]:
    """Every decision on the outbox topic, up to each partition's fetch high watermark."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from worker.kafka import client_kwargs

    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, auto_offset_reset="earliest", **client_kwargs(settings)
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        if settings.topic_outbox not in await consumer.topics():
            return found
        tps = [
            TopicPartition(settings.topic_outbox, p)
            for p in sorted(consumer.partitions_for_topic(settings.topic_outbox) or ())
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300, max_records=5_000)
            for records in batch.values():
                for record in records:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        document = orjson.loads(record.value)
                        if isinstance(document, dict):
                            found.append(document)
            ends = [consumer.highwater(tp) for tp in tps]
            positions = [await consumer.position(tp) for tp in tps]
            if all(h is not None and p >= h for h, p in zip(ends, positions, strict=True)):
                break
    finally:
        await consumer.stop()
    return found


# --------------------------------------------------------------------------- tables


def _live_view(
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
                    str(_total(samples, "feedback_events_total")))
    summary.add_row("invalid (feedback_events_invalid_total)",
                    str(_total(samples, "feedback_events_invalid_total")))
    summary.add_row("open windows", str(_total(samples, "feedback_windows_open")))
    summary.add_row("decisions", str(_total(samples, "feedback_decisions_total")))
    summary.add_row("delivered", str(_total(samples, "feedback_delivery_delivered_total")))
    summary.add_row("retried calls",
                    str(_total(samples, "feedback_delivery_attempts_total", outcome="retryable")))
    summary.add_row("dead-lettered", str(_total(samples, "feedback_delivery_dlq_total")))
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
            *(str(_total(samples, "feedback_decisions_total", rule=rule, rating=r))
              for r in ("true", "false", "none")),
        )
    return Group(summary, decisions, Text(f"metrics: {metrics_url}", style="dim"))
