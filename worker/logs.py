"""Logging: readable text by default, one JSON object per line with ``LOG_FORMAT=json``.

Every handler carries :class:`RedactSecrets`, which masks anything shaped like a Helicone key
(``sk-helicone-...``) or a bearer token: the code never logs the key on purpose, and this
filter makes sure a third-party library's debug line cannot either.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["JsonFormatter", "RedactSecrets", "logging_config", "redact"]

_SECRET = re.compile(r"(sk-helicone-[A-Za-z0-9_\-]+|Bearer\s+[A-Za-z0-9._~+/=\-]+)")


def redact(text: str) -> str:
    """``text`` with anything key-shaped replaced by ``***``."""
    return _SECRET.sub("***", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(document).decode()


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` document for the worker and the commands."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["redact"],
            }
        },
        "root": {"level": level, "handlers": ["default"]},
        # faust and aiokafka are chatty at INFO about every rebalance step.
        "loggers": {
            "aiokafka": {"level": "WARNING"},
            # httpx logs every request at INFO: a line per Helicone call is noise (and CPU).
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
            "faust": {"level": "WARNING" if level != "DEBUG" else "DEBUG"},
            "mode": {"level": "WARNING" if level != "DEBUG" else "DEBUG"},
        },
    }
