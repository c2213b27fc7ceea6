"""The cooldown: at most one prompt per audience (user, else session) per cooldown, pure.

``decide(state, candidate, *, now_ms, cooldown_ms) -> CooldownVerdict``; the adapter keeps
one :class:`CooldownState` per audience in a changelogged table and sends what it says.

Invariants, and why they hold:

* **Spacing.**  The state holds the event time of the last prompt sent and its id.  A new
  prompt goes out only when its signal time is at least ``cooldown_ms`` after that one, and
  then becomes the state.  So the first sends of an audience have strictly increasing signal
  times, each ``cooldown_ms`` or more after the one before, *whatever order the candidates
  arrive in*: a candidate older than the last prompt is inside the cooldown by construction
  (asking about an older answer after a newer one was asked about is pointless anyway).
* **Replay and restarts.**  The verdict depends on event time and the state only, except for
  staleness (below).  The state is written to the changelogged table before the prompt is
  sent, and a candidate whose prompt id *is* the state's is sent again (``resend``), so a
  crash between the two, or a replay of the candidates topic, re-sends the same prompt id
  (consumers drop repeats by it) and never a second, different prompt.  A rebalance moves
  the state with its partition (the candidates topic and the table's changelog are
  co-partitioned by audience key).
* **Staleness is the only wall-clock input.**  A candidate already past ``expires_at`` when
  decided (a worker catching up on a backlog) is dropped as ``stale`` without touching the
  state, so a backlog never floods users with prompts about answers they forgot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import orjson

if TYPE_CHECKING:
    from worker.prompts.record import PromptRecord

__all__ = [
    "SUPPRESSIONS",
    "CooldownState",
    "CooldownVerdict",
    "Outcome",
    "decide",
    "decode_state",
    "encode_state",
]

#: send: a new prompt goes out.  resend: the state's own prompt again (replay, or a crash
#: after the state was written).  cooldown: the audience was asked too recently.  stale: the
#: prompt expired before it could be decided.
Outcome = Literal["send", "resend", "cooldown", "stale"]
#: Why a candidate did not go out (``feedback_prompts_suppressed_total{why}``);
#: ``no_audience``: neither a user nor a session id, so nobody could be asked;
#: ``not_queued``: the producer refused the candidate (the event itself goes on).
SUPPRESSIONS: tuple[str, ...] = ("cooldown", "stale", "no_audience", "not_queued")


@dataclass(frozen=True, slots=True)
class CooldownState:
    """The last prompt sent to one audience: its signal's event time and its id."""

    last_signal_ms: int
    prompt_id: str


@dataclass(frozen=True, slots=True)
class CooldownVerdict:
    outcome: Outcome
    #: The audience's state after the verdict (unchanged unless ``send``).
    state: CooldownState | None

    @property
    def sends(self) -> bool:
        return self.outcome in ("send", "resend")


def decide(
    state: CooldownState | None, candidate: PromptRecord, *, now_ms: int, cooldown_ms: int
) -> CooldownVerdict:
    """Whether ``candidate`` goes out to its audience, and the audience's next state."""
    if now_ms >= candidate.expires_ms:
        return CooldownVerdict("stale", state)
    if state is not None and candidate.prompt_id == state.prompt_id:
        return CooldownVerdict("resend", state)
    signal_ms = candidate.signal_ms
    if state is not None and signal_ms < state.last_signal_ms + cooldown_ms:
        return CooldownVerdict("cooldown", state)
    return CooldownVerdict("send", CooldownState(signal_ms, candidate.prompt_id))


def encode_state(state: CooldownState) -> bytes:
    return orjson.dumps({"v": 1, "last_signal_ms": state.last_signal_ms, "id": state.prompt_id})


def decode_state(raw: bytes | None) -> CooldownState | None:
    """The stored state, or None for none or for a value this version cannot read (which
    then behaves as "never asked": at worst one extra prompt, never a lost one)."""
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
        return CooldownState(int(data["last_signal_ms"]), str(data["id"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
