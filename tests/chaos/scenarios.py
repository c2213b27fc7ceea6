"""Shared parts of the chaos scenarios: settings, sizes (short or long form), and the check
that runs after each scenario.

The check (:func:`verify`) reads back the input topic, computes the decisions it implies with
the pure engine (:mod:`tests.chaos.reference`), waits until the receiver stores what those
decisions mean, lets the system go quiet, and then asserts:

* the outbox holds exactly the reference's decision ids (none missing, none extra), every copy
  of one id identical to the reference's decision (at-least-once may write a decision twice
  after a crash; it must be the *same* decision);
* no window reopened: per (target, rule) the outbox has exactly the reference's decision ids;
* the late topic holds exactly the events the reference reports late (none, for sorted input),
  so no event was lost to a window closed too early;
* the receiver *stores* what the decisions mean (Helicone's batches and their dedupe per
  request applied): per request the rating and every score, per session the rating; nothing
  for requests no decision names;
* at most one call per decision of a target (a state changes at most once per decision);
  where a worker was SIGKILLed, a call that was in flight at the kill may be made again
  (``repeats_allowed``): Helicone has no idempotency key, so a worker killed between a 2xx and
  its record of it must post again (DESIGN 5: at-least-once, and a repeat carries the whole
  state, which Helicone overwrites key by key);
* nothing was dead-lettered and nothing was invalid.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.chaos.reference import (
    Call,
    InputRecord,
    Reference,
    Stored,
    canonical,
    expected_decisions,
    expected_stored,
    settings_from_env,
)
from tests.fixtures.delivery import ReceiverThread, api_key, read_to_end
from tests.fixtures.worker import WorkerProcess
from tests.integration.test_delivery import delivery_env
from tests.integration.test_windows import ONE_RECORD_PER_BATCH, SHAPE, SHORT_WINDOWS
from worker.events import Decision

__all__ = [
    "CHAOS_WINDOWS",
    "FULL",
    "NO_RESTART_IDLE_CLOSE_S",
    "ONE_RECORD_PER_BATCH",
    "SHAPE",
    "Outcome",
    "env_for",
    "historical_start_ms",
    "verify",
]

#: ``make test-chaos`` sets CHAOS_FULL=1: more kills, more events, longer outages.
FULL = os.environ.get("CHAOS_FULL", "") not in ("", "0")

#: The integration tests' short windows, with a longer idle close: a restarted worker may take
#: a few seconds to fetch its backlog, and a partition that idles IDLE_CLOSE_S mid-stream
#: would (rightly) close its windows on the wall clock, which the reference does not model.
CHAOS_WINDOWS = {**SHORT_WINDOWS, "IDLE_CLOSE_S": "8"}
#: Where no worker restarts or rebalances, nothing pauses a partition's stream, so the last
#: windows may close on the idle timer sooner.
NO_RESTART_IDLE_CLOSE_S = "3"


def env_for(receiver: ReceiverThread, *, restores: bool, **overrides: str) -> dict[str, str]:
    env = {**CHAOS_WINDOWS, **delivery_env(receiver, api_key()), "TOPIC_PARTITIONS": "4"}
    if restores:
        env.update(ONE_RECORD_PER_BATCH)
    env.update(overrides)
    return env


def historical_start_ms(hours_ago: float = 3.0) -> int:
    """Event times this far back are never clamped by the record timestamp (DESIGN 3)."""
    return int(time.time() * 1000 - hours_ago * 3_600_000)


@dataclass
class Outcome:
    """What :func:`verify` found (for a scenario's own extra assertions)."""

    reference: Reference
    outbox: list[dict[str, Any]] = field(default_factory=list)
    calls: Counter[Call] = field(default_factory=Counter)
    history: list[Any] = field(default_factory=list)
    #: every decision judged, those of input no longer on the broker included
    decisions: list[Decision] = field(default_factory=list)


def read_input(bootstrap: str, topic: str) -> list[InputRecord]:
    records = asyncio.run(read_to_end(bootstrap, topic, timeout_s=60))
    return [InputRecord(r.partition, r.offset, r.timestamp, r.key, r.value) for r in records]


def accepted_calls(receiver: ReceiverThread) -> Counter[Call]:
    return Counter((r.path, canonical(r.body)) for r in receiver.accepted())


def stored_now(receiver: ReceiverThread) -> Stored:
    """What the receiver stores once every call accepted so far is consumed (Helicone's
    batches, with their dedupe per request, applied)."""
    receiver.call_async(lambda r: r.settle())
    requests = receiver.call(lambda r: r.stored())
    return Stored(
        requests={k: (v.feedback, dict(v.scores)) for k, v in requests.items()},
        sessions=dict(receiver.call(lambda r: r.stored_sessions())),
    )


def _target_of(path: str) -> str:
    return path.split("/")[3]


def verify(
    *,
    bootstrap: str,
    topics: Any,
    env: dict[str, str],
    receiver: ReceiverThread,
    workers: list[WorkerProcess],
    seed: int,
    timeout_s: float = 150.0,
    records: list[InputRecord] | None = None,
    also_decisions: list[Decision] | None = None,
    dump_to: Any = None,
    repeats_allowed: int = 0,
) -> Outcome:
    """Wait until the receiver stores what the scenario's decisions imply, then check
    everything (module docstring).  ``workers``: those still running (their gauges must come
    to rest).  ``records``: the input to judge by (default: the input topic read back now);
    ``also_decisions``: decisions implied by input that is no longer on the broker;
    ``repeats_allowed``: how many calls beyond one per decision may be accepted (SIGKILL)."""
    tag = f"[chaos seed {seed}]"
    records = records if records is not None else read_input(bootstrap, topics.ui_events)
    reference = expected_decisions(records, settings_from_env(env))
    assert reference.misplaced == 0 and reference.invalid == 0, f"{tag} bad input {reference}"
    decisions = [*reference.decisions.values(), *(also_decisions or [])]
    want = expected_stored(decisions)

    # 1. the receiver stores what was meant (a signal with a generous timeout); if not, the
    #    topic checks below say where the missing ones were lost
    deadline = time.monotonic() + timeout_s
    arrived = False
    while time.monotonic() < deadline:
        got = stored_now(receiver)
        if got.requests == want.requests and got.sessions == want.sessions:
            arrived = True
            break
        time.sleep(0.5)

    # 2. quiet: nothing more arrives and every live worker has nothing open or waiting
    if arrived:
        _quiesce(receiver, workers, tag)

    # 3. the outbox, late, dead-letter and invalid topics
    outbox = [orjson.loads(r.value) for r in asyncio.run(read_to_end(bootstrap, topics.outbox))]
    late = [orjson.loads(r.value) for r in asyncio.run(read_to_end(bootstrap, topics.late))]
    dlq = asyncio.run(read_to_end(bootstrap, topics.dlq))
    invalid = asyncio.run(read_to_end(bootstrap, topics.invalid))
    try:
        expected = {i: _comparable(orjson.loads(d.outbox_json()))
                    for i, d in reference.decisions.items()}
        found_ids = {d["decision_id"] for d in outbox}
        lost = expected.keys() - found_ids
        assert not lost, (
            f"{tag} {len(lost)} of {len(expected)} decisions missing from the outbox "
            f"(e.g. {sorted(lost)[:3]}); workers: {_state_of(workers)}")
        assert not found_ids - expected.keys(), (
            f"{tag} decisions on the outbox the input does not imply: "
            f"{[d for d in outbox if d['decision_id'] not in expected][:2]}")
        for d in outbox:
            assert _comparable(d) == expected[d["decision_id"]], (
                f"{tag} decision {d['decision_id']} differs from the reference:\n"
                f"worker:    {_comparable(d)}\nreference: {expected[d['decision_id']]}")
        windows: dict[tuple[str, str], set[str]] = {}
        for d in outbox:
            target = d["request_id"] if d["target"] == "request" else d["session_id"]
            windows.setdefault((target, d["rule"]), set()).add(d["decision_id"])
        ref_windows: dict[tuple[str, str], set[str]] = {}
        for i, ref in reference.decisions.items():
            ref_windows.setdefault((ref.target_id, ref.rule), set()).add(i)
        reopened = {k: v for k, v in windows.items() if v != ref_windows.get(k)}
        assert not reopened, f"{tag} windows decided more than once: {list(reopened.items())[:3]}"
        assert sorted(e["event_id"] for e in late) == sorted(reference.late_ids), (
            f"{tag} late events differ from the reference: {late[:3]}")
        assert dlq == [], f"{tag} dead-lettered: {[orjson.loads(r.value) for r in dlq][:2]}"
        assert invalid == [], f"{tag} invalid records: {len(invalid)}"

        # 4. the receiver stores exactly what was meant, per request and session
        got = stored_now(receiver)
        wrong = {k: (got.requests.get(k), v) for k, v in want.requests.items()
                 if got.requests.get(k) != v}
        if wrong:
            logs = "\n".join(w.logs()[-2500:] for w in workers)
            raise AssertionError(
                f"{tag} {len(wrong)} of {len(want.requests)} requests not stored as meant "
                f"(stored, meant), e.g. {list(wrong.items())[:3]}\n{logs}")
        extra = got.requests.keys() - want.requests.keys()
        assert not extra, f"{tag} stored for requests nothing implies: {sorted(extra)[:3]}"
        assert got.sessions == want.sessions, f"{tag} sessions {got.sessions} != {want.sessions}"

        # 5. calls: one per change at most (each decision changes a state at most once)
        calls = accepted_calls(receiver)
        per_target = Counter(_target_of(path) for path, _ in calls.elements())
        excess = {t: n - want.decisions_per_target[t] for t, n in per_target.items()
                  if n > want.decisions_per_target[t]}
        repeats = sum(excess.values())
        if repeats_allowed:
            print(f"{tag} {repeats} calls beyond one per decision "
                  f"(at most {repeats_allowed} allowed)")
        assert repeats <= repeats_allowed, (
            f"{tag} {repeats} calls beyond one per decision (allowed {repeats_allowed}): "
            f"{list(excess.items())[:3]}")
    except AssertionError:
        if dump_to is not None:
            _dump(bootstrap, topics, dump_to)
        raise
    return Outcome(reference, outbox, calls, receiver.history(), decisions)


def _dump(bootstrap: str, topics: Any, path: Any) -> None:
    """For a post-mortem: the input, outbox and late records with partition, offset and
    timestamp (replay the reference over them offline)."""
    with open(path, "wb") as out:
        for name, topic in (("outbox", topics.outbox), ("late", topics.late),
                            ("input", topics.ui_events)):
            for r in asyncio.run(read_to_end(bootstrap, topic)):
                out.write(orjson.dumps({"topic": name, "p": r.partition, "o": r.offset,
                                        "ts": r.timestamp, "v": orjson.loads(r.value or b"null"),
                                        "k": (r.key or b"").decode()}))
                out.write(b"\n")


def _state_of(workers: list[WorkerProcess]) -> list[dict[str, Any]]:
    """What each live worker says about itself, for a failure message."""
    states = []
    for w in workers:
        state: dict[str, Any] = {"exit": w.process.poll() if w.process else None}
        try:
            for name in ("feedback_events_total", "feedback_windows_open",
                         "feedback_consumer_lag_records", "feedback_delivery_retry_queue"):
                state[name] = w.metric_sum(name)
        except Exception as exc:
            state["metrics"] = repr(exc)
        states.append(state)
    return states


def _comparable(decision: dict[str, Any]) -> dict[str, Any]:
    """A decision without ``decided_at``, the only field a re-decision may change."""
    return {k: v for k, v in decision.items() if k != "decided_at"}


def _quiesce(receiver: ReceiverThread, workers: list[WorkerProcess], tag: str) -> None:
    deadline = time.monotonic() + 90
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = len(receiver.history())
        if n != last:
            last, since = n, time.monotonic()
        try:
            busy = sum(w.metric_sum("feedback_windows_open")
                       + w.metric_sum("feedback_delivery_backlog") for w in workers)
        except Exception:  # a worker between restarts: ask again
            busy = 1
        if busy == 0 and time.monotonic() - since > 2:
            return
        time.sleep(0.25)
    raise AssertionError(f"{tag} the system did not come to rest in 90 s")
