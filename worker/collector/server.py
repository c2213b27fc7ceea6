"""Running the collector: wiring from settings, an in-process starter, and ``serve``.

:func:`start_collector` is what both the command line and tests use: it builds the
:class:`~worker.collector.app.Collector` from the settings, starts the HTTP listener at
once and the producer in the background, and returns a :class:`RunningCollector` with the
bound address and a ``stop``.  ``COLLECTOR_PORT=0`` picks a free port (tests, the
end-to-end browser test).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from worker.collector.app import Collector, build_app
from worker.collector.batch import BatchLimits
from worker.collector.policy import Origins, RateLimiter, WriteKeys
from worker.collector.producer import KafkaBatchWriter
from worker.collector.prompt_box import PromptBox
from worker.collector.prompt_feed import PromptFeed
from worker.config import Settings
from worker.errors import TopicMismatchError
from worker.metrics import CollectorMetrics
from worker.validation import ValidationLimits

__all__ = ["LINGER_S", "RunningCollector", "build_collector", "serve", "start_collector"]

log = logging.getLogger(__name__)

#: After answering a request whose body was left unread (413, 408), aiohttp keeps reading
#: and dropping what the client still sends for up to this long before it closes, so the
#: client is not reset before it reads the answer.  aiohttp's 10 s default would let a
#: client trickling its body hold the connection that much longer after its 408.
LINGER_S = 2.0


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Access log without the query string: ``?key=`` carries the write key (sendBeacon
    cannot set headers), and aiohttp's default format would log it with every request.

    It logs at DEBUG, and says it is ``enabled`` only when DEBUG is on for its logger:
    aiohttp then skips the per-request timing and the call altogether (it asks once per
    connection), which at INFO it would pay for every request to log nothing."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s %d %.1f ms", request.method, request.path, response.status, time * 1000
        )


class ServerErrorLog(logging.LoggerAdapter[logging.Logger]):
    """``aiohttp.server``, as the collector's connections log to it.

    aiohttp refuses a request it cannot parse (a request line or a header over 8,190 bytes,
    too many headers, a bad method) with 400 itself, before any handler runs, and logs
    ``Error handling request from <client address>`` at ERROR with the parser's exception,
    whose message quotes the offending bytes: a header or query holding the write key
    among them.  Here each such record becomes one WARNING naming only the exception class,
    and is counted as ``feedback_collector_refused_total{error="malformed_request"}``.  A
    bad method on a connection's first request stays at DEBUG, as aiohttp has it (TLS or a
    scanner on the HTTP port), and is counted too.  Any other error (a handler that raised,
    answered 500) keeps its traceback, without the address.  Other records pass unchanged.

    It is an adapter handed to this collector's aiohttp server (``logger=``), not a filter
    on the global ``aiohttp.server`` logger, so it counts only this collector's requests
    (the demo runs Faust's aiohttp server in the same process) and sees the records aiohttp
    logs at DEBUG even when that level is off.
    """

    def __init__(self, logger: logging.Logger, *, metrics: CollectorMetrics) -> None:
        super().__init__(logger, {})
        self._metrics = metrics

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith("Error handling request"):
            exc = _exception_of(kwargs.get("exc_info"))
            if isinstance(exc, HttpProcessingError):
                self._metrics.observe_request(400, error="malformed_request", duration_s=None)
                self.logger.log(
                    logging.DEBUG if level < logging.WARNING else logging.WARNING,
                    "refused a malformed HTTP request with 400 (%s)",
                    type(exc).__name__,
                )
                return
            msg, args = "Error handling a request", ()
        super().log(level, msg, *args, **kwargs)


def _exception_of(exc_info: object) -> BaseException | None:
    """The exception a logging call's ``exc_info`` names (True: the one being handled)."""
    if isinstance(exc_info, BaseException):
        return exc_info
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        value = exc_info[1]
        return value if isinstance(value, BaseException) else None
    return None


@dataclass
class RunningCollector:
    """A started collector: where it listens and how to stop it."""

    runner: web.AppRunner
    collector: Collector
    writer: KafkaBatchWriter
    host: str
    port: int
    #: The reader of the prompts topic (None: PROMPTS_ENABLED=false).
    feed: PromptFeed | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8088`` (the SDK's ``endpoint``)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def wait_ready(self, timeout_s: float = 30.0) -> bool:
        """Wait until the producer started (True), or ``timeout_s`` passed (False)."""
        return await self.writer.wait_started(timeout_s)

    async def stop(self) -> None:
        """Stop taking requests, then close the producer (after in-flight batches)."""
        await self.runner.cleanup()
        if self.feed is not None:
            await self.feed.stop()
        await self.writer.stop()


def build_collector(
    settings: Settings, writer: KafkaBatchWriter, metrics: CollectorMetrics
) -> Collector:
    """The :class:`Collector` the settings describe (write keys required)."""
    limits = BatchLimits(
        max_events=settings.collector_max_events,
        validation=ValidationLimits.from_settings(settings),
    )
    return Collector(
        keys=WriteKeys(settings.require_write_keys()),
        origins=Origins(settings.collector_origins),
        limiter=RateLimiter(rate_per_s=settings.collector_rate_per_s, clock=time.monotonic),
        writer=writer,
        metrics=metrics,
        limits=limits,
        max_body_bytes=settings.collector_max_body_bytes,
        events_topic=settings.topic_ui_events,
        invalid_topic=settings.topic_invalid,
        clock_ms=lambda: time.time_ns() // 1_000_000,
        trust_forwarded_for=settings.collector_trust_forwarded_for,
        body_timeout_s=settings.collector_body_timeout_s,
        fatal=lambda: writer.fatal,
        prompts=PromptBox() if settings.prompts_enabled else None,
    )


async def start_collector(
    settings: Settings, *, create_topics: bool = True, metrics: CollectorMetrics | None = None
) -> RunningCollector:
    """Start listening on ``COLLECTOR_HOST:COLLECTOR_PORT`` and connect in the background.

    Raises :class:`~worker.errors.ConfigError` when no write key is set.  With
    ``create_topics`` the producer first ensures the input and invalid topics exist with
    ``TOPIC_PARTITIONS`` partitions (DESIGN 2: Tansu would auto-create them otherwise).
    """
    metrics = metrics or CollectorMetrics()
    writer = KafkaBatchWriter(
        settings,
        create_topics=create_topics,
        on_ready_change=lambda ready: metrics.producer_ready.set(1 if ready else 0),
    )
    collector = build_collector(settings, writer, metrics)
    runner = web.AppRunner(
        build_app(collector),
        access_log_class=PathOnlyAccessLogger,
        shutdown_timeout=5.0,
        # COLLECTOR_IDLE_TIMEOUT_S: an idle keep-alive connection is closed after this long
        # (aiohttp's default, 75 s, lets idle clients hold many sockets and their buffers).
        keepalive_timeout=settings.collector_idle_timeout_s,
        lingering_time=LINGER_S,
        logger=ServerErrorLog(logging.getLogger("aiohttp.server"), metrics=metrics),
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.collector_host, settings.collector_port)
    await site.start()
    port = int(runner.addresses[0][1])
    writer.start()
    feed = None
    if collector.prompts is not None:
        feed = PromptFeed(
            settings,
            collector.prompts,
            clock_ms=collector.clock_ms,
            on_skipped=metrics.prompts_skipped.inc,
        )
        feed.start()
    log.info("collector listening on %s:%d", settings.collector_host, port)
    return RunningCollector(runner, collector, writer, settings.collector_host, port, feed)


async def serve(settings: Settings, *, create_topics: bool = True) -> None:
    """Run the collector until SIGTERM or SIGINT, then stop cleanly.

    It serves at once, also while the broker is down (``/healthz`` 200, the rest 503), so
    a liveness probe does not restart it through a broker outage.  The one thing it does
    not wait out is an input topic with the wrong partition count: it stops and raises
    :class:`~worker.errors.TopicMismatchError`, which needs an operator.
    """
    running = await start_collector(settings, create_topics=create_topics)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    waits = [
        asyncio.ensure_future(stopping.wait()),
        asyncio.ensure_future(running.writer.failed.wait()),
    ]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("collector stopping")
        await running.stop()
    if running.writer.fatal is not None:
        raise TopicMismatchError(running.writer.fatal)
