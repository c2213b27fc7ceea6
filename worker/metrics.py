"""Prometheus metrics (DESIGN 9): the only module that imports prometheus_client.

The core returns plain records (an :class:`~worker.ingest.Invalid`, a decision, ...); the
adapters hand them to :class:`Metrics`, which turns them into series.  No request, session or
user id is ever a label, so cardinality is fixed by the contract: event types, invalid
reasons, rule names, endpoints and outcomes.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)

from worker.events import EVENT_TYPES

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_INVALID_REASONS = (
    "not_json",
    "schema_violation",
    "too_large",
    "invalid_request_id",
    "timestamp_out_of_range",
)


# The ``*_created`` companion series double the scrape size and no dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The worker's series, registered on one registry (a fresh one per app by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "feedback_events", "Valid events accepted by ingest, by type.", ["type"], registry=r
        )
        self.events_invalid = Counter(
            "feedback_events_invalid",
            "Records routed to the invalid topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "feedback_events_duplicate",
            "Events dropped because their event_id was already processed.",
            registry=r,
        )
        self.events_rekeyed = Counter(
            "feedback_events_rekeyed",
            "Valid events forwarded to the partition that owns their request "
            "(the producer keyed or partitioned them differently).",
            registry=r,
        )
        self.last_event_timestamp = Gauge(
            "feedback_last_event_timestamp_seconds",
            "Event time of the newest valid event seen, as a Unix timestamp.",
            registry=r,
        )
        # Pre-create the closed label sets so dashboards see zeros, not gaps.
        for event_type in EVENT_TYPES:
            self.events.labels(type=event_type)
        for reason in _INVALID_REASONS:
            self.events_invalid.labels(reason=reason)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format, for ``/metrics``."""
        return generate_latest(self.registry)
