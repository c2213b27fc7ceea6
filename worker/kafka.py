"""Kafka plumbing shared by the worker and the command line: client settings, topics, partitions.

* :func:`client_kwargs` turns the settings into aiokafka keyword arguments (TLS, SASL), so the
  worker, ``publish`` and ``dlq`` connect the same way.
* :func:`ensure_topics` creates the topics the worker needs with ``TOPIC_PARTITIONS`` partitions
  before Faust starts, and refuses to start when an existing input topic has another count:
  the window state is partitioned like the input, so the two must match (DESIGN 2).
* :func:`input_backlog` counts a partition's records left to process, from offsets alone,
  so idle close and the watermarks never take a backlog for a live partition.

Kafka's default partitioner lives in :mod:`worker.partitioner`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.errors import TopicMismatchError

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = [
    "DELIVERY_STATE_TABLE",
    "DELIVERY_TABLES",
    "EVIDENCE_TABLE",
    "PROMPT_COOLDOWN_TABLE",
    "TopicPlan",
    "changelog_topic_name",
    "client_kwargs",
    "delivery_retry_topic_name",
    "ensure_topics",
    "input_backlog",
    "prompt_candidates_topic_name",
    "rekey_topic_name",
    "topic_plan",
]

log = logging.getLogger(__name__)


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """aiokafka connection arguments (bootstrap, TLS, SASL) from the settings."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        assert settings.kafka_sasl_password is not None  # checked by Settings
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return kwargs


def ssl_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    return context


def input_backlog(
    *,
    highwater: int | None,
    processed: int | None,
    handed_out: int | None,
    position: int | None,
) -> int | None:
    """How many records of a partition are left to process (None while unknown).

    ``highwater``: the partition's end, from the last fetch answer (None before one).
    ``processed``: the offset of the last record the agent processed since the partition was
    assigned (None before the first).  ``handed_out``: Faust's read offset, which its seek
    sets to the committed offset (None for "nothing committed") and which then follows each
    record it hands to the stream.  ``position``: the consumer's next fetch offset.

    Only what was *processed* counts: records fetched and handed out wait in the stream's
    buffer, maybe for seconds while the agent works through other partitions' backlogs
    after a restart.  The consumer's fetch position does count them, so a check on it let
    idle close fire on windows whose signals were still waiting there.
    """
    if highwater is None or highwater < 0:
        return None
    if processed is not None:
        return max(0, highwater - processed - 1)
    if handed_out is None:
        # Nothing committed, and nothing handed out since: the fetch position tells what is
        # left (a fetch from a retention-trimmed start can return nothing).
        return None if position is None else max(0, highwater - position)
    # Before the first record is handed out this is the committed offset, the next to read;
    # after, it is the offset of a record handed out and not yet processed.
    return max(0, highwater - handed_out)


def rekey_topic_name(settings: Settings) -> str:
    """Internal topic for events that arrived on the wrong partition (and for idle ticks)."""
    return f"{settings.worker_group_id}-rekeyed"


@dataclass(frozen=True, slots=True)
class TopicPlan:
    name: str
    partitions: int
    #: Must exist with exactly ``partitions`` partitions (state is co-partitioned with it).
    copartitioned: bool
    config: dict[str, str]


def topic_plan(settings: Settings) -> list[TopicPlan]:
    """Every topic the worker reads or writes, with the shape it needs."""
    n = settings.topic_partitions
    return [
        TopicPlan(settings.topic_ui_events, n, True, {}),
        TopicPlan(rekey_topic_name(settings), n, True, {}),
        TopicPlan(settings.topic_invalid, n, False, {}),
        TopicPlan(settings.topic_late, n, False, {}),
        # Delivery's tables are fed by the outbox and its retry topic, so both are co-partitioned
        # with the tables' changelogs (each decision's records and state share one partition).
        TopicPlan(settings.topic_outbox, n, True, {}),
        TopicPlan(settings.topic_dlq, n, False, {}),
        TopicPlan(delivery_retry_topic_name(settings), n, True, {}),
        *(
            TopicPlan(changelog_topic_name(settings, table), n, True, _COMPACTED)
            for table in (WINDOWS_TABLE, *DELIVERY_TABLES)
        ),
        *_prompt_topics(settings),
        *(
            [TopicPlan(changelog_topic_name(settings, EVIDENCE_TABLE), n, True, _COMPACTED)]
            if settings.helicone_evidence_properties else []
        ),
    ]


def _prompt_topics(settings: Settings) -> list[TopicPlan]:
    """Feedback prompts (worker.agents.prompts): the candidates, re-keyed by audience, are
    co-partitioned with the cooldown table's changelog; the prompts topic is an output."""
    if not settings.prompts_enabled:
        return []
    n = settings.topic_partitions
    return [
        TopicPlan(prompt_candidates_topic_name(settings), n, True, {}),
        TopicPlan(changelog_topic_name(settings, PROMPT_COOLDOWN_TABLE), n, True, _COMPACTED),
        TopicPlan(settings.topic_prompts, n, False, {}),
    ]


#: The window engine's table (worker/agents/windows.py).
WINDOWS_TABLE = "windows"

# ---- delivery's internal topics (worker/agents/deliver.py)

#: Delivery's tables: the retry state of waiting decisions, and the decision ids that
#: are settled (delivered or dead-lettered), remembered for DELIVERY_DEDUPE_TTL_S.
#: Each target's whole feedback state (worker.delivery_state), co-partitioned with the outbox.
DELIVERY_STATE_TABLE = "delivery-state"
DELIVERY_TABLES = (DELIVERY_STATE_TABLE,)
#: Evidence properties waiting to be set (worker.evidence_store), with
#: HELICONE_EVIDENCE_PROPERTIES only; co-partitioned with the outbox like delivery-state.
EVIDENCE_TABLE = "evidence-properties"

_COMPACTED = {"cleanup.policy": "compact"}


def delivery_retry_topic_name(settings: Settings) -> str:
    """Internal topic for due retries, forwarded decisions and dedupe sweeps."""
    return f"{settings.worker_group_id}-delivery-retry"


#: The prompts cooldown table: audience key -> the last prompt sent to it.
PROMPT_COOLDOWN_TABLE = "prompt-cooldown"


def prompt_candidates_topic_name(settings: Settings) -> str:
    """Internal topic of prompt candidates, keyed by audience (user, else session)."""
    return f"{settings.worker_group_id}-prompt-candidates"


def changelog_topic_name(settings: Settings, table: str) -> str:
    """The changelog Faust keeps for ``table`` (``<app id>-<table>-changelog``)."""
    return f"{settings.worker_group_id}-{table}-changelog"


async def ensure_topics(
    settings: Settings,
    *,
    request_timeout_ms: int = 30_000,
    only: Collection[str] | None = None,
) -> list[str]:
    """Create the missing topics of :func:`topic_plan`; return the names created.

    ``only`` limits the plan to those topic names (the collector ensures just the two it
    writes, and leaves the worker's internal topics to the worker).  Raises
    :class:`TopicMismatchError` when a co-partitioned topic exists with another partition
    count, naming the topic, both counts and what to do.
    """
    admin = AIOKafkaAdminClient(request_timeout_ms=request_timeout_ms, **client_kwargs(settings))
    await admin.start()
    try:
        plan = [t for t in topic_plan(settings) if only is None or t.name in only]
        existing = await _partition_counts(admin, [t.name for t in plan])
        for topic in plan:
            have = existing.get(topic.name)
            if topic.copartitioned and have is not None and have != topic.partitions:
                raise TopicMismatchError(
                    f"topic {topic.name!r} has {have} partitions but TOPIC_PARTITIONS is "
                    f"{topic.partitions}: the worker's state is partitioned like its input, so "
                    f"set TOPIC_PARTITIONS={have} (before the first start of this group) or "
                    f"recreate the topic with {topic.partitions} partitions"
                )
        missing = [t for t in plan if t.name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name=t.name,
                        num_partitions=t.partitions,
                        replication_factor=settings.topic_replication_factor,
                        topic_configs=t.config,
                    )
                    for t in missing
                ]
            )
            log.info("created topics %s", ", ".join(t.name for t in missing))
        return [t.name for t in missing]
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    listed = set(await admin.list_topics())
    wanted = [n for n in names if n in listed]
    if not wanted:
        return {}
    counts: dict[str, int] = {}
    for description in await admin.describe_topics(wanted):
        if description.get("error_code", 0) == 0:
            counts[description["topic"]] = len(description["partitions"])
    return counts
