"""Dead-lettering for delivery: what cannot be posted goes to ``feedback-dlq``, one record
per decision.

One record per decision, each acknowledged before the next, so that ``dlq redrive`` can put
any one of them back on the outbox (marked with :data:`~worker.envelopes.REDRIVE_HEADER`),
where merging it again is harmless: merging is idempotent.  A record that is not a decision
at all is kept as its bytes, with the topic, partition and offset it came from.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from worker.delivery import DeadLetterReason, RetryState
from worker.envelopes import DLQ_REASON_HEADER, dead_letter_record

if TYPE_CHECKING:
    from worker.clock import Clock
    from worker.delivery_ports import Send
    from worker.metrics import Metrics

__all__ = ["DeadLetters"]

log = logging.getLogger(__name__)


class DeadLetters:
    """Writes the dead-letter records of the delivery engine to ``topic``."""

    def __init__(self, *, send: Send, topic: str, metrics: Metrics, clock: Clock) -> None:
        self._send = send
        self._topic = topic
        self._metrics = metrics
        self._clock = clock

    async def decisions(
        self,
        decisions: list[dict[str, Any]],
        state: RetryState,
        *,
        target: bytes,
        reason: DeadLetterReason,
        message: str,
    ) -> None:
        """One dead-letter record per decision (each acknowledged), so redrive can replay it."""
        now_ms = self._clock.now_ms()
        for decision in decisions:
            record = dead_letter_record(
                decision_id=decision.get("decision_id"),
                decision=decision,
                reason=reason,
                message=message,
                state=state,
                now_ms=now_ms,
            )
            await self._send(
                self._topic, target, orjson.dumps(record), None,
                [(DLQ_REASON_HEADER, reason.encode())],
            )
            self._metrics.observe_dead_letter(reason)
        log.warning(
            "%d decision(s) for one target dead-lettered (%s) after %d attempt(s): %s",
            len(decisions), reason, state.attempts, message,
        )

    async def unreadable(
        self, *, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int
    ) -> None:
        """Not a decision at all: keep the bytes and where they came from."""
        record = dead_letter_record(
            decision_id=None,
            decision=None,
            reason="invalid",
            message="not a valid decision (DESIGN 5)",
            state=RetryState(),
            now_ms=self._clock.now_ms(),
            source={"topic": topic, "partition": partition, "offset": offset},
            value=value,
        )
        await self._send(
            self._topic, key or b"", orjson.dumps(record), None,
            [(DLQ_REASON_HEADER, b"invalid")],
        )
        self._metrics.observe_dead_letter("invalid")
        log.warning("record %s[%d]@%d is not a decision; dead-lettered", topic, partition, offset)
