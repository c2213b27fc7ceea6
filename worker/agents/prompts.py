"""The prompts adapter: thin Faust wiring around :mod:`worker.prompts`.

Two halves, because the input is partitioned by request id and the cooldown is per user:

* **Detection** wraps the ingest's next stage (:meth:`Prompts.wrap`): every valid event, on the
  partition that owns its request, goes through :class:`PromptDetector` (a bounded LRU of
  :class:`~worker.prompts.Watch` es over :func:`worker.prompts.observe`) and then on to the
  window engine unchanged.  A candidate is queued at once to the internal candidates topic,
  keyed by its audience (``user:<id>``, else ``session:<id>``), so every candidate of one user
  reaches one partition.  The watches are memory only: after a restart a quick exit whose
  ``response_shown`` was committed before is not seen (the engagement rule still rates it).
* **Cooldown**: one agent over the candidates topic keeps ``audience key -> last prompt`` in the
  changelogged ``prompt-cooldown`` table (co-partitioned with the candidates topic, so a
  rebalance moves the state with its candidates), calls :func:`worker.prompts.decide` with the
  injected clock, writes the state, then sends the prompt to ``feedback-prompts`` keyed by
  audience.  The order (state, then send) and the ``resend`` verdict make a crash between the
  two re-send the same prompt id, never a second prompt (:mod:`worker.prompts.cooldown`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from worker.agents.tables import changelogged_table
from worker.kafka import PROMPT_COOLDOWN_TABLE, prompt_candidates_topic_name
from worker.prompts import (
    INITIAL_WATCH,
    PromptRecord,
    Watch,
    decide,
    decode_state,
    encode_state,
    observe,
)

if TYPE_CHECKING:
    import faust

    from worker.agents.ingest import Ack, NextStage
    from worker.clock import Clock
    from worker.config import Settings
    from worker.metrics import PromptMetrics
    from worker.producing import Producer
    from worker.rules import RuleConfig
    from worker.validation import Accepted

__all__ = [
    "DEFAULT_WATCH_KEYS",
    "PromptDetector",
    "Prompts",
    "install_prompts",
    "register_prompts",
]

log = logging.getLogger(__name__)

#: Requests watched per worker (LRU): an engagement window's worth of a busy worker's requests;
#: a watch costs about 200 bytes.
DEFAULT_WATCH_KEYS = 100_000

AgentFn = Callable[["faust.StreamT[bytes]"], Awaitable[None]]
#: Queues one record (key, value) on a topic; returns the broker's delivery future.
SendRecord = Callable[[bytes, bytes], Awaitable[Any]]


@dataclass
class PromptDetector:
    """:func:`worker.prompts.observe` over a bounded, in-memory map of watches."""

    cfg: RuleConfig
    ttl_ms: int
    max_keys: int = DEFAULT_WATCH_KEYS
    _watches: OrderedDict[str, Watch] = field(default_factory=OrderedDict)

    def observe(self, accepted: Accepted) -> PromptRecord | None:
        event = accepted.event
        if event.request_id is None:
            return None
        key = event.request_id
        watch = self._watches.pop(key, INITIAL_WATCH)
        watch, candidate = observe(
            watch, event, accepted.event_time_ms, cfg=self.cfg, ttl_ms=self.ttl_ms
        )
        self._watches[key] = watch
        if len(self._watches) > self.max_keys:
            self._watches.popitem(last=False)
        return candidate


@dataclass
class Prompts:
    """Both halves' adapters (module docstring); built by :func:`install_prompts`."""

    detector: PromptDetector
    metrics: PromptMetrics
    clock: Clock
    cooldown_ms: int
    send_candidate: SendRecord
    send_prompt: SendRecord

    def wrap(self, next_stage: NextStage) -> NextStage:
        """``next_stage`` with detection in front of it (the event itself goes on unchanged)."""

        async def stage(
            partition: int, accepted: Accepted, ack: Ack, read_ms: int | None = None
        ) -> None:
            candidate = self.detector.observe(accepted)
            if candidate is not None:
                await self.on_detected(candidate)
            await next_stage(partition, accepted, ack, read_ms)

        return stage

    async def on_detected(self, candidate: PromptRecord) -> None:
        self.metrics.candidates.labels(reason=candidate.reason).inc()
        audience = candidate.audience_key
        if audience is None:
            self.metrics.suppressed.labels(why="no_audience").inc()
            return
        # Queued, not awaited: the producer sends it within its linger, long before the
        # input record's ack (at the windows' next flush) lets the offset be committed.
        try:
            await self.send_candidate(audience.encode(), candidate.model_dump_json().encode())
        except Exception as exc:  # a prompt is worth less than the rating: never block it
            self.metrics.suppressed.labels(why="not_queued").inc()
            log.warning("could not queue a prompt candidate: %s", type(exc).__name__)

    async def on_candidate(self, value: bytes | None, table: Any) -> None:
        """One record of the candidates topic, inside its partition's stream event."""
        try:
            candidate = PromptRecord.model_validate_json(value or b"")
        except ValidationError:
            self.metrics.invalid.inc()
            log.warning("skipped a prompt candidate that does not parse")
            return
        audience = candidate.audience_key
        if audience is None:  # never sent so; an old or foreign record
            self.metrics.suppressed.labels(why="no_audience").inc()
            return
        key = audience.encode()
        verdict = decide(
            decode_state(table.get(key)),
            candidate,
            now_ms=self.clock.now_ms(),
            cooldown_ms=self.cooldown_ms,
        )
        if verdict.outcome == "send":
            assert verdict.state is not None
            table[key] = encode_state(verdict.state)  # first: see the module docstring
            self.metrics.sent.labels(reason=candidate.reason).inc()
        elif not verdict.sends:
            self.metrics.suppressed.labels(why=verdict.outcome).inc()
        if verdict.sends:
            await self.send_prompt(key, candidate.model_dump_json().encode())


def install_prompts(
    app: faust.App,
    *,
    settings: Settings,
    rules: RuleConfig,
    metrics: PromptMetrics,
    clock: Clock,
    producer: Producer,
    supervise: Callable[[str, AgentFn], AgentFn] = lambda name, agent: agent,
) -> Prompts:
    """Add the candidates topic, the cooldown table and agent, and the prompts topic."""
    partitions = settings.topic_partitions
    candidates_name = prompt_candidates_topic_name(settings)
    candidates = app.topic(
        candidates_name, key_type=bytes, value_type=bytes, partitions=partitions, internal=False
    )
    output = app.topic(
        settings.topic_prompts, key_type=bytes, value_type=bytes, partitions=partitions,
        internal=False,
    )
    table = changelogged_table(
        app, settings, PROMPT_COOLDOWN_TABLE,
        help="Per user (else session): the last feedback prompt sent, for the cooldown.",
    )

    async def send_candidate(key: bytes, value: bytes) -> Any:
        return await producer.send(candidates_name, key, value)

    async def send_prompt(key: bytes, value: bytes) -> None:
        await (await producer.send(output.get_topic_name(), key, value))

    prompts = Prompts(
        detector=PromptDetector(cfg=rules, ttl_ms=int(settings.prompt_ttl_s * 1000)),
        metrics=metrics,
        clock=clock,
        cooldown_ms=int(settings.prompt_cooldown_s * 1000),
        send_candidate=send_candidate,
        send_prompt=send_prompt,
    )

    async def cooldown_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await prompts.on_candidate(event.message.value, table)

    app.agent(candidates, name="prompt-cooldown", concurrency=1)(
        supervise("prompt-cooldown", cooldown_agent)
    )
    return prompts


def register_prompts(
    app: faust.App,
    next_stage: NextStage,
    *,
    settings: Settings,
    rules: RuleConfig,
    metrics: PromptMetrics,
    clock: Clock,
    producer: Producer,
    supervise: Callable[[str, AgentFn], AgentFn],
) -> NextStage:
    """The one call ``build_app`` makes: ``next_stage`` with prompt detection in front, and the
    cooldown installed; ``next_stage`` itself when ``PROMPTS_ENABLED`` is false."""
    if not settings.prompts_enabled:
        return next_stage
    prompts = install_prompts(app, settings=settings, rules=rules, metrics=metrics, clock=clock,
                              producer=producer, supervise=supervise)
    return prompts.wrap(next_stage)
