"""The prompt record: the contract of the ``feedback-prompts`` topic.

A record says "this user (or session) seems dissatisfied with this answer: ask for a thumbs
now".  It carries only ids, a reason code and times, never any text the user typed, because
the collector hands it to whoever claims the user id (docs/feedback-prompts.md, trust model).

``prompt_id`` is a function of the request id alone, so a request yields at most one prompt id
however often its events are replayed, and every consumer can drop repeats by it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PROMPT_NAMESPACE", "PROMPT_REASONS", "PromptReason", "PromptRecord", "prompt_id_for"]

#: Namespace of :func:`prompt_id_for` (fixed: changing it changes every prompt id).
PROMPT_NAMESPACE = uuid.UUID("5b0e3c1e-7f5d-4a43-9a35-0c1f6d1e2b77")

#: Why a prompt is asked, in the order the detector checks them.
PromptReason = Literal["correction", "regenerated", "human_requested", "quick_exit"]
PROMPT_REASONS: tuple[str, ...] = PromptReason.__args__  # type: ignore[attr-defined]


def prompt_id_for(request_id: str) -> str:
    """The prompt id of a request: one request, one prompt id, on every replay."""
    return str(uuid.uuid5(PROMPT_NAMESPACE, request_id))


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class PromptRecord(BaseModel):
    """One prompt (candidate on the internal topic, prompt on ``feedback-prompts``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_id: str = Field(description="uuid5 of the request id; consumers drop repeats by it.")
    request_id: str = Field(description="The answer to ask about (a Helicone request id).")
    reason: PromptReason = Field(description="The sign of dissatisfaction that was seen.")
    user_id: str | None = Field(description="Who to ask, if known (a claim: see the docs).")
    session_id: str | None = Field(description="The session to ask in, when no user id is known.")
    signal_at: datetime = Field(description="Event time of the signal that made it a prompt.")
    expires_at: datetime = Field(description="After this, asking is pointless: do not show it.")

    @property
    def audience_key(self) -> str | None:
        """The key a prompt is rate-limited and delivered under: the user, else the session."""
        if self.user_id is not None:
            return "user:" + self.user_id
        if self.session_id is not None:
            return "session:" + self.session_id
        return None

    @property
    def signal_ms(self) -> int:
        return round(self.signal_at.timestamp() * 1000)

    @property
    def expires_ms(self) -> int:
        return round(self.expires_at.timestamp() * 1000)

    @classmethod
    def build(
        cls,
        *,
        request_id: str,
        reason: PromptReason,
        user_id: str | None,
        session_id: str | None,
        signal_ms: int,
        ttl_ms: int,
    ) -> PromptRecord:
        return cls(
            prompt_id=prompt_id_for(request_id),
            request_id=request_id,
            reason=reason,
            user_id=user_id,
            session_id=session_id,
            signal_at=_utc(signal_ms),
            expires_at=_utc(signal_ms + ttl_ms),
        )
