"""The deliver agent: a thin Faust adapter around :mod:`worker.delivery_engine`.

It declares the internal retry topic and the changelogged ``delivery-state`` table, runs the
deliver agent over the outbox and the retry topic (one actor: merging takes microseconds and
keeps a partition's merges and results in order), the sender task and the timer, rebuilds the
engine's due index after every recovery, and on revocation waits for the revoked partitions'
calls in flight.  The engine's docstring says what holds and why.

With ``HELICONE_EVIDENCE_PROPERTIES`` it also declares the changelogged ``evidence-properties``
table, hands the evidence lane its ``property`` records from the retry topic, and restores the
lane's waiting properties after every recovery (:mod:`worker.evidence_store` says why).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from worker.delivery_engine import (
    TICK_INTERVAL_S,
    Connect,
    Delivery,
    DeliveryConfig,
    Poster,
    Send,
)
from worker.envelopes import KIND_HEADER, REDRIVE_HEADER, dead_letter_record, header
from worker.evidence_store import PROPERTY_KIND, PendingStore
from worker.kafka import DELIVERY_STATE_TABLE, EVIDENCE_TABLE

if TYPE_CHECKING:
    import faust
    from faust.types import TableT

    from worker.clock import Clock
    from worker.config import Settings
    from worker.metrics import Metrics

__all__ = [
    "KIND_HEADER",
    "REDRIVE_HEADER",
    "Delivery",
    "DeliveryConfig",
    "dead_letter_record",
    "install_delivery",
]

log = logging.getLogger(__name__)

AgentFn = Callable[["faust.StreamT[bytes]"], Awaitable[None]]


def install_delivery(
    app: faust.App,
    *,
    settings: Settings,
    metrics: Metrics,
    topics: dict[str, faust.TopicT],
    readiness_checks: dict[str, Callable[[], bool]],
    clock: Clock,
    supervise: Callable[[str, AgentFn], AgentFn] = lambda name, agent: agent,
) -> Delivery:
    """Add delivery to the app: retry topic, state table, the deliver agent, the sender task.

    The HTTP client is created here (it connects lazily); without an API key and outside dry
    run there is none, and the first call raises :class:`ConfigError` (``run`` checks first).
    ``supervise`` wraps the agent so its crashes are counted like the other agents'.
    """
    config = DeliveryConfig.from_settings(settings)
    partitions = settings.topic_partitions
    topics[config.retry_topic] = app.topic(
        config.retry_topic,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
        internal=False,
    )
    states = app.Table(
        DELIVERY_STATE_TABLE,
        default=None,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        options=settings.rocksdb_options,
        help="Each request's and session's whole feedback state and how far delivery got.",
    )
    send = _sender(topics)
    evidence = _install_evidence(app, settings, send, config.retry_topic)
    delivery = Delivery(config, states=states, send=send, metrics=metrics, clock=clock,
                        connect=_connect(settings, evidence))

    outbox_name = settings.topic_outbox
    channel = app.topic(outbox_name, config.retry_topic, key_type=bytes, value_type=bytes)

    async def deliver_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await _handle(delivery, event.message, config.retry_topic, outbox_name)

    # One actor: merging takes microseconds, and one actor keeps a partition's merges and
    # results in the order they were read.
    app.agent(channel, name="deliver", concurrency=1)(supervise("deliver", deliver_agent))
    _on_rebalance(app, settings, delivery, states, evidence)

    async def sender() -> None:
        try:
            await delivery.run()
        finally:
            await delivery.aclose()

    async def timer() -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            try:
                await delivery.tick(states.items)
            except Exception:  # the timer must outlive one bad tick
                log.exception("delivery timer tick failed; continuing")

    app.task(sender)
    app.task(timer)
    readiness_checks["delivery_not_paused"] = lambda: not delivery.auth.paused
    return delivery


def _sender(topics: dict[str, faust.TopicT]) -> Send:
    """Sends one record to one of ``topics`` and waits for the broker's acknowledgement."""

    async def send(
        topic: str,
        key: bytes,
        value: bytes,
        partition: int | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        acked = await topics[topic].send(
            key=key, value=value, partition=partition, headers=headers
        )
        await acked

    return send


def _on_rebalance(
    app: faust.App,
    settings: Settings,
    delivery: Delivery,
    states: TableT[bytes, bytes],
    evidence: tuple[TableT[bytes, bytes], PendingStore] | None,
) -> None:
    """After every recovery rebuild the engine's due index (and restore the evidence lane's
    waiting properties) for the owned partitions; on revocation stop sending the revoked
    partitions' states and wait for their calls in flight."""
    outbox_name = settings.topic_outbox

    def owned_partitions() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == outbox_name}

    async def recovered() -> None:
        delivery.rebuild(list(states.items()), owned_partitions())

    states.on_recover(recovered)
    if evidence is not None:
        table = evidence[0]

        async def evidence_recovered() -> None:
            if delivery.properties is not None:
                delivery.properties.restore(list(table.items()), owned_partitions())

        table.on_recover(evidence_recovered)

    @app.on_partitions_revoked.connect
    async def _revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", ())
        partitions = {tp.partition for tp in revoked if tp.topic == outbox_name}
        delivery.on_revoked(partitions)
        await delivery.wait_revoked(partitions)


async def _handle(delivery: Delivery, message: Any, retry_topic: str, outbox: str) -> None:
    """One record for the deliver agent: an outbox decision, or a retry-topic record (the
    evidence lane's ``property`` records go to the lane, the rest to the engine)."""
    arguments: dict[str, Any] = {
        "key": message.key,
        "value": message.value,
        "partition": message.partition,
        "offset": message.offset,
        "headers": list(message.headers or ()),
    }
    if message.topic != retry_topic:
        await delivery.on_outbox(topic=outbox, **arguments)
    elif header(arguments["headers"], KIND_HEADER) != PROPERTY_KIND:
        await delivery.on_retry(**arguments)
    elif delivery.properties is not None:  # else the option was turned off: nothing to keep
        delivery.properties.apply(message.value, message.partition)


def _install_evidence(
    app: faust.App, settings: Settings, send: Send, retry_topic: str
) -> tuple[TableT[bytes, bytes], PendingStore] | None:
    """With HELICONE_EVIDENCE_PROPERTIES: the changelogged ``evidence-properties`` table and
    its store (:mod:`worker.evidence_store`); :func:`_on_rebalance` restores the waiting
    properties of the owned partitions into the lane after every recovery."""
    if not settings.helicone_evidence_properties:
        return None
    table = app.Table(
        EVIDENCE_TABLE,
        default=None,
        partitions=settings.topic_partitions,
        key_type=bytes,
        value_type=bytes,
        options=settings.rocksdb_options,
        help="Evidence properties waiting to be set on their requests in Helicone.",
    )
    store = PendingStore(
        table, send, retry_topic=retry_topic, partitions=settings.topic_partitions
    )
    return table, store


def _connect(
    settings: Settings, evidence: tuple[TableT[bytes, bytes], PendingStore] | None
) -> Connect:
    """The engine's ``connect``: the Helicone client, reporting every call to the engine's
    observer (None without an API key outside dry run), and with HELICONE_EVIDENCE_PROPERTIES
    the evidence lane after the ratings, which shares the engine's budget.

    A factory given the engine, because both need it and the engine needs both: the engine
    builds them last in its constructor, so nothing is set on it after it exists.
    """
    from worker.evidence_sender import EvidenceConfig, PropertySender
    from worker.helicone import HeliconeClient

    def connect(delivery: Delivery) -> tuple[Poster | None, PropertySender | None]:
        if not (settings.feedback_dry_run or settings.helicone_api_key is not None):
            return None, None
        client = HeliconeClient.from_settings(settings, observer=delivery.observe)
        config = EvidenceConfig.from_settings(settings)
        if not config.enabled:
            return client, None
        store = evidence[1] if evidence is not None else None
        return client, PropertySender(delivery, client, config, store)

    return connect
