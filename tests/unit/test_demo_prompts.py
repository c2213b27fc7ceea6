"""The demo's prompts report (worker.commands.demo_prompts): users assigned reproducibly, and
the figures counted from journeys and prompts read back."""

from __future__ import annotations

from worker.commands.demo_prompts import (
    ANSWERS_PER_USER,
    assign_users,
    prompt_figures,
    prompt_table,
)
from worker.devtools.traffic import Windows, generate
from worker.prompts import PromptRecord

T0 = 1_795_348_800_000


def prompt(request_id: str) -> PromptRecord:
    return PromptRecord.build(
        request_id=request_id, reason="quick_exit", user_id="u", session_id=None,
        signal_ms=T0, ttl_ms=600_000,
    )


def test_users_are_assigned_to_every_event_reproducibly() -> None:
    one = generate(50, start_ms=T0, spread_ms=10_000, windows=Windows(), seed=3)
    two = generate(50, start_ms=T0, spread_ms=10_000, windows=Windows(), seed=3)
    assign_users(one, seed=9)
    assign_users(two, seed=9)
    users = [{e["user_id"] for e in j.events} for j in one]
    assert all(len(u) == 1 for u in users)  # one user per journey
    assert users == [{e["user_id"] for e in j.events} for j in two]
    assert len(set().union(*users)) <= 50 // ANSWERS_PER_USER


def test_figures_count_answers_shown_and_each_prompted_request_once() -> None:
    journeys = generate(
        40, start_ms=T0, spread_ms=10_000, windows=Windows(), seed=5, kinds={"chat": 1.0}
    )
    unsatisfied = [j for j in journeys if j.intent != "satisfied"]
    satisfied = [j for j in journeys if j.intent == "satisfied"]
    assert unsatisfied and satisfied
    prompts = [prompt(unsatisfied[0].request_id)] * 2 + [prompt(satisfied[0].request_id)]
    f = prompt_figures(journeys, prompts, candidates=7)
    assert (f.shown, f.candidates, f.prompts, f.prompts_on_unsatisfied) == (40, 7, 2, 1)
    assert f.dissatisfied == sum(1 for j in journeys if j.intent == "dissatisfied")
    assert f.per_100(f.prompts) == 5.0
    assert prompt_table(f, cooldown_s=86_400).row_count == 3


def test_no_answers_shown_is_zero_per_100_not_an_error() -> None:
    f = prompt_figures([], [], candidates=0)
    assert f.per_100(f.prompts) == 0.0
