"""The collector as a real server with no broker behind it: it starts anyway, answers 503
with Retry-After, says it is not ready, and never lets the write key out (logs, metrics,
bodies).  Also the ``collect`` command's configuration checks."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.collector.server import (
    LINGER_S,
    PathOnlyAccessLogger,
    RunningCollector,
    start_collector,
)
from worker.config import load_settings
from worker.errors import ConfigError

KEY = "pk_secret_4c1d8e2b"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def started_without_broker(**overrides: Any) -> AsyncIterator[RunningCollector]:
    settings = load_settings(
        {
            "kafka_bootstrap_servers": f"127.0.0.1:{closed_port()}",
            "collector_host": "127.0.0.1",
            "collector_port": 0,
            "collector_write_keys": f"{KEY},pk_other",
            "collector_send_timeout_s": 1.0,
            **overrides,
        }
    )
    running = await start_collector(settings)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def no_broker() -> AsyncIterator[RunningCollector]:
    async with started_without_broker() as running:
        yield running


def batch() -> dict[str, object]:
    return {
        "events": [
            {
                "event_id": str(uuid.uuid4()),
                "type": "response_copied",
                "request_id": str(uuid.uuid4()),
                "occurred_at": datetime.now(UTC).isoformat(),
            }
        ]
    }


async def test_unreachable_broker_is_503_with_retry_after_and_not_ready(
    no_broker: RunningCollector,
) -> None:
    assert not await no_broker.wait_ready(0.5)
    async with httpx.AsyncClient(base_url=no_broker.url) as client:
        response = await client.post("/v1/events", params={"key": KEY}, json=batch())
        assert response.status_code == 503
        assert response.json()["error"] == "broker_unavailable"
        assert int(response.headers["Retry-After"]) >= 1
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"producer_started": False, "broker_reachable": False}
        metrics = (await client.get("/metrics")).text
    assert 'feedback_collector_refused_total{error="broker_unavailable"} 1.0' in metrics
    assert "feedback_collector_producer_ready 0.0" in metrics


async def test_the_write_key_never_appears_in_logs_metrics_or_answers(
    no_broker: RunningCollector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's access log included
    bodies = []
    async with httpx.AsyncClient(base_url=no_broker.url) as client:
        for params, headers in [
            ({"key": KEY}, {}),  # 503: no broker
            ({}, {"Authorization": f"Bearer {KEY}"}),
            ({"key": KEY + "x"}, {}),  # 401: a near miss
            ({"key": KEY}, {"Origin": "https://evil.test"}),  # 403
        ]:
            response = await client.post(
                "/v1/events", params=params, headers=headers, json=batch()
            )
            bodies.append(response.text + str(response.headers))
        metrics = (await client.get("/metrics")).text
    assert [b for b in bodies if KEY in b] == []
    assert KEY not in metrics
    # The test's own HTTP client (httpx) logs the URL it calls; everything else is ours.
    server_side = [
        record.getMessage()
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore"))
    ]
    assert any("/v1/events" in line for line in server_side), "the access log should run"
    assert [line for line in server_side if KEY in line] == []


async def test_a_client_hanging_up_mid_body_is_counted_not_a_crash(
    no_broker: RunningCollector,
) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", no_broker.port)
    writer.write(
        f"POST /v1/events?key={KEY} HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n".encode()
        + b'{"events": ['
    )
    await writer.drain()
    writer.close()
    metrics = no_broker.collector.metrics
    for _ in range(100):  # the server notices the hang-up asynchronously
        text = metrics.exposition().decode()
        if 'feedback_collector_refused_total{error="not_json"} 1.0' in text:
            break
        await asyncio.sleep(0.02)
    assert 'feedback_collector_refused_total{error="not_json"} 1.0' in text
    assert 'feedback_collector_requests_total{status="400"} 1.0' in text


async def _wait_for_metric(running: RunningCollector, line: str) -> str:
    for _ in range(100):  # the server may count after the client has its answer
        text = running.collector.metrics.exposition().decode()
        if line in text:
            break
        await asyncio.sleep(0.02)
    return text


async def test_a_trickled_body_is_408_body_timeout_and_counted() -> None:
    """A client that sends its headers and then its body a byte at a time holds a connection
    for as long as it likes unless the body has a deadline: COLLECTOR_BODY_TIMEOUT_S."""
    async with started_without_broker(collector_body_timeout_s=0.5) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(
            f"POST /v1/events?key={KEY} HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n"
            "Content-Type: text/plain\r\n\r\n".encode()
        )
        await writer.drain()
        started = time.monotonic()

        async def trickle() -> None:
            for byte in b'{"events": [' + b" " * 150:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            answered_s = time.monotonic() - started
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            # the server drops what still trickles in for LINGER_S at most, then closes
            await asyncio.wait_for(reader.read(), LINGER_S + 3)
            closed_s = time.monotonic() - started
        finally:
            trickling.cancel()
            await asyncio.gather(trickling, return_exceptions=True)
            writer.close()
        assert head.startswith(b"HTTP/1.1 408"), head
        assert b'"error":"body_timeout"' in body
        assert b"Connection: close" in head  # the rest of the body is never read
        assert 0.4 <= answered_s < 3, answered_s
        assert closed_s < 0.5 + LINGER_S + 2, closed_s
        text = await _wait_for_metric(
            running, 'feedback_collector_refused_total{error="body_timeout"} 1.0'
        )
    assert 'feedback_collector_refused_total{error="body_timeout"} 1.0' in text
    assert 'feedback_collector_requests_total{status="408"} 1.0' in text


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    async with started_without_broker(collector_idle_timeout_s=0.5) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        # the answer's body, then nothing until the server closes the idle connection
        rest = await asyncio.wait_for(reader.read(), 5)
        idle_s = time.monotonic() - answered
        writer.close()
    assert rest == b'{"status":"ok"}'
    assert 0.4 <= idle_s < 3, idle_s


async def _raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)  # aiohttp closes after a 400
    finally:
        writer.close()


async def test_oversized_headers_are_400_logged_without_address_or_key_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiohttp answers a request it cannot parse with 400 before any handler runs, and
    would log ``Error handling request from 127.0.0.1`` at ERROR with the offending bytes
    (a 20 KiB header holding the write key).  It must log one WARNING per request naming
    neither, and count it."""
    # The broker address is 127.0.0.2 so that its connection errors, which aiokafka logs,
    # cannot account for a "127.0.0.1" in the logs: that is the client's address here.
    async with started_without_broker(
        kafka_bootstrap_servers=f"127.0.0.2:{closed_port()}"
    ) as running:
        caplog.clear()
        caplog.set_level(logging.DEBUG)
        filler = "x" * 20 * 1024
        requests = [
            f"POST /v1/events?key={KEY} HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: 2\r\n\r\n{{}}",
            f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}{filler}"
            "\r\nContent-Length: 2\r\n\r\n{}",
            f"POST /v1/events?key={KEY}&pad={filler} HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        answers = [await _raw_request(running.port, r.encode()) for r in requests]
        text = await _wait_for_metric(
            running, 'feedback_collector_refused_total{error="malformed_request"} 3.0'
        )
        records = list(caplog.records)
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.0 400 Bad Request"] * 3
    assert 'feedback_collector_refused_total{error="malformed_request"} 3.0' in text
    logged = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''} {r.exc_info or ''}"
        for r in records
    )
    assert KEY not in logged
    assert "127.0.0.1" not in logged
    malformed = [r for r in records if "malformed HTTP request" in r.getMessage()]
    assert [(r.name, r.levelno) for r in malformed] == [("aiohttp.server", logging.WARNING)] * 3
    assert all(r.exc_info is None for r in malformed)
    assert [r for r in records if r.name == "aiohttp.server" and r.levelno >= logging.ERROR] == []


def test_the_access_log_is_skipped_unless_debug_is_on() -> None:
    """aiohttp asks ``enabled`` once per connection and then skips timing and logging each
    request: at INFO the access log (DEBUG lines) must say no."""
    logger = logging.getLogger("tests.collector.access")
    access = PathOnlyAccessLogger(logger, "")
    try:
        logger.setLevel(logging.INFO)
        assert not access.enabled
        logger.setLevel(logging.DEBUG)
        assert access.enabled
    finally:
        logger.setLevel(logging.NOTSET)


def test_collect_needs_write_keys() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings().require_write_keys()
    assert "COLLECTOR_WRITE_KEYS" in raised.value.problems[0]
    result = CliRunner().invoke(main, ["collect"])
    assert result.exit_code == 2
    assert "COLLECTOR_WRITE_KEYS: missing" in result.output


def test_collect_settings_are_validated_with_a_clear_message() -> None:
    result = CliRunner().invoke(
        main,
        ["collect"],
        env={"COLLECTOR_WRITE_KEYS": "k", "COLLECTOR_ALLOWED_ORIGINS": "app.example.com"},
    )
    assert result.exit_code == 2
    assert "COLLECTOR_ALLOWED_ORIGINS" in result.output
    assert "COLLECTOR_WRITE_KEYS" not in result.output  # that one is fine, and secret


def test_collect_help_names_its_settings() -> None:
    result = CliRunner().invoke(main, ["collect", "--help"])
    assert result.exit_code == 0
    for name in ("COLLECTOR_WRITE_KEYS", "COLLECTOR_PORT", "/v1/events", "/readyz"):
        assert name in result.output


def test_origins_and_keys_parse_from_comma_separated_values() -> None:
    settings = load_settings(
        {
            "collector_write_keys": " a , b,,",
            "collector_allowed_origins": "https://a.example.com/, http://localhost:5173",
        }
    )
    assert [k.get_secret_value() for k in settings.require_write_keys()] == ["a", "b"]
    assert settings.collector_origins == {"https://a.example.com", "http://localhost:5173"}
    assert "a , b" not in repr(settings)
    assert load_settings({"collector_allowed_origins": "*"}).collector_origins == {"*"}
