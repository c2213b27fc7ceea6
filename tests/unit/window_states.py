"""Encoded window states, as the engine writes them to the changelog and RocksDB.

:func:`generate` drives the engine through scenarios that leave every part of the state
layout in the store: open windows (with a decisive cut, an explicit override, signals over
the cap), parked signals (with and without their event's JSON), tombstones, ids of events that
changed nothing, session keys and the stream-time record.  Event ids and times are fixed, so
the output does not depend on the run.

``window_states_v1.json`` next to this module holds what the engine wrote before its state
got named slot classes (format 1, commit b7a8156); ``test_window_state_format.py`` checks
that every record still decodes and re-encodes to the same bytes.  Run this module to print
the current engine's output (``python -m tests.unit.window_states``).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import orjson

from tests.unit.rules.eventkit import T0, engine, ev
from worker.clock import FakeClock
from worker.validation import Accepted
from worker.windows import DictStore

FIXTURE = Path(__file__).with_name("window_states_v1.json")

R1 = "11111111-1111-4111-8111-111111111111"
R2 = "22222222-2222-4222-8222-222222222222"
R3 = "33333333-3333-4333-8333-333333333333"
R4 = "44444444-4444-4444-8444-444444444444"
SESSION = "sess-ü-42"
MIN = 60_000


def _id(n: int) -> str:
    return str(uuid.UUID(int=n, version=4))


def _scenario_open() -> list[tuple[str, int | None, dict[str, object]]]:
    """Open windows: explicit override, signals over the cap, a cut, parked signals."""
    return [
        ("response_shown", 0, {"request_id": R1, "prompt_text": "Wie drehe ich den Schlüssel?"}),
        ("response_copied", 1_000, {"request_id": R1}),
        ("message_sent", 2_000, {"request_id": R1, "text": "Danke — und für die EU?"}),
        ("response_copied", 3_000, {"request_id": R1}),
        ("response_shared", 4_000, {"request_id": R1}),
        ("result_clicked", 500, {"request_id": R1, "result_id": "a"}),  # parked, with its JSON
        ("score_reported", 700, {"request_id": R1, "scores": {"quality": 4, "ok": True}}),
        ("feedback_given", 6_000, {"request_id": R1, "rating": False}),  # explicit_ms
        ("suggestion_shown", 0, {"request_id": R2}),
        ("suggestion_accepted", 1_000, {"request_id": R2}),  # cut
        ("suggestion_rejected", 1_500, {"request_id": R2}),  # after the cut: other ids
        ("session_feedback_given", 2_500, {"request_id": None, "rating": True}),
        ("score_reported", 5_500, {"request_id": R2, "scores": {"relevance": 3}}),  # parked
        ("result_clicked", 5_800, {"request_id": R2, "result_id": "c"}),  # parked, with JSON
    ]


def _scenario_closed() -> list[tuple[str, int | None, dict[str, object]]]:
    """A closed window's tombstone, a late event's id, a parked signal far ahead."""
    return [
        ("results_shown", 0, {"request_id": R3, "result_count": 2, "result_ids": ["a", "b"]}),
        ("result_clicked", 1_000, {"request_id": R3, "result_id": "b"}),
        ("ticket_opened", 5 * MIN + 6_000, {"request_id": R4, "ticket_id": "T-7"}),
        ("page_left", 5 * MIN + 6_500, {"request_id": R4}),  # no engagement window: parked
        ("result_clicked", 2_000, {"request_id": R3, "result_id": "a"}),  # window_closed
    ]


def _run(
    events: list[tuple[str, int | None, dict[str, object]]], first_id: int, max_signals: int
) -> dict[str, str]:
    store = DictStore()
    eng = engine(store, clock=FakeClock(T0), max_signals=max_signals)
    for n, (type_, at_ms, fields) in enumerate(events):
        request_id = fields.pop("request_id", R1)
        accepted: Accepted = ev(
            type_,
            at_ms or 0,
            request_id=request_id if isinstance(request_id, str) else None,
            event_id=_id(first_id + n),
            session_id=SESSION,
            **fields,
        )
        eng.process(accepted)
    return {key: raw.decode() for key, raw in sorted(store.data.items())}


def generate() -> dict[str, dict[str, str]]:
    """Scenario name -> store key -> encoded record (UTF-8 text of the stored bytes)."""
    return {
        "open": _run(_scenario_open(), 1_000, max_signals=3),
        "closed": _run(_scenario_closed(), 2_000, max_signals=200),
    }


def load_fixture() -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = orjson.loads(FIXTURE.read_bytes())
    return data


if __name__ == "__main__":
    sys.stdout.buffer.write(orjson.dumps(generate(), option=orjson.OPT_INDENT_2) + b"\n")
