"""Read-back verification: does Helicone *store* what it answered 2xx for? (DESIGN 5, 6)

Helicone answers a score call 2xx when it queues it; the message may still be dropped later
(its request not logged yet or older than 30 days, a newer message of the same request in the
same batch).  Users report scores that never appear, and only reading the request back tells.

A sample of delivered request states (``DELIVERY_VERIFY_SAMPLE``) is read back with
``GET /v1/request/{id}`` once Helicone's ingestion delay plus a margin has passed
(``DELIVERY_VERIFY_DELAY_S``), within a read budget of its own
(``DELIVERY_VERIFY_READS_PER_5MIN``, Helicone allows 600), and counted by what it found:

* ``stored``: every key sent is stored with the value sent;
* ``missing``: Helicone does not know the request, or stores none of the keys sent;
* ``different``: some keys are stored, but not all, or with other values;
* ``error``: the read itself failed (counted, not retried: it is a sample).

Only the latest delivered state of a request is checked: a newer delivery replaces the older
check, whose values Helicone rightly overwrote.  The sample lives in memory; a restart loses
the checks not yet due, which costs only sample size.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from worker.delivery import TokenBucket
from worker.errors import DeliveryError

if TYPE_CHECKING:
    from worker.clock import Clock
    from worker.metrics import Metrics

__all__ = ["ReadBack", "Reader", "VerifyResult", "compare"]

log = logging.getLogger(__name__)

VerifyResult = Literal["stored", "missing", "different", "error"]
VERIFY_RESULTS: tuple[VerifyResult, ...] = ("stored", "missing", "different", "error")
#: Largest number of reads started in one tick.
_MAX_READS_PER_TICK = 50


class Reader(Protocol):
    async def get_request(self, request_id: str) -> dict[str, Any] | None:
        ...


def compare(sent: Mapping[str, int], data: Mapping[str, Any] | None) -> VerifyResult:
    """What a read-back ``data`` object says about the scores ``sent`` (module docstring)."""
    if data is None:
        return "missing"
    stored = data.get("scores")
    if not isinstance(stored, Mapping):
        stored = {}
    present = {k: v for k, v in sent.items() if k in stored}
    if not present:
        return "missing"
    for key, value in sent.items():
        got = stored.get(key)
        try:
            if got is None or int(float(got)) != value:
                return "different"
        except (TypeError, ValueError):
            return "different"
    return "stored"


class ReadBack:
    """The sample of delivered states waiting to be read back, and the reads."""

    def __init__(
        self,
        *,
        sample: float,
        delay_s: float,
        reads_per_5min: int,
        clock: Clock,
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self.sample = sample
        self._delay_ms = int(delay_s * 1000)
        self._clock = clock
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._budget = TokenBucket(rate_per_s=reads_per_5min / 300, clock=clock, burst=1.0)
        self._heap: list[tuple[int, int, str]] = []
        self._tie = itertools.count()
        self._latest: dict[str, tuple[int, dict[str, int]]] = {}  # id -> (due, scores)

    def __repr__(self) -> str:
        return f"ReadBack(sample={self.sample}, waiting={len(self._latest)})"

    @property
    def waiting(self) -> int:
        return len(self._latest)

    def delivered(self, request_id: str, scores: Mapping[str, int]) -> None:
        """A request state Helicone answered 2xx for: check it later, if it is sampled."""
        if self.sample <= 0 or (request_id not in self._latest
                                and self._rng.random() >= self.sample):
            return
        due_ms = self._clock.now_ms() + self._delay_ms
        self._latest[request_id] = (due_ms, dict(scores))
        heapq.heappush(self._heap, (due_ms, next(self._tie), request_id))

    async def tick(self, reader: Reader | None) -> int:
        """Read back what is due, within the budget; how many reads were made."""
        if reader is None:
            return 0
        now_ms = self._clock.now_ms()
        due: list[tuple[str, dict[str, int]]] = []
        while self._heap and self._heap[0][0] <= now_ms and len(due) < _MAX_READS_PER_TICK:
            due_ms, _, request_id = self._heap[0]
            latest = self._latest.get(request_id)
            if latest is None or latest[0] != due_ms:
                heapq.heappop(self._heap)  # replaced by a newer delivery
                continue
            if self._budget.try_acquire() > 0:
                break
            heapq.heappop(self._heap)
            del self._latest[request_id]
            due.append((request_id, latest[1]))
        if due:
            await asyncio.gather(*(self._check(reader, rid, sent) for rid, sent in due))
        return len(due)

    async def _check(self, reader: Reader, request_id: str, sent: dict[str, int]) -> None:
        try:
            result = compare(sent, await reader.get_request(request_id))
        except DeliveryError as exc:
            log.debug("read-back failed: %s", exc)
            result = "error"
        if result in ("missing", "different"):
            log.warning(
                "read-back: Helicone answered 2xx but stores %s for a delivered request "
                "(sent keys %s)", "nothing" if result == "missing" else "other values",
                sorted(sent),
            )
        self._metrics.delivery_verified.labels(result=result).inc()
