"""Who may write, from where, and how often: the collector's request policies, pure.

* :class:`WriteKeys` checks a presented key against ``COLLECTOR_WRITE_KEYS`` in constant
  time (:func:`hmac.compare_digest` against every key, so timing shows neither which key
  matched nor how much of one did).  Keys are publishable (they only allow writing events,
  DESIGN 11) but still never logged, counted or echoed.
* :class:`Origins` is the CORS policy: which ``Origin`` may post, and the response headers
  that let its browser read the answer.
* :class:`RateLimiter` is a token bucket per client address, in a bounded map, with the
  clock injected (seconds, monotonic), so tests advance time instead of sleeping.
"""

from __future__ import annotations

import hmac
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import SecretStr

from worker.collector.batch import Refusal

__all__ = ["Origins", "RateLimiter", "WriteKeys", "presented_key"]

#: Longer candidates are refused without comparing: no real key is this long, and it caps
#: the work a hostile header can cause.
_MAX_KEY_CHARS = 512


def presented_key(query_key: str | None, authorization: str | None) -> str | None:
    """The write key of a request: ``Authorization: Bearer <key>``, else ``?key=<key>``.

    The query form exists because ``navigator.sendBeacon`` cannot set headers.
    """
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return query_key or None


class WriteKeys:
    """The accepted write keys; see the module docstring for why the check looks like this."""

    def __init__(self, keys: Iterable[SecretStr]) -> None:
        self._keys = tuple(k.get_secret_value().encode() for k in keys)
        if not self._keys:
            raise ValueError("at least one write key is required")

    def check(self, candidate: str | None) -> Refusal | None:
        """None when ``candidate`` is a write key, else the 401 refusal (without the key)."""
        if candidate is None:
            return Refusal(
                "missing_write_key", "send the write key as ?key= or Authorization: Bearer"
            )
        raw = candidate.encode("utf-8", "replace")
        if len(candidate) <= _MAX_KEY_CHARS:
            matched = False
            for key in self._keys:  # no early exit: every key costs the same time
                matched |= hmac.compare_digest(raw, key)
            if matched:
                return None
        return Refusal("unknown_write_key", "the write key is not accepted")

    def __repr__(self) -> str:
        return f"WriteKeys(<{len(self._keys)} keys>)"


@dataclass(frozen=True, slots=True)
class Origins:
    """CORS (DESIGN 11): only listed origins may post from a browser; ``*`` only when listed.

    Requests without an ``Origin`` header (backends, curl) are not browsers' cross-origin
    requests, so CORS does not apply to them: they are allowed and get no CORS headers.
    """

    allowed: frozenset[str]

    def permits(self, origin: str | None) -> bool:
        return origin is None or "*" in self.allowed or origin.rstrip("/") in self.allowed

    def headers(self, origin: str | None) -> dict[str, str]:
        """Headers for any answer to a request with ``origin``: ``Vary: Origin`` always (a
        cache must not serve one origin's answer to another), the allow header only for a
        permitted origin, and ``Retry-After`` exposed so the SDK can honour it."""
        headers = {"Vary": "Origin"}
        if origin is not None and self.permits(origin):
            headers["Access-Control-Allow-Origin"] = "*" if "*" in self.allowed else origin
            headers["Access-Control-Expose-Headers"] = "Retry-After"
        return headers

    def preflight_headers(self, origin: str | None) -> dict[str, str]:
        """The extra headers of a successful ``OPTIONS`` preflight."""
        return {
            **self.headers(origin),
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type, Authorization",
            "Access-Control-Max-Age": "600",
        }


class RateLimiter:
    """Token buckets per client address: ``rate_per_s`` requests a second, bursts up to
    ``burst`` (default: one second's worth, at least 1).

    At most ``max_addresses`` buckets are kept (least recently used evicted): memory stays
    bounded whatever the number of addresses, and an evicted address only gets a full bucket
    back, which a flood from many addresses cannot turn into more than ``burst`` each.
    """

    def __init__(
        self,
        *,
        rate_per_s: float,
        clock: Callable[[], float],
        burst: float | None = None,
        max_addresses: int = 65_536,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self._rate = rate_per_s
        self._burst = burst if burst is not None else max(1.0, rate_per_s)
        self._clock = clock
        self._max = max_addresses
        #: address -> (tokens, time of the last update)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, address: str) -> int | None:
        """Spend one token of ``address``: None when allowed, else whole seconds to wait."""
        now = self._clock()
        tokens, last = self._buckets.pop(address, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[address] = (tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        if allowed:
            return None
        return max(1, math.ceil((1.0 - tokens) / self._rate))

    def __len__(self) -> int:
        return len(self._buckets)
