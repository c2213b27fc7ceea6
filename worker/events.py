"""The event contract (DESIGN 3) and the outbox decision (DESIGN 5) as pydantic models.

Everything a frontend may publish to ``ui-events`` is one member of :data:`UIEvent`, a
discriminated union on ``type``.  Validation is *strict*: a string is never coerced into a
number or a boolean, a timestamp must be an RFC 3339 string with an offset, and ids must be
canonical UUIDs.  The models are the single source of the JSON Schemas in ``schemas/``
(``feedback-worker schemas``), so the published contract and the code cannot drift apart.

Map of the module::

    EventType                 the closed set of ``type`` values
    RequestId / EventId       canonical UUID strings (request ids: v1-v5, as Helicone demands)
    <Type>Event               one model per event type, with its ``properties`` model
    UIEvent, UI_EVENT_ADAPTER the union and its (fast, strict) JSON validator
    Evidence, Decision        the outbox record, with its deterministic ``decision_id``
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    TypeAdapter,
)

__all__ = [
    "DECISION_NAMESPACE",
    "EVENT_TYPES",
    "REQUEST_ID_PATTERN",
    "UI_EVENT_ADAPTER",
    "Decision",
    "EventType",
    "Evidence",
    "RuleName",
    "UIEvent",
    "decision_id_for",
    "is_helicone_request_id",
]

#: Helicone accepts only UUID versions 1 to 5 as request ids (DESIGN 6); anything else is
#: answered with a 500, so it is rejected here, before it can cost a retry budget.
REQUEST_ID_PATTERN = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-5][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
)
_UUID_PATTERN = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)

RequestId = Annotated[
    str, StringConstraints(pattern=REQUEST_ID_PATTERN, to_lower=True, strict=True)
]
EventId = Annotated[str, StringConstraints(pattern=_UUID_PATTERN, to_lower=True, strict=True)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=128, strict=True)]
#: A session id Helicone can hold: it learns session ids from the ``Helicone-Session-Id``
#: header, and an HTTP field value cannot carry control characters (RFC 9110 5.5), so an id
#: with one names no Helicone session and its feedback could only be dead-lettered.
SessionId = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$", strict=True
    ),
]
LongText = Annotated[str, StringConstraints(max_length=16_384, strict=True)]
Timestamp = AwareDatetime
ScoreName = Annotated[str, StringConstraints(min_length=1, max_length=128, strict=True)]
#: Scores travel as JSON integers through the window state and the outbox (orjson, which
#: stops at 64 bits) to Helicone; a larger one must be refused here, as a schema violation,
#: not crash the window engine later (the fuzz tests found that crash loop).
ScoreInt = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
ScoreValue = ScoreInt | StrictBool

EventType = Literal[
    "response_shown",
    "message_sent",
    "response_copied",
    "response_shared",
    "link_clicked",
    "response_regenerated",
    "human_requested",
    "page_left",
    "suggestion_shown",
    "suggestion_accepted",
    "suggestion_modified",
    "suggestion_rejected",
    "suggestion_retained",
    "results_shown",
    "result_clicked",
    "ticket_opened",
    "ticket_resolved",
    "ticket_reopened",
    "feedback_given",
    "session_feedback_given",
    "score_reported",
]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]


_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)


def is_helicone_request_id(value: str) -> bool:
    """True when ``value`` is a UUID v1-v5 in canonical form, which is all Helicone accepts."""
    return _REQUEST_ID_RE.fullmatch(value) is not None


# --------------------------------------------------------------------------- properties


class _Properties(BaseModel):
    """Type-specific payload; unknown keys are ignored so frontends can add their own."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class NoProperties(_Properties):
    """For event types that carry no properties."""


class ResponseShownProperties(_Properties):
    prompt_text: LongText | None = Field(
        default=None, description="The user's prompt; used to spot a repeated question."
    )


class MessageSentProperties(_Properties):
    text: LongText | None = Field(default=None, description="The message the user sent next.")


class LinkClickedProperties(_Properties):
    url: Annotated[str, StringConstraints(max_length=2048, strict=True)] | None = None


class ResultsShownProperties(_Properties):
    result_count: Annotated[StrictInt, Field(ge=1, le=10_000)]
    result_ids: Annotated[list[ShortText], Field(max_length=1_000)] | None = None


class ResultClickedProperties(_Properties):
    result_id: ShortText | None = None
    position: Annotated[StrictInt, Field(ge=0, le=10_000)] | None = None


class TicketProperties(_Properties):
    ticket_id: ShortText


class RatingProperties(_Properties):
    rating: StrictBool


class RetainedProperties(_Properties):
    """How much of an accepted code suggestion is still there, measured by the application."""

    retained_chars: Annotated[StrictInt, Field(ge=0, le=10_000_000)] = Field(
        description="Characters of the suggestion still present when measured."
    )
    suggested_chars: Annotated[StrictInt, Field(ge=1, le=10_000_000)] = Field(
        description="Characters the accepted suggestion inserted."
    )


class ScoresProperties(_Properties):
    scores: Annotated[dict[ScoreName, ScoreValue], Field(min_length=1, max_length=100)]


# --------------------------------------------------------------------------- events


class _EventBase(BaseModel):
    """Fields shared by every event type (DESIGN 3)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    event_id: EventId = Field(description="UUID; duplicates of an event_id are processed once.")
    request_id: RequestId = Field(description="The Helicone request id (UUID v1-v5).")
    session_id: SessionId | None = None
    user_id: ShortText | None = None
    occurred_at: Timestamp = Field(description="RFC 3339 with offset; device clock.")
    sent_at: Timestamp | None = Field(
        default=None, description="RFC 3339 with offset; device clock when the batch was sent."
    )

    @property
    def routing_key(self) -> str:
        """The id all of this event's state is kept under: its request id."""
        return self.request_id


class _NoPropsEvent(_EventBase):
    properties: NoProperties = Field(default_factory=NoProperties)


class ResponseShown(_EventBase):
    type: Literal["response_shown"]
    properties: ResponseShownProperties = Field(default_factory=ResponseShownProperties)


class MessageSent(_EventBase):
    type: Literal["message_sent"]
    properties: MessageSentProperties = Field(default_factory=MessageSentProperties)


class ResponseCopied(_NoPropsEvent):
    type: Literal["response_copied"]


class ResponseShared(_NoPropsEvent):
    type: Literal["response_shared"]


class LinkClicked(_EventBase):
    type: Literal["link_clicked"]
    properties: LinkClickedProperties = Field(default_factory=LinkClickedProperties)


class ResponseRegenerated(_NoPropsEvent):
    type: Literal["response_regenerated"]


class HumanRequested(_NoPropsEvent):
    type: Literal["human_requested"]


class PageLeft(_NoPropsEvent):
    type: Literal["page_left"]


class SuggestionShown(_NoPropsEvent):
    type: Literal["suggestion_shown"]


class SuggestionAccepted(_NoPropsEvent):
    type: Literal["suggestion_accepted"]


class SuggestionModified(_NoPropsEvent):
    type: Literal["suggestion_modified"]


class SuggestionRejected(_NoPropsEvent):
    type: Literal["suggestion_rejected"]


class SuggestionRetained(_EventBase):
    """Sent by the application N seconds after an accept (or a kept edit): what survived."""

    type: Literal["suggestion_retained"]
    properties: RetainedProperties


class ResultsShown(_EventBase):
    type: Literal["results_shown"]
    properties: ResultsShownProperties


class ResultClicked(_EventBase):
    type: Literal["result_clicked"]
    properties: ResultClickedProperties = Field(default_factory=ResultClickedProperties)


class TicketOpened(_EventBase):
    type: Literal["ticket_opened"]
    properties: TicketProperties


class TicketResolved(_EventBase):
    type: Literal["ticket_resolved"]
    properties: TicketProperties


class TicketReopened(_EventBase):
    type: Literal["ticket_reopened"]
    properties: TicketProperties


class FeedbackGiven(_EventBase):
    type: Literal["feedback_given"]
    properties: RatingProperties


class SessionFeedbackGiven(_EventBase):
    """A rating of a whole session: the one event type keyed by session, not request."""

    type: Literal["session_feedback_given"]
    request_id: RequestId | None = None  # type: ignore[assignment]
    session_id: SessionId
    properties: RatingProperties

    @property
    def routing_key(self) -> str:
        return self.session_id


class ScoreReported(_EventBase):
    type: Literal["score_reported"]
    properties: ScoresProperties


UIEvent = Annotated[
    ResponseShown
    | MessageSent
    | ResponseCopied
    | ResponseShared
    | LinkClicked
    | ResponseRegenerated
    | HumanRequested
    | PageLeft
    | SuggestionShown
    | SuggestionAccepted
    | SuggestionModified
    | SuggestionRejected
    | SuggestionRetained
    | ResultsShown
    | ResultClicked
    | TicketOpened
    | TicketResolved
    | TicketReopened
    | FeedbackGiven
    | SessionFeedbackGiven
    | ScoreReported,
    Field(discriminator="type"),
]

#: Validates raw JSON bytes straight into a :data:`UIEvent` (pydantic-core's own parser, in
#: strict mode: faster than ``json.loads`` + validation and it reports bad JSON as an error).
UI_EVENT_ADAPTER: TypeAdapter[UIEvent] = TypeAdapter(UIEvent)

#: Event model by ``type`` value, for code that needs the class of one type.
EVENT_MODELS: dict[str, type[_EventBase]] = {
    model.model_fields["type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in _EventBase.__subclasses__() + _NoPropsEvent.__subclasses__()
    if "type" in model.model_fields
}


# --------------------------------------------------------------------------- decisions

RuleName = Literal[
    "engagement",
    "code_suggestion",
    "code_retention",
    "search_clicks",
    "ticket_resolution",
    "explicit",
    "session_feedback",
    "scores",
]

#: Namespace of the deterministic decision ids (uuid5); never change it, or reprocessing
#: after an upgrade would produce new ids and defeat delivery's dedupe.
DECISION_NAMESPACE = uuid.UUID("6f1c3c8e-5d0b-4a8e-9f57-2b0e4c1d7a93")


def decision_id_for(target_id: str, rule: str, window_start_ms: int) -> str:
    """The id of the one decision of ``rule`` for the window of ``target_id`` at that start.

    Deterministic, so a window decided twice (after a crash) yields the same id and delivery's
    dedupe posts it once.
    """
    return str(uuid.uuid5(DECISION_NAMESPACE, f"{target_id}|{rule}|{window_start_ms}"))


class Evidence(BaseModel):
    """One signal a rule used, kept in the decision so audits can see why it was made."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    type: str
    event_time: datetime
    detail: str | None = None


_NO_SHADOW: set[str] = {"shadow_rating"}


class Decision(BaseModel):
    """One outbox record (DESIGN 5, contract): the verdict of one rule for one window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    decision_id: str = Field(description="uuid5 of target id, rule and window start.")
    target: Literal["request", "session"]
    request_id: str | None
    session_id: str | None
    rule: RuleName
    rating: bool | None = Field(
        description="null where only scores are decided, under an explicit rating (see "
        "shadow_rating), or in an abstention: a window the rule decided nothing for, written "
        "with no scores and no shadow while OUTBOX_ABSTENTIONS is on (delivery skips it)."
    )
    shadow_rating: bool | None = Field(
        default=None,
        description="The rating the rule would have posted had an explicit rating not won "
        "over it (DESIGN 4: explicit wins); recorded for calibration, never posted.  Absent "
        "(null) in decisions written before it existed and wherever the rating stands.",
    )
    scores: dict[str, int] = Field(default_factory=dict)
    window_start: datetime
    window_end: datetime
    decided_at: datetime
    signals: list[Evidence] = Field(default_factory=list)
    rule_version: int = Field(ge=1)

    def outbox_json(self) -> bytes:
        """The record written to the outbox.  ``shadow_rating`` is left out when it is null,
        so a decision without one is byte for byte what versions before the field wrote, and
        a worker of such a version (which forbids unknown fields) reading the outbox during a
        rolling upgrade refuses only the decisions that carry a shadow (it dead-letters them
        as ``invalid``): a shadow changes nothing Helicone stores, so nothing posted is lost."""
        if self.shadow_rating is None:
            return self.model_dump_json(exclude=_NO_SHADOW).encode()
        return self.model_dump_json().encode()

    @property
    def is_abstention(self) -> bool:
        """Whether the rule decided nothing for its window: no rating, no shadow and no
        scores.  Such a record (written while ``OUTBOX_ABSTENTIONS`` is on) is for
        calibration only; merging it changes nothing delivery would post."""
        return self.rating is None and self.shadow_rating is None and not self.scores

    @property
    def target_id(self) -> str:
        """The Helicone id this decision is posted to."""
        target = self.request_id if self.target == "request" else self.session_id
        assert target is not None
        return target
