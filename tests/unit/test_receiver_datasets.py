"""The receiver's model of Helicone's dataset tables (DatasetStore): no I/O, time passed in."""

from __future__ import annotations

import uuid

from worker.devtools.receiver_datasets import DatasetStore
from worker.events import is_helicone_request_id


def rid() -> str:
    return str(uuid.uuid4())


def store(unknown: frozenset[str] = frozenset()) -> DatasetStore:
    return DatasetStore(is_known=lambda r: is_helicone_request_id(r) and r not in unknown)


def created(s: DatasetStore, name: str = "good", now_ms: int = 1) -> str:
    status, body = s.create(name, [], meta=None, now_ms=now_ms)
    assert status == 200
    dataset_id: str = body["data"]["datasetId"]
    return dataset_id


def test_adding_twice_makes_two_rows_as_helicone_does() -> None:
    s = store()
    d = created(s)
    r = rid()
    assert s.add(d, [r], now_ms=2)[0] == 200
    assert s.add(d, [r], now_ms=3)[0] == 200
    assert s.request_ids(d) == [r, r]
    assert s.count(d) == 2


def test_an_id_that_is_not_uuid_shaped_fails_the_insert_and_writes_nothing() -> None:
    s = store()
    d = created(s)
    status, body = s.add(d, [rid(), "nope"], now_ms=2)
    assert status == 500 and "invalid input syntax for type uuid" in body["error"]
    assert s.request_ids(d) == []


def test_an_unknown_request_answers_500_after_its_rows_are_stored() -> None:
    ghost = rid()
    s = store(frozenset({ghost}))
    d = created(s)
    ok = rid()
    status, body = s.add(d, [ok, ghost], now_ms=2)
    assert status == 500 and body["data"] is None and ghost in body["error"]
    assert s.request_ids(d) == [ok, ghost]


def test_a_uuid_v7_is_stored_but_its_copy_fails_as_it_was_never_logged() -> None:
    s = store()
    d = created(s)
    v7 = "0190a5f2-7c1e-7abc-8def-0123456789ab"
    assert s.add(d, [v7], now_ms=2)[0] == 500
    assert s.request_ids(d) == [v7]


def test_adding_to_an_unknown_dataset_is_a_foreign_key_error() -> None:
    status, body = store().add(str(uuid.uuid4()), [rid()], now_ms=2)
    assert status == 500 and "foreign key" in body["error"]


def test_rows_come_newest_first_and_page_by_offset() -> None:
    s = store()
    d = created(s)
    first, second, third = rid(), rid(), rid()
    s.add(d, [first], now_ms=10)
    s.add(d, [second, third], now_ms=20)
    assert [r.origin_request_id for r in s.rows(d, offset=0, limit=10)] == [third, second, first]
    assert [r.origin_request_id for r in s.rows(d, offset=1, limit=1)] == [second]
    assert {r.created_at_ms for r in s.rows(d, offset=0, limit=2)} == {20}
    assert s.rows(str(uuid.uuid4()), offset=0, limit=5) == []


def test_datasets_list_newest_first_and_names_may_repeat() -> None:
    s = store()
    old, new = created(s, "same", now_ms=1), created(s, "same", now_ms=2)
    assert [d.id for d in s.by_name("same")] == [new, old]
    assert [d.id for d in s.datasets([old])] == [old]


def test_remove_takes_row_ids() -> None:
    s = store()
    d = created(s)
    s.add(d, [rid(), rid()], now_ms=2)
    row = s.rows(d, offset=0, limit=1)[0]
    assert s.remove(d, [row.id])[0] == 200
    assert s.count(d) == 1


def test_create_with_request_ids_adds_them() -> None:
    s = store()
    r = rid()
    status, body = s.create("x", [r], meta={"k": 1}, now_ms=1)
    assert status == 200
    assert s.request_ids(body["data"]["datasetId"]) == [r]
