"""Logs: one JSON object per line with LOG_FORMAT=json, and no key ever shown."""

from __future__ import annotations

import io
import logging
import logging.config
from collections.abc import Iterator

import orjson
import pytest

from worker.logs import logging_config, redact


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    config = logging_config("INFO", fmt)
    stream = io.StringIO()
    config["handlers"]["default"]["stream"] = stream
    logging.config.dictConfig(config)
    return logging.getLogger("worker.test"), stream


def test_json_lines_with_the_key_masked() -> None:
    logger, stream = capture("json")
    logger.info("posting with %s", "Bearer sk-helicone-abc123-SECRET")
    try:
        raise ValueError("bad key sk-helicone-eu-xyz")
    except ValueError:
        logger.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert first["level"] == "info" and first["logger"] == "worker.test"
    assert "SECRET" not in first["message"] and "***" in first["message"]
    assert "sk-helicone" not in second["exception"]


def test_text_format_is_readable_and_masked() -> None:
    logger, stream = capture("text")
    logger.warning("key sk-helicone-abc")
    line = stream.getvalue().strip()
    assert "WARNING" in line and "worker.test" in line and "sk-helicone-abc" not in line


def test_redact_leaves_ordinary_text() -> None:
    assert redact("request 5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e6f copied") == (
        "request 5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e6f copied"
    )
