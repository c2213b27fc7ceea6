"""The demo's feedback prompts report: prompts per 100 answers shown, against asking every time.

The simulator's journeys each have their own session and no user, so nobody would ever be
asked twice; :func:`assign_users` gives every :data:`ANSWERS_PER_USER` answers one user id (in
every event of them, as an app's SDK would), so the cooldown has something to do.  After the
run, :func:`read_prompts` reads the ``feedback-prompts`` topic, :func:`prompt_figures` counts
(pure), and :func:`prompt_table` renders:

* answers shown (journeys with a ``response_shown``): asking every time = 100 per 100;
* candidates (answers whose early signals said dissatisfied), per 100 answers shown;
* prompts after the cooldown (one per user per ``PROMPT_COOLDOWN_S``), per 100;
* how many prompts landed on an answer the simulated user was not satisfied with.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.table import Table

from worker.commands.common import read_to_end
from worker.prompts import PromptRecord

if TYPE_CHECKING:
    from worker.config import Settings
    from worker.devtools.traffic import Journey

__all__ = [
    "ANSWERS_PER_USER",
    "PromptFigures",
    "assign_users",
    "prompt_figures",
    "prompt_report",
    "prompt_table",
    "read_prompts",
]

#: Simulated answers per simulated user: a user of a chat app sees several answers a day.
ANSWERS_PER_USER = 5


def assign_users(journeys: list[Journey], *, seed: int) -> None:
    """Give every event of each journey a user id, :data:`ANSWERS_PER_USER` journeys per
    user on average, drawn with ``seed`` (so a demo run is reproducible)."""
    rng = random.Random(seed)
    users = max(1, len(journeys) // ANSWERS_PER_USER)
    for journey in journeys:
        user = f"demo-user-{rng.randrange(users)}"
        for event in journey.events:
            event["user_id"] = user


@dataclass(frozen=True, slots=True)
class PromptFigures:
    shown: int
    candidates: int
    prompts: int
    #: Prompts on an answer whose simulated user was not satisfied with it.
    prompts_on_unsatisfied: int
    #: Answers whose simulated user was dissatisfied (what asking should catch).
    dissatisfied: int

    def per_100(self, n: int) -> float:
        return 100.0 * n / self.shown if self.shown else 0.0


def prompt_figures(
    journeys: list[Journey], prompts: list[PromptRecord], *, candidates: int
) -> PromptFigures:
    """The report's counts from the journeys, the prompts read back and the candidates
    metric (``feedback_prompt_candidates_total``)."""
    shown = {
        j.request_id: j
        for j in journeys
        if any(e["type"] == "response_shown" for e in j.events)
    }
    prompted = {p.request_id for p in prompts}  # a resend repeats an id: count it once
    return PromptFigures(
        shown=len(shown),
        candidates=candidates,
        prompts=len(prompted),
        prompts_on_unsatisfied=sum(
            1 for r in prompted if r in shown and shown[r].intent != "satisfied"
        ),
        dissatisfied=sum(1 for j in shown.values() if j.intent == "dissatisfied"),
    )


def prompt_table(f: PromptFigures, *, cooldown_s: float) -> Table:
    table = Table(title="Feedback prompts: ask only when it matters")
    table.add_column("policy")
    table.add_column("prompts", justify="right")
    table.add_column("per 100 answers shown", justify="right")
    table.add_row("ask after every answer", str(f.shown), "100.0")
    table.add_row(
        "ask on early signs of dissatisfaction", str(f.candidates), f"{f.per_100(f.candidates):.1f}"
    )
    table.add_row(
        f"... at most once per user per {cooldown_s:g} s (PROMPT_COOLDOWN_S)",
        str(f.prompts),
        f"{f.per_100(f.prompts):.1f}",
    )
    table.caption = (
        f"{f.prompts_on_unsatisfied} of {f.prompts} prompts asked about an answer its "
        f"simulated user was not satisfied with; {f.dissatisfied} of {f.shown} answers shown "
        "were dissatisfying."
    )
    return table


def _prompt(record: Any) -> PromptRecord | None:
    try:
        return PromptRecord.model_validate_json(record.value or b"")
    except ValidationError:
        return None


async def read_prompts(settings: Settings, timeout_s: float = 20) -> list[PromptRecord]:
    """Every record of the prompts topic, up to each partition's fetch high watermark (what
    was read by then if that takes over ``timeout_s``; nothing if the topic is missing)."""
    read = await read_to_end(
        settings, settings.topic_prompts, _prompt,
        timeout_s=timeout_s, poll_ms=300, partial_on_timeout=True,
    )
    return [] if read is None else read.items


async def prompt_report(settings: Settings, journeys: list[Journey], *, candidates: int) -> Table:
    """The table the demo prints: the prompts topic read back and counted."""
    figures = prompt_figures(journeys, await read_prompts(settings), candidates=candidates)
    return prompt_table(figures, cooldown_s=settings.prompt_cooldown_s)
