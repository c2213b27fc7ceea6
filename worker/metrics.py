"""Prometheus metrics (DESIGN 9): the only module that imports prometheus_client.

The core returns plain records (an :class:`~worker.validation.Invalid`, a decision, ...); the
adapters hand them to :class:`Metrics`, which turns them into series.  No request, session or
user id is ever a label, so cardinality is fixed by the contract: event types, invalid
reasons, rule names, endpoints and outcomes.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from worker.delivery import (
    DEAD_LETTER_REASONS,
    ENDPOINTS,
    AuthPauseChanged,
    BreakerState,
    BreakerStateChanged,
    DeadLetterReason,
    DeliveryAttempted,
    DeliveryOutcome,
)
from worker.delivery_state import RatingPair
from worker.events import EVENT_TYPES, Decision
from worker.evidence import DROP_REASONS, DropReason
from worker.prompts import PROMPT_REASONS, SUPPRESSIONS
from worker.rules import RULES

__all__ = ["CONTENT_TYPE_LATEST", "CollectorMetrics", "Metrics", "PromptMetrics"]

_INVALID_REASONS = (
    "not_json",
    "schema_violation",
    "too_large",
    "invalid_request_id",
    "invalid_session_id",
    "timestamp_out_of_range",
)


# The ``*_created`` companion series double the scrape size and no dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The worker's series, registered on one registry (a fresh one per app by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Register every series, by area, in the order ``/metrics`` lists them (the generated
        metrics reference follows it too)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds: the standard
        # process series, to read RSS next to feedback_rocksdb_memory_bytes.
        ProcessCollector(registry=r)
        self._ingest_series(r)
        self._runtime_series(r)
        self._consumer_series(r)
        self._window_series(r)
        self._calibration_series(r)
        # ---- delivery (DESIGN 5, 9): fed by worker/delivery_engine.py
        self._delivery_call_series(r)
        self._delivery_queue_series(r)
        self._delivery_outcome_series(r)
        self._evidence_series(r)
        self._delivery_zeros()
        #: Feedback prompts' series (worker.prompts), listed after the others.
        self.prompts = PromptMetrics(r)

    def _ingest_series(self, r: CollectorRegistry) -> None:
        """What ingest accepted, refused, dropped as duplicate or forwarded."""
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
        # Pre-create the closed label sets so dashboards see zeros, not gaps.  The per-type
        # children are kept: ``labels()`` costs about 5 us, on every valid event.
        self.events_by_type: dict[str, Counter] = {
            event_type: self.events.labels(type=event_type) for event_type in EVENT_TYPES
        }
        for reason in _INVALID_REASONS:
            self.events_invalid.labels(reason=reason)

    def _runtime_series(self, r: CollectorRegistry) -> None:
        """Crashed handlers, skipped offsets, changelog losses and RocksDB memory."""
        self.agent_crashes = Counter(
            "feedback_agent_crashes",
            "Records that made a stream handler raise, by handler (ingest, rekeyed, deliver "
            "for the outbox, deliver-retry for delivery's retry topic; each goes on with the "
            "next record); the record stays unacknowledged. Three within a minute make "
            "/healthz fail.",
            ["agent"],
            registry=r,
        )
        for agent in ("ingest", "rekeyed", "deliver", "deliver-retry"):
            self.agent_crashes.labels(agent=agent)

        self.offsets_skipped = Counter(
            "feedback_consumer_offsets_skipped",
            "Offsets of a stream partition that Faust will commit without an agent having "
            "acknowledged them (a gap in the fetched offsets), by topic. Normal only on "
            "topics with transaction markers or compaction; anything else means records "
            "were skipped (worker.faust_compat.rebalance).",
            ["topic"],
            registry=r,
        )

        self.changelog_behind_store = Counter(
            "feedback_changelog_behind_store",
            "Recoveries that found a changelog partition ending before the offset its local "
            "store had applied: the broker lost changelog records; the worker kept its local "
            "state (worker.faust_compat.recovery).",
            registry=r,
        )

        self.rocksdb_memory = Gauge(
            "feedback_rocksdb_memory_bytes",
            "Memory held by the tables' RocksDB databases, summed over those open: memtables "
            "(writes not yet flushed; at most 2 x ROCKSDB_WRITE_BUFFER_BYTES each), "
            "block_cache (at most ROCKSDB_BLOCK_CACHE_BYTES each), table_readers (index and "
            "filter blocks) (worker.faust_compat.stores).",
            ["kind"],
            registry=r,
        )

    def _window_series(self, r: CollectorRegistry) -> None:
        """Late events, stream time, open windows and the decisions they made."""
        self.events_late = Counter(
            "feedback_events_late",
            "Valid events that arrived for a window that had already closed (to the late topic).",
            registry=r,
        )
        self.stream_time_overruns = Counter(
            "feedback_stream_time_overruns",
            "Forwarded events that found their partition's stream time past what it had seen "
            "when their source read them; 0 unless the workers' clocks disagree "
            "(worker.windows.watermarks).",
            registry=r,
        )
        self.windows_open = Gauge(
            "feedback_windows_open",
            "Windows open on the partitions this worker owns, by rule.",
            ["rule"],
            registry=r,
        )
        self.decisions = Counter(
            "feedback_decisions",
            "Decisions written to the outbox, by rule and rating (true/false/none).",
            ["rule", "rating"],
            registry=r,
        )
        self.decision_delay = Histogram(
            "feedback_decision_delay_seconds",
            "Wall-clock time from a window's end (event time) to its decision being written; "
            "includes the grace period. Replayed history shows up as very large values.",
            ["rule"],
            buckets=(0.5, 1, 2, 5, 7.5, 10, 15, 30, 60, 120, 300, 900, 3600),
            registry=r,
        )

    def _delivery_call_series(self, r: CollectorRegistry) -> None:
        """The calls to Helicone and what they delivered."""
        self.delivery_attempts = Counter(
            "feedback_delivery_attempts",
            "HTTP calls to Helicone (or dry-run stand-ins), by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.delivery_duration = Histogram(
            "feedback_delivery_duration_seconds",
            "Duration of one HTTP call to Helicone, by endpoint.",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.delivery_delivered = Counter(
            "feedback_delivery_delivered",
            "Decisions carried by a state Helicone accepted (or that was logged, in dry run), "
            "by target.",
            ["target"],
            registry=r,
        )
        self.delivery_duplicates = Counter(
            "feedback_delivery_duplicates",
            "Outbox records that changed nothing because their decision was already merged, "
            "by whether its state was delivered or still waiting.",
            ["state"],
            registry=r,
        )
        self.delivery_unchanged = Counter(
            "feedback_delivery_unchanged",
            "Decisions that changed nothing Helicone would store (an implicit rating under an "
            "explicit one, no new score), so they needed no call.",
            registry=r,
        )

    def _delivery_queue_series(self, r: CollectorRegistry) -> None:
        """What waits for delivery, how fast it can drain, and throttling."""
        self.delivery_retry_queue = Gauge(
            "feedback_delivery_retry_queue",
            "Requests and sessions waiting for a retry after a failed call, on this worker's "
            "partitions.",
            registry=r,
        )
        self.delivery_backlog = Gauge(
            "feedback_delivery_backlog",
            "Requests and sessions whose latest feedback state is not delivered yet (waiting "
            "or in flight), on this worker's partitions.",
            registry=r,
        )
        self.delivery_backlog_age = Gauge(
            "feedback_delivery_backlog_oldest_seconds",
            "Age of the oldest change not delivered yet, in seconds (0 when none waits).",
            registry=r,
        )
        self.delivery_drain = Gauge(
            "feedback_delivery_drain_seconds",
            "Seconds to deliver the backlog at the current rate.",
            registry=r,
        )
        self.delivery_rate = Gauge(
            "feedback_delivery_rate_per_second",
            "Calls per second delivery allows itself now: at most DELIVERY_RATE_PER_S, lower "
            "after 429s or when RateLimit-* headers ask for it.",
            registry=r,
        )
        self.delivery_throttled = Counter(
            "feedback_delivery_throttled",
            "Calls Helicone answered 429 (rate limited).",
            registry=r,
        )

    def _delivery_outcome_series(self, r: CollectorRegistry) -> None:
        """Read-back checks, dead letters, the breaker, the auth pause and the delay."""
        self.delivery_verified = Counter(
            "feedback_delivery_verified",
            "Delivered request states read back from Helicone (DELIVERY_VERIFY_SAMPLE), by "
            "what it stored: stored, missing, different, or error (the read failed).",
            ["result"],
            registry=r,
        )
        self.delivery_dlq = Counter(
            "feedback_delivery_dlq",
            "Decisions written to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.delivery_breaker_state = Gauge(
            "feedback_delivery_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open (probing), 2 open (no calls).",
            registry=r,
        )
        self.delivery_breaker_opened = Counter(
            "feedback_delivery_breaker_opened",
            "Times the circuit breaker opened.",
            registry=r,
        )
        self.delivery_auth_paused = Gauge(
            "feedback_delivery_auth_paused",
            "1 while delivery is paused because Helicone rejected the API key (401/403).",
            registry=r,
        )
        self.delivery_delay = Histogram(
            "feedback_delivery_delay_seconds",
            "Wall-clock time from a decision's decided_at to its last call succeeding.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400),
            registry=r,
        )

    def _delivery_zeros(self) -> None:
        """Every closed label set of the delivery series at 0, so dashboards see zeros."""
        for endpoint in ENDPOINTS:
            self.delivery_duration.labels(endpoint=endpoint)
            for outcome in DeliveryOutcome:
                self.delivery_attempts.labels(endpoint=endpoint, outcome=outcome.value)
        for result in ("stored", "missing", "different", "error"):
            self.delivery_verified.labels(result=result)
        for reason in DEAD_LETTER_REASONS:
            self.delivery_dlq.labels(reason=reason)
        for target in ("request", "session"):
            self.delivery_delivered.labels(target=target)
        for state in ("delivered", "pending"):
            self.delivery_duplicates.labels(state=state)

    def _consumer_series(self, r: CollectorRegistry) -> None:
        """Consumer lag per topic partition (partitions are a small closed set; no ids)."""
        self.consumer_lag_records = Gauge(
            "feedback_consumer_lag_records",
            "Records between the last one processed and the partition's high watermark "
            "(from fetch responses, not ListOffsets), per partition this worker owns.",
            ["topic", "partition"],
            registry=r,
        )
        self.consumer_lag_seconds = Gauge(
            "feedback_consumer_lag_seconds",
            "While behind: age of the last record processed (wall clock - record time); "
            "0 when caught up. Per partition this worker owns.",
            ["topic", "partition"],
            registry=r,
        )
        self._lag_labels: set[tuple[str, int]] = set()

    def _calibration_series(self, r: CollectorRegistry) -> None:
        """``feedback_rule_agreement_total``, every implicit request rule's series at 0."""
        self.rule_agreement = Counter(
            "feedback_rule_agreement",
            "Requests where an implicit rule's rating (posted, or kept as a shadow under the "
            "explicit one) met the user's explicit rating, by rule and both ratings; counted "
            "once per request and rule, when delivery merges the second of the two.",
            ["rule", "implicit", "explicit"],
            registry=r,
        )
        for rule, spec in RULES.items():
            if spec.target == "request" and not spec.overrides_ratings and rule != "scores":
                for implicit in ("true", "false"):
                    for explicit in ("true", "false"):
                        self.rule_agreement.labels(
                            rule=rule, implicit=implicit, explicit=explicit
                        )

    def _evidence_series(self, r: CollectorRegistry) -> None:
        """The evidence lane's series (HELICONE_EVIDENCE_PROPERTIES); its calls are counted
        in ``feedback_delivery_attempts_total{endpoint="request_property"}``."""
        self.property_dropped = Counter(
            "feedback_property_dropped",
            "Requests whose evidence properties were given up, by reason: not_found (Helicone "
            "had not logged the request within HELICONE_PROPERTY_NOT_FOUND_S), rejected (4xx), "
            "max_attempts / max_age (other failures), overflow (too many waiting).",
            ["reason"],
            registry=r,
        )
        self.property_not_found = Counter(
            "feedback_property_not_found",
            "Property calls Helicone answered 500 'Request not found' (tried again later).",
            registry=r,
        )
        self.property_superseded = Counter(
            "feedback_property_superseded",
            "Evidence properties replaced by a newer decision before they were sent.",
            registry=r,
        )
        self.property_backlog = Gauge(
            "feedback_property_backlog",
            "Requests whose evidence properties wait to be sent, on this worker.",
            registry=r,
        )
        for reason in DROP_REASONS:
            self.property_dropped.labels(reason=reason)

    def observe_property_dropped(self, reason: DropReason) -> None:
        self.property_dropped.labels(reason=reason).inc()

    def set_consumer_lag(self, lags: dict[tuple[str, int], tuple[int, float]]) -> None:
        """Lag per owned (topic, partition): records behind the high watermark, and the age
        of the last record processed while behind. Partitions no longer owned disappear, so
        sums over replicas count each partition once."""
        for gauge in (self.consumer_lag_records, self.consumer_lag_seconds):
            for labels in list(self._lag_labels - set(lags)):
                gauge.remove(labels[0], str(labels[1]))
        for (topic, partition), (records, seconds) in lags.items():
            self.consumer_lag_records.labels(topic=topic, partition=str(partition)).set(records)
            self.consumer_lag_seconds.labels(topic=topic, partition=str(partition)).set(seconds)
        self._lag_labels = set(lags)

    def agent_crashed(self, agent: str) -> None:
        """Handler ``agent`` raised on a record (:class:`worker.health.Liveness` calls this)."""
        self.agent_crashes.labels(agent=agent).inc()

    def observe_decision(self, decision: Decision, *, now_ms: int) -> None:
        rating = "none" if decision.rating is None else str(decision.rating).lower()
        self.decisions.labels(rule=decision.rule, rating=rating).inc()
        end_ms = decision.window_end.timestamp() * 1000
        self.decision_delay.labels(rule=decision.rule).observe(max(0.0, (now_ms - end_ms) / 1000))

    def observe_agreement(self, pair: RatingPair) -> None:
        """An implicit rating met an explicit one (:func:`worker.delivery_state.new_pairs`)."""
        self.rule_agreement.labels(
            rule=pair.rule,
            implicit=str(pair.implicit).lower(),
            explicit=str(pair.explicit).lower(),
        ).inc()

    def set_rocksdb_memory(self, per_kind: dict[str, int]) -> None:
        for kind, size in per_kind.items():
            self.rocksdb_memory.labels(kind=kind).set(size)

    def set_windows_open(self, per_rule: dict[str, int]) -> None:
        for rule, count in per_rule.items():
            self.windows_open.labels(rule=rule).set(count)

    # ---- delivery observers

    def observe_attempt(self, record: DeliveryAttempted) -> None:
        """One call to Helicone (the client's observer)."""
        self.delivery_attempts.labels(
            endpoint=record.endpoint, outcome=record.outcome.value
        ).inc()
        if record.outcome is not DeliveryOutcome.DRY_RUN:
            self.delivery_duration.labels(endpoint=record.endpoint).observe(record.duration_s)

    def observe_breaker(self, change: BreakerStateChanged) -> None:
        self.delivery_breaker_state.set(int(change.current))
        if change.current is BreakerState.OPEN:
            self.delivery_breaker_opened.inc()

    def observe_auth_pause(self, change: AuthPauseChanged) -> None:
        self.delivery_auth_paused.set(1 if change.paused else 0)

    def observe_delivered(self, target: str, *, delay_s: float | None) -> None:
        self.delivery_delivered.labels(target=target).inc()
        if delay_s is not None:
            self.delivery_delay.observe(max(0.0, delay_s))

    def observe_dead_letter(self, reason: DeadLetterReason) -> None:
        self.delivery_dlq.labels(reason=reason).inc()

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format, for ``/metrics``."""
        return generate_latest(self.registry)


#: Statuses the collector answers on /v1/events (DESIGN 11), pre-created as label values.
_COLLECTOR_STATUSES = ("200", "202", "204", "400", "401", "403", "408", "413", "429", "503")
_COLLECTOR_ERRORS = (
    "not_json",
    "not_a_batch",
    "missing_write_key",
    "unknown_write_key",
    "origin_not_allowed",
    "body_timeout",
    "body_too_large",
    "too_many_events",
    "rate_limited",
    "broker_unavailable",
    "missing_audience",
    # Not a JSON error code: aiohttp itself answered 400 to a request it could not parse
    # (a request line or header too long, too many headers); see worker/collector/server.py.
    "malformed_request",
)


class PromptMetrics:
    """Feedback prompts (worker.prompts): candidates seen, prompts sent, and why the others
    were not; labels are the closed sets of reasons and suppressions."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.candidates = Counter(
            "feedback_prompt_candidates",
            "Requests whose early signals said dissatisfied (one candidate per request), "
            "by reason.",
            ["reason"],
            registry=r,
        )
        self.sent = Counter(
            "feedback_prompts",
            "Prompts written to the feedback-prompts topic (first sends), by reason.",
            ["reason"],
            registry=r,
        )
        self.suppressed = Counter(
            "feedback_prompts_suppressed",
            "Candidates that did not become prompts: cooldown (the audience was asked within "
            "PROMPT_COOLDOWN_S), stale (expired before decided), no_audience (no user or "
            "session id), not_queued (the producer refused the candidate).",
            ["why"],
            registry=r,
        )
        self.invalid = Counter(
            "feedback_prompt_candidates_invalid",
            "Records on the internal candidates topic that did not parse (skipped).",
            registry=r,
        )
        for reason in PROMPT_REASONS:
            self.candidates.labels(reason=reason)
            self.sent.labels(reason=reason)
        for why in SUPPRESSIONS:
            self.suppressed.labels(why=why)


class CollectorMetrics:
    """The HTTP collector's series (``feedback-worker collect``), on its own registry.

    Labels are closed sets only (statuses, error codes, invalid reasons): no key, address,
    origin or id ever becomes a label.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.requests = Counter(
            "feedback_collector_requests",
            "Requests to /v1/events (POST and OPTIONS), by HTTP status.",
            ["status"],
            registry=r,
        )
        self.refused = Counter(
            "feedback_collector_refused",
            "Requests to /v1/events refused (nothing of the batch written), by error code; "
            "malformed_request: an HTTP request aiohttp could not parse, on any path.",
            ["error"],
            registry=r,
        )
        self.events = Counter(
            "feedback_collector_events",
            "Events of acknowledged batches: outcome accepted (to the input topic) or invalid "
            "(to the invalid topic), with the invalid reason (none for accepted).",
            ["outcome", "reason"],
            registry=r,
        )
        self.duration = Histogram(
            "feedback_collector_request_duration_seconds",
            "Time to answer a POST to /v1/events, including the broker's acknowledgement.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.prompts_served = Counter(
            "feedback_collector_prompts_served",
            "Feedback prompts handed to browsers (in a batch answer or GET /v1/prompts); a "
            "prompt is offered until it expires, so one prompt may count more than once.",
            registry=r,
        )
        self.prompts_skipped = Counter(
            "feedback_collector_prompt_records_skipped",
            "Records of the prompts topic not kept: unparsable, without audience or expired.",
            registry=r,
        )
        self.producer_ready = Gauge(
            "feedback_collector_producer_ready",
            "1 while the collector's Kafka producer is connected and started.",
            registry=r,
        )
        for status in _COLLECTOR_STATUSES:
            self.requests.labels(status=status)
        for error in _COLLECTOR_ERRORS:
            self.refused.labels(error=error)
        self.events.labels(outcome="accepted", reason="none")
        for reason in _INVALID_REASONS:
            self.events.labels(outcome="invalid", reason=reason)

    def observe_request(self, status: int, *, error: str | None, duration_s: float | None) -> None:
        self.requests.labels(status=str(status)).inc()
        if error is not None:
            self.refused.labels(error=error).inc()
        if duration_s is not None:
            self.duration.observe(duration_s)

    def observe_events(self, *, accepted: int, invalid_reasons: Iterable[str]) -> None:
        if accepted:
            self.events.labels(outcome="accepted", reason="none").inc(accepted)
        for reason in invalid_reasons:
            self.events.labels(outcome="invalid", reason=reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
