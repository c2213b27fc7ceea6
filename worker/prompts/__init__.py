"""Ask only when it matters: feedback prompts from early signs of dissatisfaction (pure core).

No I/O here (no Faust, aiokafka, httpx or prometheus_client); the adapter is
:mod:`worker.agents.prompts`.  Two steps, each a pure function, and each in its own module:

1. :mod:`~worker.prompts.detect` folds one request's events into a small :class:`Watch` and
   returns a :class:`PromptRecord` *candidate* the moment a sign of dissatisfaction is known
   (a correction phrase, a regenerate, a request for a human, a quick exit), at most one per
   request.  It runs where the request's events are (partitioned by request id).
2. :mod:`~worker.prompts.cooldown` decides, per audience (user, else session), whether a
   candidate goes out, from the audience's :class:`CooldownState`, the candidate and the wall
   clock: at most one prompt per ``PROMPT_COOLDOWN_S`` of event time.  It runs where the
   audience's candidates are (the candidates are re-keyed by audience first).

The record (:mod:`~worker.prompts.record`) is the contract of the ``feedback-prompts`` topic.
"""

from __future__ import annotations

from worker.prompts.cooldown import (
    SUPPRESSIONS,
    CooldownState,
    CooldownVerdict,
    Outcome,
    decide,
    decode_state,
    encode_state,
)
from worker.prompts.detect import INITIAL_WATCH, Watch, observe
from worker.prompts.record import (
    PROMPT_NAMESPACE,
    PROMPT_REASONS,
    PromptReason,
    PromptRecord,
    prompt_id_for,
)

__all__ = [
    "INITIAL_WATCH",
    "PROMPT_NAMESPACE",
    "PROMPT_REASONS",
    "SUPPRESSIONS",
    "CooldownState",
    "CooldownVerdict",
    "Outcome",
    "PromptReason",
    "PromptRecord",
    "Watch",
    "decide",
    "decode_state",
    "encode_state",
    "observe",
    "prompt_id_for",
]
