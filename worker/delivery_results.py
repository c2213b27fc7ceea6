"""The outcomes of delivery calls, made durable as ``result`` records on the retry topic.

A record is ``{"results": [{"key", "version", "outcome", "retry"?}, ...]}``: the outcomes of
one partition that finished within :data:`_RESULT_LINGER_S` of each other, so a fast Helicone
costs one record per batch of calls rather than one per call.  The partition's handler
applies each outcome to the table (:func:`settle` says how); until then the engine holds it
in memory, so the state is not sent again by this process.  A record rather than a write
from the sender, because a call may end after its partition moved to another worker: the
record reaches the new owner, which applies it before it sends the state
(``RESTORE_SETTLE_MS``), and the table keeps one writer per partition.  A crash before the
record is applied sends the state again, which Helicone overwrites key by key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import orjson

from worker.delivery import RetryState
from worker.envelopes import KIND_HEADER

if TYPE_CHECKING:
    from worker.delivery_ports import Send
    from worker.delivery_state import FeedbackState

__all__ = ["ResultRecords", "settle"]

log = logging.getLogger(__name__)

Outcome = Literal["delivered", "failed", "dead"]

#: A result record that could not be sent is tried again this much later.
_RESULT_RETRY_MS = 1_000
#: Outcomes of a partition that finish within this long of each other share one ``result`` record.
#: It delays only when an outcome becomes durable (the engine's ``_settled`` knows it
#: meanwhile), never a call or a decision.  Each record costs a produce and a pass through
#: Faust's per-record path, which shares the fetch loop with the rekeyed and outbox topics: at
#: 5 ms, steady traffic made one record per call and the windows' lag in the live phase of
#: ``bench/pipeline.py`` grew four- to sixfold; at 100 ms a partition writes at most ten a second.
_RESULT_LINGER_S = 0.1
#: The most outcomes in one ``result`` record (a few hundred bytes each).
_RESULTS_PER_RECORD = 500


class ResultRecords:
    """Batches outcomes into ``result`` records, one open batch per partition."""

    def __init__(
        self,
        *,
        send: Send,
        topic: str,
        owns: Callable[[int], bool],
        tasks: set[asyncio.Task[None]],
    ) -> None:
        #: Sends a record (a public attribute, so a test can make the broker slow or fail).
        self.send = send
        self._topic = topic
        self._owns = owns
        self._tasks = tasks  # the engine's: cancelled and drained with its calls
        #: Outcomes waiting to go out as one record per partition; a list is its batch's
        #: identity, so a sent batch is never taken for the open one.
        self._open: dict[int, list[dict[str, Any]]] = {}
        #: Result records on their way, per partition (awaited when it is revoked).
        self._recording: dict[int, set[asyncio.Task[None]]] = {}

    def report(
        self,
        partition: int,
        key: str,
        version: int,
        outcome: Outcome,
        *,
        retry: RetryState | None = None,
    ) -> None:
        """Make an outcome durable: it goes out in a ``result`` record the agent applies to
        the table, shared by the outcomes of that partition that finish within
        ``_RESULT_LINGER_S``.

        Returns at once: the call's slot is free as soon as Helicone answered.  Waiting for
        the broker here held each slot a produce round trip longer than the call, which
        capped a fast Helicone at ``DELIVERY_CONCURRENCY`` per round trip.
        """
        document: dict[str, Any] = {"key": key, "version": version, "outcome": outcome}
        if retry is not None:
            document["retry"] = retry  # orjson writes a dataclass field by field
        batch = self._open.get(partition)
        if batch is None or len(batch) >= _RESULTS_PER_RECORD:
            batch = self._open[partition] = []
            task = asyncio.ensure_future(self._send_results(partition, batch))
            recording = self._recording.setdefault(partition, set())
            for tasks in (self._tasks, recording):
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        batch.append(document)

    def recording(self, partitions: set[int]) -> list[asyncio.Task[None]]:
        """The result records of ``partitions`` still on their way."""
        return [task for p in partitions for task in self._recording.get(p, ())]

    async def _send_results(self, partition: int, batch: list[dict[str, Any]]) -> None:
        """Send ``batch`` after the linger; until acknowledged, or until the partition is no
        longer this worker's (its next owner sends those states again, which is harmless)."""
        await asyncio.sleep(_RESULT_LINGER_S)
        if self._open.get(partition) is batch:
            del self._open[partition]
        value = orjson.dumps({"results": batch})
        while True:
            try:
                await self.send(self._topic, b"results", value, partition,
                                [(KIND_HEADER, b"result")])
                return
            except Exception:
                if not self._owns(partition):
                    log.warning("could not record %d delivery outcome(s) of revoked partition "
                                "%d; its next owner sends them again", len(batch),
                                partition)
                    return
                log.warning("could not record %d delivery outcome(s); trying again",
                            len(batch))
                await asyncio.sleep(_RESULT_RETRY_MS / 1000)


def settle(
    state: FeedbackState, document: Mapping[str, Any], *, now_ms: int
) -> FeedbackState | None:
    """``state`` with one outcome of a ``result`` record applied, or None if it changes
    nothing.  A result for an old version settles only that version, so a change merged
    during the call is still sent; a failure counts only while the state is still due."""
    version, outcome = int(document["version"]), document["outcome"]
    if outcome == "delivered":
        return state.delivered(version, now_ms=now_ms)
    if outcome == "dead":
        return state.given_up(version, now_ms=now_ms)
    if outcome == "failed" and state.due:
        return state.failed(_retry_from_json(document["retry"]), now_ms=now_ms)
    return None


def _retry_from_json(document: Mapping[str, Any]) -> RetryState:
    fields = dict(document)
    fields["done"] = tuple(fields.get("done", ()))
    return RetryState(**fields)
