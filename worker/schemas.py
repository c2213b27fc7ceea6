"""JSON Schemas and example events, generated from the pydantic models (DESIGN 3).

``feedback-worker schemas`` writes :func:`render` into ``schemas/``; a test renders again and
compares with the committed files, so the published contract cannot drift from the code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import TypeAdapter

from worker.events import EVENT_MODELS, EVENT_TYPES, Decision, UIEvent
from worker.prompts import PromptRecord

__all__ = ["EXAMPLES", "PROMPT_EXAMPLE", "check", "render", "write"]

_REQUEST = "5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e6f"
_SESSION = "chat-session-42"
_USER = "user-1234"


def _example(type_: str, n: int, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": f"0c5d6f7a-8b9c-4d0e-8f1a-{n:012x}",
        "type": type_,
        "request_id": _REQUEST,
        "session_id": _SESSION,
        "user_id": _USER,
        "occurred_at": f"2026-11-22T10:00:{n:02d}.000+01:00",
        "sent_at": f"2026-11-22T10:00:{n:02d}.250+01:00",
    }
    if properties is not None:
        event["properties"] = properties
    return event


#: One valid example per event type, in the order of DESIGN 3's table.
EXAMPLES: dict[str, dict[str, Any]] = {
    "response_shown": _example(
        "response_shown", 1, {"prompt_text": "How do I rotate my API key?"}
    ),
    "message_sent": _example("message_sent", 2, {"text": "Thanks, and for the EU region?"}),
    "response_copied": _example("response_copied", 3),
    "response_shared": _example("response_shared", 4),
    "link_clicked": _example("link_clicked", 5, {"url": "https://docs.example.com/keys"}),
    "response_regenerated": _example("response_regenerated", 6),
    "human_requested": _example("human_requested", 7),
    "page_left": _example("page_left", 8),
    "suggestion_shown": _example("suggestion_shown", 9),
    "suggestion_accepted": _example("suggestion_accepted", 10),
    "suggestion_modified": _example("suggestion_modified", 11),
    "suggestion_rejected": _example("suggestion_rejected", 12),
    # numbered last: it was added after the others, whose files keep their timestamps
    "suggestion_retained": _example(
        "suggestion_retained", 21, {"retained_chars": 311, "suggested_chars": 420}
    ),
    "results_shown": _example(
        "results_shown", 13, {"result_count": 10, "result_ids": ["doc-1", "doc-2", "doc-3"]}
    ),
    "result_clicked": _example("result_clicked", 14, {"result_id": "doc-2", "position": 1}),
    "ticket_opened": _example("ticket_opened", 15, {"ticket_id": "T-1001"}),
    "ticket_resolved": _example("ticket_resolved", 16, {"ticket_id": "T-1001"}),
    "ticket_reopened": _example("ticket_reopened", 17, {"ticket_id": "T-1001"}),
    "feedback_given": _example("feedback_given", 18, {"rating": True}),
    "session_feedback_given": {
        key: value
        for key, value in _example("session_feedback_given", 19, {"rating": False}).items()
        if key != "request_id"
    },
    "score_reported": _example(
        "score_reported", 20, {"scores": {"groundedness": 87, "toxic": False}}
    ),
}
assert tuple(EXAMPLES) == EVENT_TYPES

#: An example record of the ``feedback-prompts`` topic (docs/feedback-prompts.md).
PROMPT_EXAMPLE = PromptRecord.build(
    request_id=_REQUEST,
    reason="regenerated",
    user_id=_USER,
    session_id=_SESSION,
    signal_ms=1_795_338_006_000,  # the response_regenerated example's event time
    ttl_ms=600_000,
)


def _dump(document: Any) -> str:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def render() -> dict[str, str]:
    """Every file of ``schemas/`` by relative path, with its exact content."""
    files: dict[str, str] = {
        "ui-event.schema.json": _dump(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "UIEvent",
                **TypeAdapter(UIEvent).json_schema(),
            }
        ),
        "decision.schema.json": _dump(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                **Decision.model_json_schema(),
            }
        ),
    }
    files["prompt.schema.json"] = _dump(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **PromptRecord.model_json_schema(),
        }
    )
    files["prompt-example.json"] = _dump(PROMPT_EXAMPLE.model_dump(mode="json"))
    for type_, model in EVENT_MODELS.items():
        files[f"events/{type_}.schema.json"] = _dump(
            {"$schema": "https://json-schema.org/draft/2020-12/schema", **model.model_json_schema()}
        )
    for type_, example in EXAMPLES.items():
        files[f"examples/{type_}.json"] = _dump(example)
    files["examples/all.jsonl"] = "".join(
        orjson.dumps(example).decode() + "\n" for example in EXAMPLES.values()
    )
    return files


def write(directory: Path) -> list[Path]:
    """Write :func:`render` under ``directory``; return the paths written."""
    written = []
    for relative, content in render().items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def check(directory: Path) -> list[str]:
    """The relative paths under ``directory`` that differ from :func:`render` (or are missing)."""
    return [
        relative
        for relative, content in render().items()
        if not (directory / relative).is_file()
        or (directory / relative).read_text(encoding="utf-8") != content
    ]
