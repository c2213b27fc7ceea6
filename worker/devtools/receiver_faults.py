"""The fake Helicone's misbehaviour on demand: forced answers, connection resets and latency.

:class:`FaultInjection` is the part of :class:`~worker.devtools.receiver.Receiver` that tests
(and, over ``POST /_admin/faults``, other processes) use to make write calls fail.  Faults are
taken in the order they were added; a counted fault is used up call by call, a timed one lasts
until its end on the receiver's clock, so a test's fault applies to exactly the calls it names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.clock import Clock

__all__ = ["Fault", "FaultInjection"]


@dataclass(slots=True)
class Fault:
    """A misbehaviour for matching calls: a forced answer, or a reset when ``reset`` is set.

    Active while ``remaining`` calls are left, or, when ``remaining`` is None, until
    ``until_ms`` on the receiver's clock.
    """

    status: int = 500
    reset: bool = False
    retry_after: str | None = None
    body: Any = None
    remaining: int | None = 1
    until_ms: int | None = None
    path_prefix: str = ""

    def applies(self, path: str, now_ms: int) -> bool:
        if not path.startswith(self.path_prefix):
            return False
        if self.remaining is not None:
            return self.remaining > 0
        return self.until_ms is not None and now_ms < self.until_ms

    def expired(self, now_ms: int) -> bool:
        if self.remaining is not None:
            return self.remaining <= 0
        return self.until_ms is None or now_ms >= self.until_ms


class FaultInjection:
    """Faults and latency for the write calls; the receiver consults :meth:`_take_fault` and
    ``_latency_s`` for each call it answers."""

    _clock: Clock
    _faults: list[Fault]
    _latency_s: float

    @property
    def fault_count(self) -> int:
        """Faults added and not yet expired or used up (as of the last call taken)."""
        return len(self._faults)

    @property
    def latency_s(self) -> float:
        """The latency every API answer waits, 0.0 when none is set."""
        return self._latency_s

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        retry_after: str | float | None = None,
        body: Any = None,
        path_prefix: str = "",
    ) -> None:
        """Answer the next ``count`` matching calls with ``status`` (and ``Retry-After``)."""
        self._faults.append(
            Fault(
                status=status,
                retry_after=_header_value(retry_after),
                body=body,
                remaining=count,
                path_prefix=path_prefix,
            )
        )

    def fail_for(
        self,
        seconds: float,
        *,
        status: int = 503,
        retry_after: str | float | None = None,
        body: Any = None,
        path_prefix: str = "",
    ) -> None:
        """Answer every matching call with ``status`` for the next ``seconds``."""
        self._faults.append(
            Fault(
                status=status,
                retry_after=_header_value(retry_after),
                body=body,
                remaining=None,
                until_ms=self._clock.now_ms() + math.ceil(seconds * 1000),
                path_prefix=path_prefix,
            )
        )

    def reset_next(self, count: int = 1, *, path_prefix: str = "") -> None:
        """Close the connection without answering on the next ``count`` matching calls."""
        self._faults.append(Fault(reset=True, remaining=count, path_prefix=path_prefix))

    def set_latency(self, seconds: float) -> None:
        """Delay every API answer by ``seconds`` (0 turns it off)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency_s = seconds

    def clear_faults(self) -> None:
        """Remove every fault and the latency."""
        self._faults.clear()
        self._latency_s = 0.0

    def _take_fault(self, path: str) -> Fault | None:
        now_ms = self._clock.now_ms()
        self._faults = [f for f in self._faults if not f.expired(now_ms)]
        for fault in self._faults:
            if fault.applies(path, now_ms):
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    def add_fault_from(self, spec: Mapping[str, Any]) -> None:
        """A fault (or latency) from its JSON form, as ``POST /_admin/faults`` takes it."""
        known = {
            "status",
            "count",
            "for_s",
            "retry_after",
            "reset",
            "latency_s",
            "body",
            "path_prefix",
        }
        if unknown := set(spec) - known:
            raise ValueError(f"unknown fields {sorted(unknown)}; expected some of {sorted(known)}")
        if "latency_s" in spec:
            self.set_latency(float(spec["latency_s"]))
        if not {"status", "reset", "count", "for_s"} & set(spec):
            return  # latency only
        prefix = str(spec.get("path_prefix", ""))
        if spec.get("reset"):
            self.reset_next(int(spec.get("count", 1)), path_prefix=prefix)
            return
        status = int(spec.get("status", 500))
        if not 100 <= status <= 599:
            raise ValueError("status must be 100-599")
        options: dict[str, Any] = {
            "status": status,
            "retry_after": spec.get("retry_after"),
            "body": spec.get("body"),
            "path_prefix": prefix,
        }
        if "for_s" in spec:
            self.fail_for(float(spec["for_s"]), **options)
        else:
            self.fail_next(int(spec.get("count", 1)), **options)


def _header_value(retry_after: str | float | None) -> str | None:
    if retry_after is None:
        return None
    if isinstance(retry_after, float | int):
        return str(math.ceil(retry_after))
    return retry_after
