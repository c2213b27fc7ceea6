"""The outbox decisions delivery reads, and the table keys it files states under (pure).

A state's table key is ``b"<partition>/<r|s>:<id>"``: the ``delivery-state`` table is
co-partitioned with the outbox (which is keyed by target id), so the partition in the key is
the one whose events may write it.  A decision is checked here before it is merged (DESIGN 6:
validate locally): one that Helicone could never accept is dead-lettered instead.
"""

from __future__ import annotations

from pydantic import ValidationError

from worker.envelopes import REDRIVE_HEADER, has_header
from worker.events import Decision, is_helicone_request_id

__all__ = [
    "parse_decision",
    "partition_of",
    "problem",
    "redrive_headers",
    "table_key_of",
    "target_bytes",
]


def table_key_of(partition: int, key: str) -> bytes:
    return f"{partition}/{key}".encode()


def partition_of(table_key: bytes) -> int:
    return int(table_key.split(b"/", 1)[0])


def redrive_headers(headers: list[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
    return [(REDRIVE_HEADER, b"1")] if has_header(headers, REDRIVE_HEADER) else []


def parse_decision(value: bytes | None) -> Decision | None:
    if not value:
        return None
    try:
        return Decision.model_validate_json(value)
    except ValidationError:
        return None


def target_bytes(decision: Decision) -> bytes | None:
    target = decision.request_id if decision.target == "request" else decision.session_id
    return target.encode() if target else None


def problem(decision: Decision) -> str | None:
    """Why this decision can never be posted as it is, or None (DESIGN 6: validate locally)."""
    if decision.target == "request":
        if decision.request_id is None:
            return "target is request but request_id is null"
        if not is_helicone_request_id(decision.request_id):
            return "request_id is not a UUID v1-v5 (Helicone answers those with a 500)"
        return None
    if not decision.session_id or len(decision.session_id) > 128:
        return "target is session but session_id is missing or longer than 128 characters"
    if decision.scores:
        return "a session decision cannot carry scores (Helicone has no endpoint)"
    return None
