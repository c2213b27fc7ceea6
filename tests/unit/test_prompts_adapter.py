"""The prompts adapter (worker.agents.prompts) without Faust: detection in front of the next
stage, and the cooldown agent's body over a dict table, with a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from tests.unit.test_prompts import DAY_MS, T0, TTL_MS, candidate, ev, request_id
from worker.agents.prompts import PromptDetector, Prompts
from worker.clock import FakeClock
from worker.metrics import PromptMetrics
from worker.prompts import PromptRecord, decode_state
from worker.rules import RuleConfig
from worker.validation import Accepted


def make(
    clock: FakeClock | None = None, max_keys: int = 1_000
) -> tuple[Prompts, dict[str, list[Any]]]:
    sent: dict[str, list[Any]] = {"candidates": [], "prompts": [], "next": []}

    async def send_candidate(key: bytes, value: bytes) -> None:
        sent["candidates"].append((key, value))

    async def send_prompt(key: bytes, value: bytes) -> None:
        sent["prompts"].append((key, PromptRecord.model_validate_json(value)))

    prompts = Prompts(
        detector=PromptDetector(cfg=RuleConfig(), ttl_ms=TTL_MS, max_keys=max_keys),
        metrics=PromptMetrics(CollectorRegistry()),
        clock=clock or FakeClock(T0),
        cooldown_ms=DAY_MS,
        send_candidate=send_candidate,
        send_prompt=send_prompt,
    )
    return prompts, sent


def counter(prompts: Prompts, name: str, **labels: str) -> float:
    metric = getattr(prompts.metrics, name)
    return float(metric.labels(**labels)._value.get() if labels else metric._value.get())


def test_detection_sends_a_candidate_keyed_by_audience_and_passes_every_event_on() -> None:
    prompts, sent = make()

    async def next_stage(partition: int, accepted: Accepted, ack: Any, read_ms: Any = None) -> None:
        sent["next"].append((partition, accepted))

    stage = prompts.wrap(next_stage)
    events = [ev("response_shown", 0), ev("response_regenerated", 1_000), ev("page_left", 2_000)]

    async def ack() -> None:
        return None

    async def go() -> None:
        for e in events:
            await stage(3, e, ack)

    asyncio.run(go())
    assert [a for _, a in sent["next"]] == events
    [(key, value)] = sent["candidates"]
    assert key == b"user:u-1"
    assert PromptRecord.model_validate_json(value).reason == "regenerated"
    assert counter(prompts, "candidates", reason="regenerated") == 1


def test_no_audience_is_counted_and_not_sent() -> None:
    prompts, sent = make()
    asyncio.run(prompts.on_detected(candidate(1, 0).model_copy(update={"user_id": None})))
    assert sent["candidates"] == []
    assert counter(prompts, "suppressed", why="no_audience") == 1


def test_the_detector_forgets_the_oldest_requests_beyond_its_bound() -> None:
    prompts, _ = make(max_keys=2)
    for n in (1, 2, 3):
        prompts.detector.observe(ev("response_shown", 0, request=request_id(n)))
    assert prompts.detector.observe(ev("page_left", 1_000, request=request_id(1))) is None
    assert prompts.detector.observe(ev("page_left", 1_000, request=request_id(3))) is not None


def test_cooldown_agent_sends_one_per_user_and_counts_the_rest() -> None:
    clock = FakeClock(T0)
    prompts, sent = make(clock)
    table: dict[bytes, bytes] = {}
    first, second, other = candidate(1, 0), candidate(2, 60_000), candidate(3, 0, user="u-2")

    async def go() -> None:
        for c in (first, second, other, first):
            await prompts.on_candidate(c.model_dump_json().encode(), table)
        await prompts.on_candidate(b"{not json", table)

    asyncio.run(go())
    assert [(k, p.prompt_id) for k, p in sent["prompts"]] == [
        (b"user:u-1", first.prompt_id),
        (b"user:u-2", other.prompt_id),
        (b"user:u-1", first.prompt_id),  # the replayed one again: same id
    ]
    state = decode_state(table[b"user:u-1"])
    assert state is not None and state.prompt_id == first.prompt_id
    assert counter(prompts, "sent", reason="regenerated") == 2
    assert counter(prompts, "suppressed", why="cooldown") == 1
    assert counter(prompts, "invalid") == 1


def test_cooldown_agent_drops_stale_candidates_by_the_injected_clock() -> None:
    clock = FakeClock(T0 + TTL_MS)
    prompts, sent = make(clock)
    table: dict[bytes, bytes] = {}
    asyncio.run(prompts.on_candidate(candidate(1, 0).model_dump_json().encode(), table))
    assert sent["prompts"] == [] and table == {}
    assert counter(prompts, "suppressed", why="stale") == 1


def test_a_candidate_the_producer_refuses_never_blocks_the_event() -> None:
    prompts, sent = make()

    async def refuse(key: bytes, value: bytes) -> None:
        raise RuntimeError("buffer full")

    prompts.send_candidate = refuse

    async def next_stage(partition: int, accepted: Accepted, ack: Any, read_ms: Any = None) -> None:
        sent["next"].append(accepted)

    async def ack() -> None:
        return None

    stage = prompts.wrap(next_stage)
    event = ev("human_requested", 0)

    async def go() -> None:
        await stage(0, event, ack)

    asyncio.run(go())
    assert sent["next"] == [event]
    assert counter(prompts, "suppressed", why="not_queued") == 1
