"""The event contract: every example validates, and each rule of DESIGN 3 is enforced."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from worker.events import (
    EVENT_MODELS,
    EVENT_TYPES,
    UI_EVENT_ADAPTER,
    Decision,
    decision_id_for,
    is_helicone_request_id,
)
from worker.schemas import EXAMPLES


def validate(document: dict[str, Any]) -> Any:
    return UI_EVENT_ADAPTER.validate_json(orjson.dumps(document), strict=True)


def with_changes(type_: str, **changes: Any) -> dict[str, Any]:
    document = dict(EXAMPLES[type_])
    document.update(changes)
    return document


def test_every_type_has_a_model_and_an_example() -> None:
    assert set(EVENT_MODELS) == set(EVENT_TYPES) == set(EXAMPLES)


@pytest.mark.parametrize("type_", EVENT_TYPES)
def test_each_example_validates_as_its_type(type_: str) -> None:
    event = validate(EXAMPLES[type_])
    assert event.type == type_
    assert isinstance(event, EVENT_MODELS[type_])


@pytest.mark.parametrize(
    ("request_id", "ok"),
    [
        ("5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e6f", True),  # v4
        ("5F2B8C1E-3D4A-1B6C-9E7F-1A2B3C4D5E6F", True),  # v1, upper case
        ("5f2b8c1e-3d4a-5b6c-af7f-1a2b3c4d5e6f", True),  # v5
        ("018f6f5e-4e8c-7b8a-9a51-8a5d8c1f2e3a", False),  # v7: Helicone rejects it
        ("5f2b8c1e-3d4a-0b6c-9e7f-1a2b3c4d5e6f", False),  # version 0
        ("5f2b8c1e-3d4a-4b6c-cf7f-1a2b3c4d5e6f", False),  # wrong variant
        ("5f2b8c1e3d4a4b6c9e7f1a2b3c4d5e6f", False),  # no hyphens
        ("{5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e6f}", False),
        ("", False),
    ],
)
def test_request_ids_must_be_uuid_v1_to_v5(request_id: str, ok: bool) -> None:
    assert is_helicone_request_id(request_id) is ok
    if ok:
        assert validate(with_changes("page_left", request_id=request_id)).request_id == (
            request_id.lower()
        )
    else:
        with pytest.raises(ValidationError):
            validate(with_changes("page_left", request_id=request_id))


@pytest.mark.parametrize(
    "changes",
    [
        {"occurred_at": "2026-11-22T10:00:00"},  # no offset
        {"occurred_at": 1_795_000_000},  # a number, not RFC 3339
        {"occurred_at": "yesterday"},
        {"sent_at": "2026-11-22"},
        {"session_id": ""},
        {"session_id": "x" * 129},
        {"user_id": 42},
        {"event_id": "not-a-uuid"},
        {"type": "Page_Left"},
    ],
)
def test_field_rules(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate(with_changes("page_left", **changes))


@pytest.mark.parametrize(
    ("type_", "properties"),
    [
        ("results_shown", {}),
        ("results_shown", {"result_count": 0}),
        ("results_shown", {"result_count": "3"}),
        ("results_shown", {"result_count": 2.5}),
        ("ticket_opened", {}),
        ("feedback_given", {"rating": 1}),
        ("feedback_given", {"rating": "true"}),
        ("score_reported", {"scores": {}}),
        ("score_reported", {"scores": {"accuracy": 0.9}}),
        ("score_reported", {"scores": {"accuracy": "90"}}),
        ("result_clicked", {"position": -1}),
    ],
)
def test_type_specific_properties_are_strict(type_: str, properties: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate(with_changes(type_, properties=properties))


def test_unknown_property_keys_and_top_level_extras_are_ignored() -> None:
    event = validate(
        with_changes("results_shown", properties={"result_count": 3, "layout": "grid"}, extra=1)
    )
    assert event.properties.result_count == 3


def test_session_feedback_needs_a_session_but_no_request() -> None:
    event = validate(EXAMPLES["session_feedback_given"])
    assert event.request_id is None
    assert event.routing_key == EXAMPLES["session_feedback_given"]["session_id"]
    without_session = dict(EXAMPLES["session_feedback_given"])
    del without_session["session_id"]
    with pytest.raises(ValidationError):
        validate(without_session)


def test_request_id_is_required_for_other_types() -> None:
    document = dict(EXAMPLES["feedback_given"])
    del document["request_id"]
    with pytest.raises(ValidationError):
        validate(document)


def test_decision_ids_are_deterministic_and_distinct() -> None:
    request = str(uuid.uuid4())
    first = decision_id_for(request, "engagement", 1_000)
    assert first == decision_id_for(request, "engagement", 1_000)
    assert first != decision_id_for(request, "engagement", 1_001)
    assert first != decision_id_for(request, "code_suggestion", 1_000)
    assert uuid.UUID(first).version == 5


def test_decision_round_trips_through_json() -> None:
    decision = Decision(
        decision_id=decision_id_for("r", "explicit", 0),
        target="request",
        request_id="5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e6f",
        session_id=None,
        rule="explicit",
        rating=True,
        scores={"time_spent_s": 12},
        window_start="2026-11-22T10:00:00Z",
        window_end="2026-11-22T10:00:00Z",
        decided_at="2026-11-22T10:00:01Z",
        rule_version=1,
    )
    assert Decision.model_validate_json(decision.model_dump_json()) == decision
    assert decision.target_id == decision.request_id
