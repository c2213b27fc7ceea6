"""Settings (DESIGN 7, contract): read once from the environment (or ``.env``), validated, frozen.

:func:`load_settings` is called in exactly one place, the command line, and the typed object is
passed down; nothing else in the package reads ``os.environ``.  A bad value stops start-up with
one line per problem naming the variable, what is wrong and what is expected
(:class:`~worker.errors.ConfigError`).  Secrets are :class:`~pydantic.SecretStr`, so neither a
repr, a log line nor an error message can show them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import ConfigError

__all__ = ["Settings", "load_settings"]

PositiveSeconds = Annotated[float, Field(gt=0)]
#: What a browser sends as ``Origin``: scheme, host and an optional port, nothing else.
_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")
TopicName = Annotated[str, Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")]

class Settings(BaseSettings):
    """Every knob of the worker; the field name upper-cased is the environment variable."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
        hide_input_in_errors=True,
        # The docstring under each field is its description: the configuration reference in
        # docs/ is generated from it (make docs-reference) and errors quote it as "expected".
        use_attribute_docstrings=True,
    )

    # ---- Kafka
    kafka_bootstrap_servers: str = Field(
        default="localhost:9092", description="Comma-separated host:port list."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        "PLAINTEXT"
    )
    """How the worker talks to the brokers."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    """SASL mechanism, with the SASL protocols."""
    kafka_sasl_username: str | None = None
    """SASL user name; required with the SASL protocols."""
    kafka_sasl_password: SecretStr | None = None
    """SASL password; required with the SASL protocols; a secret, never shown."""
    kafka_ssl_cafile: str | None = None
    """TLS: the CA file that signed the brokers' certificates."""
    kafka_ssl_certfile: str | None = None
    """TLS: the client certificate file."""
    kafka_ssl_keyfile: str | None = None
    """TLS: the client key file."""
    kafka_producer_batch_bytes: int = Field(
        default=16_384,
        ge=1,
        description="Producer batch size; 1 sends one record per batch (see DESIGN 2 on Tansu).",
    )
    kafka_producer_linger_ms: int = Field(
        default=10,
        ge=0,
        le=1_000,
        description="How long the producer waits to fill a batch. Every event writes something "
        "(state, decisions, late events), so 0 sends a produce request every few events and "
        "costs about a fifth of the worker's CPU.",
    )
    kafka_fetch_max_wait_ms: int = Field(
        default=100,
        ge=0,
        le=60_000,
        description="How long a fetch may wait at the broker for new records (Faust fixes it at "
        "1,500 ms; brokers that do not answer early then hold new events that long).",
    )
    kafka_rebalance_timeout_s: PositiveSeconds = 60.0
    """Consumer group rebalance timeout, in seconds."""
    kafka_session_timeout_s: PositiveSeconds = 60.0
    """Consumer group session timeout, in seconds."""
    worker_group_id: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        default="feedback-worker",
        description="Consumer group, state name (and Faust app id); every replica of one "
        "deployment shares it.",
    )
    topic_partitions: int = Field(default=8, ge=1, le=10_000)
    """Partitions of the topics the worker creates; the window state is partitioned like the
    input, so it refuses to start if ui-events or the outbox exists with another count."""
    topic_replication_factor: int = Field(default=1, ge=1, le=10)
    """Replication factor of the topics the worker creates."""

    # ---- topics
    topic_ui_events: TopicName = "ui-events"
    """The input: one JSON event per UI interaction, keyed by request id."""
    topic_invalid: TopicName = "ui-events-invalid"
    """Rejected records, with the reason."""
    topic_late: TopicName = "ui-events-late"
    """Events for windows that already closed."""
    topic_outbox: TopicName = "feedback-outbox"
    """Decisions."""
    topic_dlq: TopicName = "feedback-dlq"
    """Decisions Helicone refused for good."""
    topic_prompts: TopicName = "feedback-prompts"
    """Feedback prompts: "ask this user for a thumbs on this answer now"."""

    # ---- ingest
    max_event_bytes: int = Field(default=65_536, ge=256, le=16 * 1024 * 1024)
    """Larger records are rejected as too_large."""
    clock_skew_tolerance_s: float = Field(default=2.0, ge=0)
    """How far occurred_at may pass the record time (events without sent_at), in seconds."""
    event_max_future_s: float = Field(default=300.0, gt=0)
    """Events further in the future than this are timestamp_out_of_range."""
    event_max_age_s: float = Field(default=7 * 86_400.0, gt=0)
    """Events older than this (seconds) are timestamp_out_of_range."""
    dedupe_cache_size: int = Field(default=100_000, ge=0)
    """Recent event_ids remembered by ingest, to process duplicates once."""

    # ---- windows and rules
    engagement_window_s: PositiveSeconds = 60.0
    """Length of the engagement window (opened by response_shown)."""
    code_window_s: PositiveSeconds = 30.0
    """Length of the code suggestion window (opened by suggestion_shown)."""
    clicks_window_s: PositiveSeconds = 300.0
    """Length of the search clicks window (opened by results_shown)."""
    ticket_window_s: PositiveSeconds = 86_400.0
    """Length of the ticket resolution window (opened by ticket_opened)."""
    window_grace_s: float = Field(default=5.0, ge=0)
    """How long a window waits for late, out-of-order events (stream time)."""
    idle_close_s: PositiveSeconds = 30.0
    """After this much silence on a partition, windows close by the wall clock."""
    max_signals_per_window: int = Field(default=200, ge=1, le=100_000)
    """Signals kept per window (the earliest; the rest are counted in the evidence)."""
    window_cache_keys: int = Field(default=10_000, ge=1, le=10_000_000)
    """Decoded window states kept in memory per partition (LRU; RocksDB has them all).  Each
    costs about 1 KiB of Python objects; a request's events come in bursts, so a small cache
    catches them, and 1,000,000 open windows do not all live in memory."""
    engagement_long_read_s: float = Field(default=30.0, ge=0)
    """Engagement: time spent above this is positive (long_read)."""
    engagement_short_read_s: float = Field(default=5.0, ge=0)
    """Engagement: time spent below this is negative (short_read)."""
    engagement_quick_exit_s: float = Field(default=10.0, ge=0)
    """Engagement: page_left within this long after response_shown is negative (quick_exit)."""
    correction_phrases: list[str] = Field(
        default_factory=lambda: ["actually", "that's wrong", "that is wrong", "not what I asked"]
    )
    """JSON list; a follow-up message containing one ends the engagement window with false."""
    code_retained_min_pct: int | None = Field(default=None, ge=0, le=100)
    """Code retention: a suggestion_retained below this retained_pct rates the request false
    (accepted, then mostly deleted).  Unset (the default): retention is only a score."""
    outbox_abstentions: bool = True
    """A window whose rule decides nothing (an untouched code suggestion, an engagement tie
    with no score) writes an abstention to the outbox (rating null, no scores), which
    delivery skips and ``calibrate`` counts as "decided nothing".  Off: such a window writes
    nothing, for a smaller outbox when nobody calibrates."""

    # ---- feedback prompts (worker.prompts)
    prompts_enabled: bool = False
    """Write a prompt record when early signals say dissatisfied (correction, regenerate,
    human requested, quick exit), at most one per user (else session) per cooldown.  Off by
    default: it adds a topic, a table and an agent, and is worth it only to an application
    that shows the prompts (the collector and the SDK's ``onPrompt``)."""
    prompt_cooldown_s: PositiveSeconds = 86_400.0
    """At most one prompt per user (else session) per this many seconds of event time; a day,
    so a daily user is asked at most once a day however many answers disappoint them."""
    prompt_ttl_s: PositiveSeconds = 600.0
    """A prompt expires this long after its signal: a worker catching up on a backlog drops
    older ones (stale), and the collector and SDK stop offering it."""

    # ---- Helicone and delivery
    helicone_api_key: SecretStr | None = None
    """A Helicone key with write access (sk-helicone-...); required unless FEEDBACK_DRY_RUN=true;
    never logged."""
    helicone_base_url: AnyHttpUrl = AnyHttpUrl("https://api.helicone.ai")
    """Helicone's API; https://eu.api.helicone.ai for the EU region."""
    feedback_dry_run: bool = False
    """Log what would be posted, post nothing (no API key needed)."""
    delivery_concurrency: int = Field(default=32, ge=1, le=1_024)
    """Calls to Helicone in flight at most (one per request)."""
    delivery_rate_per_s: float = Field(default=10.0, gt=0)
    """The most calls per second to Helicone: at or a little under your tier's limit."""
    delivery_max_attempts: int = Field(default=12, ge=1, le=1_000)
    """Attempts of one state before its decisions go to the dead-letter topic."""
    delivery_max_age_s: PositiveSeconds = 86_400.0
    """Seconds of retrying before the decisions go to the dead-letter topic."""
    delivery_timeout_s: PositiveSeconds = 10.0
    """Timeout of one call to Helicone, in seconds."""
    delivery_backoff_base_s: PositiveSeconds = Field(
        default=1.0, description="First retry delay in seconds; doubles per attempt (+-20 %)."
    )
    delivery_backoff_cap_s: PositiveSeconds = Field(
        default=600.0, description="Longest retry delay in seconds; at least the base."
    )
    delivery_breaker_cool_down_s: PositiveSeconds = Field(
        default=30.0, description="Seconds the circuit breaker stays open before one probe."
    )
    delivery_auth_probe_interval_s: PositiveSeconds = Field(
        default=30.0, description="Seconds between probes while a 401/403 pauses delivery."
    )
    delivery_dedupe_ttl_s: PositiveSeconds = Field(
        default=7 * 86_400.0,
        description="Seconds a delivered request's state is kept, so later decisions merge "
        "into it and duplicates cost no call.",
    )
    delivery_verify_sample: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of delivered requests read back from Helicone (GET /v1/request/{id}) "
        "after DELIVERY_VERIFY_DELAY_S, to count what it really stored.",
    )
    delivery_verify_delay_s: PositiveSeconds = Field(
        default=660.0,
        description="Seconds after a delivery before it is read back: Helicone ingests scores "
        "about 10 minutes after the call.",
    )
    delivery_verify_reads_per_5min: int = Field(
        default=600, ge=1, le=100_000,
        description="Read-back budget; Helicone allows 600 reads per 5 minutes.",
    )
    helicone_rating_via: Literal["score", "feedback"] = Field(
        default="score",
        description="score: one /score call per change carrying the rating as "
        "helicone-score-feedback and every score (DESIGN 5). feedback: /feedback then /score, "
        "for self-hosted Helicone versions that keep feedback apart; on Helicone's scores "
        "queue the second call can make it drop the rating.",
    )
    helicone_evidence_properties: bool = Field(
        default=False,
        description="Also set the Helicone properties Feedback-Rule and Feedback-Signals on "
        "each rated request (PUT /v1/request/{id}/property), to filter and segment by "
        "evidence in Helicone's dashboard. Two calls per rating, sent only when no rating "
        "waits: they never delay ratings.",
    )
    helicone_property_not_found_s: PositiveSeconds = Field(
        default=300.0,
        description="Seconds a property call answered 500 'Request not found' (the request "
        "is not logged yet) is tried again, at 1/10, 1/4 and 5/8 of it (Helicone's own 30, 75 "
        "and 187 s waits by default); then it is counted and dropped, never dead-lettered.",
    )

    # ---- runtime
    worker_web_port: int = Field(default=6066, ge=0, le=65_535)
    """Port of /metrics, /healthz and /readyz."""
    worker_web_host: str = "0.0.0.0"
    """Address that /metrics, /healthz and /readyz listen on."""
    state_dir: str = "./state"
    """RocksDB state (mount a volume here)."""
    rocksdb_block_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    """RocksDB block cache of each table partition (three tables, one database per partition
    owned)."""
    rocksdb_write_buffer_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=64 * 1024,
        description="Memtable size of each table partition's RocksDB (two per database): "
        "writes stay in memory until one is full, so a worker owning 8 partitions can hold "
        "up to 24 x 8 MiB there; feedback_rocksdb_memory_bytes shows it.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe level that is logged."""
    log_format: Literal["text", "json"] = "text"
    """text, or json for one JSON object per line."""

    # ---- HTTP collector (DESIGN 11): `feedback-worker collect`
    collector_host: str = "0.0.0.0"
    """Address where collect listens."""
    collector_port: int = Field(default=8088, ge=0, le=65_535)
    """Port of collect (/v1/events, /metrics, /healthz, /readyz); 0 picks a free one."""
    collector_write_keys: SecretStr | None = Field(
        default=None,
        description="Comma-separated write keys; required by `collect`, never logged. A "
        "client sends one as ?key= or Authorization: Bearer; they are publishable (they only "
        "allow writing events).",
    )
    collector_allowed_origins: str = Field(
        default="",
        description="Comma-separated origins such as https://app.example.com whose pages may "
        "post from a browser, or * for any (only when set so); requests without Origin "
        "(backends) are not affected",
    )
    collector_max_body_bytes: int = Field(default=512 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Larger bodies are refused with 413 while reading."""
    collector_max_events: int = Field(default=500, ge=1, le=100_000)
    """More events in one batch is 413."""
    collector_rate_per_s: float = Field(
        default=20.0,
        gt=0,
        description="Requests per second per client address (token bucket, bursts of one "
        "second's worth); over it: 429 with Retry-After",
    )
    collector_trust_forwarded_for: bool = Field(
        default=False,
        description="Take the client address from the last X-Forwarded-For entry (behind one "
        "trusted proxy, such as an Ingress, or every client shares the proxy's bucket); false "
        "uses the peer address",
    )
    collector_idempotent_producer: bool = Field(
        default=True,
        description="Idempotent producer (acks=all); false only for brokers without "
        "InitProducerId, such as Tansu (DESIGN 2)",
    )
    collector_send_timeout_s: PositiveSeconds = Field(
        default=10.0,
        description="Longest wait for the broker to acknowledge a batch before answering 503",
    )
    collector_body_timeout_s: PositiveSeconds = Field(
        default=10.0,
        description="Longest time a request's body may take to arrive once its headers have; "
        "slower (a client trickling its body, or sending none, holds a connection) is 408 "
        "body_timeout and the connection is closed",
    )
    collector_idle_timeout_s: PositiveSeconds = Field(
        default=15.0,
        description="How long an idle keep-alive connection is kept open between requests; "
        "behind a proxy that reuses upstream connections, set it above the proxy's idle "
        "timeout (the Kubernetes ConfigMap sets 75 for ingress-nginx's 60)",
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("expected host:port[,host:port...]")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65_536:
                raise ValueError(f"{server!r} is not host:port")
        return ",".join(servers)

    @field_validator("log_level", "kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("correction_phrases")
    @classmethod
    def _phrases(cls, value: list[str]) -> list[str]:
        phrases = [p.strip().lower() for p in value if p.strip()]
        if not phrases:
            raise ValueError("expected at least one non-empty phrase")
        return phrases

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with "
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
            )
        if self.engagement_short_read_s > self.engagement_long_read_s:
            raise ValueError("ENGAGEMENT_SHORT_READ_S must not exceed ENGAGEMENT_LONG_READ_S")
        return self

    @field_validator("collector_allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        origins = [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        for origin in origins:
            if origin != "*" and not _ORIGIN_RE.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port]) or *")
        return ",".join(origins)

    @model_validator(mode="after")
    def _delivery_coherent(self) -> Settings:
        if self.delivery_backoff_cap_s < self.delivery_backoff_base_s:
            raise ValueError("DELIVERY_BACKOFF_CAP_S must not be below DELIVERY_BACKOFF_BASE_S")
        return self

    # ---- derived views

    @property
    def rocksdb_options(self) -> dict[str, int]:
        """RocksDB options for every table (Faust opens one database per table partition:
        three tables x the partitions a worker owns).  Faust's defaults give each database a
        2 GiB block cache and three 64 MiB memtables.  A memtable holds writes in memory until
        it is full and flushed to disk, and at this worker's write rates even a 4 MiB one
        takes many minutes to fill: memory grows until then, up to two memtables per database
        (ROCKSDB_WRITE_BUFFER_BYTES each).  The block cache is ROCKSDB_BLOCK_CACHE_BYTES per
        database.  ``feedback_rocksdb_memory_bytes`` shows what they hold."""
        return {
            "block_cache_size": self.rocksdb_block_cache_bytes,
            "write_buffer_size": self.rocksdb_write_buffer_bytes,
            "max_write_buffer_number": 2,
        }

    @property
    def bootstrap_servers(self) -> list[str]:
        return self.kafka_bootstrap_servers.split(",")

    @property
    def helicone_base(self) -> str:
        return str(self.helicone_base_url).rstrip("/")

    @property
    def collector_origins(self) -> frozenset[str]:
        """The allowed ``Origin`` values; ``*`` in it allows any (only when set so)."""
        return frozenset(o for o in self.collector_allowed_origins.split(",") if o)

    def require_write_keys(self) -> tuple[SecretStr, ...]:
        """The collector's write keys, or a :class:`ConfigError` saying how to provide them."""
        raw = self.collector_write_keys.get_secret_value() if self.collector_write_keys else ""
        keys = tuple(SecretStr(k.strip()) for k in raw.split(",") if k.strip())
        if not keys:
            raise ConfigError(
                ["COLLECTOR_WRITE_KEYS: missing (expected one or more comma-separated keys "
                 "that browsers and backends send with their events)"]
            )
        return keys

    def require_api_key(self) -> SecretStr:
        """The Helicone key, or a :class:`ConfigError` saying how to provide it."""
        if self.helicone_api_key is None or not self.helicone_api_key.get_secret_value():
            raise ConfigError(
                ["HELICONE_API_KEY: missing (expected a key with write access, sk-helicone-...; "
                 "or set FEEDBACK_DRY_RUN=true)"]
            )
        return self.helicone_api_key


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build :class:`Settings` from the environment (and ``overrides``), or raise ConfigError.

    The error carries one line per problem: ``VARIABLE: what is wrong (expected ...)``.  The
    offending *value* is never echoed, since it may be a secret.
    """
    try:
        return Settings(**dict(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in error["loc"] if not isinstance(part, int)]
        name = loc[0].upper() if loc else "settings"
        message = error["msg"].removeprefix("Value error, ")
        expected = _expected(name)
        lines.append(f"{name}: {message}" + (f" (expected {expected})" if expected else ""))
    return lines


def _expected(name: str) -> str | None:
    field = Settings.model_fields.get(name.lower())
    if field is None:
        return None
    if field.description:
        return " ".join(field.description.split()).rstrip(".")
    if field.default is not None and not callable(field.default):
        return f"like the default {field.default!r}"
    return None
