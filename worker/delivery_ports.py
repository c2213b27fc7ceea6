"""What the delivery engine is given: its slice of the settings, and the ports it talks through.

The engine (:mod:`worker.delivery_engine`) imports no Faust and no HTTP: a table is anything
with ``get``/``__setitem__``/``__delitem__``/``items`` (a Faust table in the worker, a dict in
tests), records go out through a :data:`Send`, Helicone is a :class:`Poster`.  The Faust
adapter (:mod:`worker.agents.deliver`) supplies the real ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from worker.delivery import DeliveryAttempted
from worker.delivery_state import RatingVia
from worker.kafka import delivery_retry_topic_name

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = ["DeliveryConfig", "KeyValueTable", "Poster", "Send"]

#: Sends one record and waits for the broker's acknowledgement:
#: (topic, key, value, partition or None, headers).
Send = Callable[[str, bytes, bytes, int | None, list[tuple[str, bytes]]], Awaitable[None]]


class Poster(Protocol):
    """The Helicone calls (:class:`~worker.helicone.HeliconeClient` is the real one): three
    writes, and the read-back of :mod:`worker.readback`."""

    async def post_request_feedback(self, request_id: str, rating: bool) -> DeliveryAttempted:
        ...

    async def post_request_scores(
        self, request_id: str, scores: Mapping[str, int]
    ) -> DeliveryAttempted:
        ...

    async def post_session_feedback(self, session_id: str, rating: bool) -> DeliveryAttempted:
        ...

    async def get_request(self, request_id: str) -> dict[str, Any] | None:
        ...

    async def aclose(self) -> None:
        ...


class KeyValueTable(Protocol):
    """What delivery needs of a table: a :class:`~worker.agents.buffered.BufferedTable` in
    the worker, a dict in tests.

    Only the handler of the key's partition writes (one writer per partition); reads may
    happen anywhere.
    """

    def get(self, key: bytes, /) -> bytes | None:
        ...

    def __setitem__(self, key: bytes, value: bytes, /) -> None:
        ...

    def __delitem__(self, key: bytes, /) -> None:
        ...

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """The delivery slice of the settings (STYLE 4.6)."""

    partitions: int
    retry_topic: str
    dlq_topic: str
    concurrency: int = 32
    rate_per_s: float = 10.0
    max_attempts: int = 12
    max_age_s: float = 86_400.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 600.0
    breaker_cool_down_s: float = 30.0
    auth_probe_interval_s: float = 30.0
    dedupe_ttl_s: float = 7 * 86_400.0
    rate_recovery_s: float = 60.0
    rating_via: RatingVia = "score"
    verify_sample: float = 0.0
    verify_delay_s: float = 660.0
    verify_reads_per_5min: int = 600
    dry_run: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryConfig:
        return cls(
            partitions=settings.topic_partitions,
            retry_topic=delivery_retry_topic_name(settings),
            dlq_topic=settings.topic_dlq,
            concurrency=settings.delivery_concurrency,
            rate_per_s=settings.delivery_rate_per_s,
            max_attempts=settings.delivery_max_attempts,
            max_age_s=settings.delivery_max_age_s,
            backoff_base_s=settings.delivery_backoff_base_s,
            backoff_cap_s=settings.delivery_backoff_cap_s,
            breaker_cool_down_s=settings.delivery_breaker_cool_down_s,
            auth_probe_interval_s=settings.delivery_auth_probe_interval_s,
            dedupe_ttl_s=settings.delivery_dedupe_ttl_s,
            rating_via=settings.helicone_rating_via,
            verify_sample=settings.delivery_verify_sample,
            verify_delay_s=settings.delivery_verify_delay_s,
            verify_reads_per_5min=settings.delivery_verify_reads_per_5min,
            dry_run=settings.feedback_dry_run,
        )

