"""Helicone's rate-limit headers, read: ``Retry-After`` and ``RateLimit-*``.

Pure functions of header values and a time, used by the Helicone client
(:mod:`worker.helicone`) and the adaptive rate behind it.  What holds: anything unreadable
counts as absent, never as zero or as "wait forever", so a malformed header from a proxy
neither stops delivery nor turns off the backoff.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["header", "parse_rate_limit", "parse_retry_after"]


def parse_retry_after(value: str | None, *, now_ms: int) -> float | None:
    """``Retry-After`` in seconds from now, or ``None`` when absent or unreadable.

    Accepts delta-seconds (``"120"``; a decimal is tolerated) and an HTTP-date (IMF-fixdate,
    RFC 850 or asctime, read as GMT).  A date in the past gives 0.  Clamping to the policy's
    bounds is :class:`~worker.delivery.RetryPolicy`'s job, not this parser's.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_ms / 1000)


def parse_rate_limit(headers: Mapping[str, str]) -> tuple[int | None, float | None]:
    """Calls left and seconds to the window's reset, from ``RateLimit-*`` headers, if any.

    Helicone's limiter (``valhalla/jawn/src/middleware/ratelimitter.ts``, express-rate-limit
    with standard headers) sends ``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds).
    The combined form of the later IETF drafts, ``RateLimit: limit=10, remaining=3,
    reset=20``, is read too.  Anything unreadable counts as absent, never as zero.
    """
    remaining = _int_or_none(header(headers, "RateLimit-Remaining"))
    reset = _float_or_none(header(headers, "RateLimit-Reset"))
    combined = header(headers, "RateLimit")
    if combined and (remaining is None or reset is None):
        fields = dict(
            part.strip().partition("=")[::2] for part in combined.replace(";", ",").split(",")
        )
        remaining = remaining if remaining is not None else _int_or_none(fields.get("remaining"))
        reset = reset if reset is not None else _float_or_none(fields.get("reset"))
    if remaining is not None and remaining < 0:
        remaining = None
    if reset is not None and not (0 <= reset <= 86_400):
        reset = None
    return remaining, reset


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value.strip()) if value is not None else None
    except ValueError:
        return None


def _float_or_none(value: str | None) -> float | None:
    try:
        number = float(value.strip()) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup that works for plain dicts as well as ``httpx.Headers``."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)
