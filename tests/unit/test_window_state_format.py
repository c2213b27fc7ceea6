"""The stored window state keeps its wire format (DESIGN 4: changelogs and RocksDB outlive
a release).

``window_states_v1.json`` holds records the engine wrote (:mod:`tests.unit.window_states`
says how they were made).  A worker of this version must read them, and must write what it
would have written then: a replayed changelog may mix records of both.
"""

from __future__ import annotations

import orjson

from tests.unit.rules.eventkit import DictStore, engine
from tests.unit.window_states import generate, load_fixture
from worker.windows import META_KEY

OPEN_WINDOWS = {
    "open": {"engagement": 1, "code_suggestion": 1},
    "closed": {"ticket_resolution": 1},
}


def test_the_engine_still_writes_the_recorded_states() -> None:
    assert generate() == load_fixture()


def test_an_engine_rebuilds_from_the_recorded_states() -> None:
    for scenario, records in load_fixture().items():
        store = DictStore({key: raw.encode() for key, raw in records.items()})
        eng = engine(store)
        eng.rebuild()
        assert eng.stream_time_ms == orjson.loads(records[META_KEY])["stream_time_ms"]
        opened = {rule: n for rule, n in eng.windows_open.items() if n}
        assert opened == OPEN_WINDOWS[scenario]
