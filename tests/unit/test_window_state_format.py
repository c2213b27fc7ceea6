"""The stored window state keeps its wire format (DESIGN 4: changelogs and RocksDB outlive
a release).

``window_states_v1.json`` holds records the engine wrote (:mod:`tests.unit.window_states`
says how they were made).  A worker of this version must read them, and must write what it
would have written then: a replayed changelog may mix records of both.
"""

from __future__ import annotations

import orjson
import pytest

from tests.unit.rules.eventkit import engine
from tests.unit.window_states import generate, load_fixture
from worker.windows import META_KEY, DictStore, StateFormatError
from worker.windows.state import KeyState

OPEN_WINDOWS = {
    "open": {"engagement": 1, "code_suggestion": 1},
    "closed": {"ticket_resolution": 1},
}


def test_the_engine_still_writes_the_recorded_states() -> None:
    """The whole path (rules' extracted data, engine, codec) writes what it wrote then.

    A deliberate change of what a rule stores makes this fail: then change this expectation,
    never the recorded file, which the round trip below needs as written by the old engine.
    """
    assert generate() == load_fixture()


def test_an_engine_rebuilds_from_the_recorded_states() -> None:
    for scenario, records in load_fixture().items():
        store = DictStore({key: raw.encode() for key, raw in records.items()})
        eng = engine(store)
        eng.rebuild()
        assert eng.stream_time_ms == orjson.loads(records[META_KEY])["stream_time_ms"]
        opened = {rule: n for rule, n in eng.windows_open.items() if n}
        assert opened == OPEN_WINDOWS[scenario]


def test_each_recorded_state_decodes_and_encodes_to_the_same_bytes() -> None:
    checked = 0
    for records in load_fixture().values():
        for key, text in records.items():
            if key == META_KEY:
                continue
            raw = text.encode()
            state, stamp = KeyState.load(key, raw)
            assert state.dump(stamp) == raw
            checked += 1
    assert checked == 5


def test_the_recorded_states_fill_every_slot() -> None:
    """The round trip above means something only if the records use every field."""
    states = [
        KeyState.load(key, text.encode())[0]
        for records in load_fixture().values()
        for key, text in records.items()
        if key != META_KEY
    ]
    windows = [w for s in states for w in s.windows]
    parked = [h for s in states for h in s.parked]
    assert any(w.cut is not None for w in windows)
    assert any(w.explicit_ms is not None for w in windows)
    assert any(w.overflow for w in windows)
    assert {h.event_json is None for h in parked} == {True, False}
    assert any(s.tombs for s in states) and any(s.other for s in states)


def test_a_window_without_explicit_ms_loads_and_gains_it() -> None:
    """Windows written before the explicit override had eight fields."""
    anchor = [1, "e1", "response_shown", None]
    old = orjson.dumps([1, 5, [["engagement", 1, 60_001, None, anchor, None, [], 0]], [], [], []])
    state, stamp = KeyState.load("k", old)
    assert state.windows[0].explicit_ms is None
    assert state.dump(stamp) == old[: -len(b"]],[],[],[]]")] + b",null]],[],[],[]]"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        orjson.dumps([2, 0, [], [], [], []]),
        orjson.dumps([1, 0, [["engagement", 1]], [], [], []]),
        orjson.dumps([1, 0, [], [[1, "e", "page_left"]], [], []]),
    ],
)
def test_an_unreadable_record_is_refused(raw: bytes) -> None:
    with pytest.raises(StateFormatError):
        KeyState.load("k", raw)
