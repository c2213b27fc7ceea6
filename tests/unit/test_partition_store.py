"""The windows adapter's write buffer: what a flush sends, and in which order."""

from __future__ import annotations

from typing import Any

from worker.agents.windows import PartitionStore
from worker.windows import META_KEY


class RecordingIO:
    """Stands in for TableIO: a dict per partition, and the order of local writes."""

    def __init__(self) -> None:
        self.data: dict[int, dict[str, bytes]] = {}
        self.writes: list[str] = []

    def get(self, partition: int, key: str) -> bytes | None:
        return self.data.get(partition, {}).get(key)

    def put_local(self, partition: int, entries: dict[str, bytes | None]) -> None:
        table = self.data.setdefault(partition, {})
        for key, value in entries.items():
            self.writes.append(key)
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value


def test_stream_time_is_written_last_so_a_cut_flush_never_runs_ahead() -> None:
    io: Any = RecordingIO()
    store = PartitionStore(io, 3)
    store.put(META_KEY, b'{"stream_time_ms":1}')  # first written in this buffer period...
    store.put("a", b"A")
    store.put(META_KEY, b'{"stream_time_ms":2}')
    store.put("b", b"B")
    entries = store.take()
    assert list(entries) == ["3/a", "3/b", f"3/{META_KEY}"]  # ...but sent after the keys
    assert entries[f"3/{META_KEY}"] == b'{"stream_time_ms":2}'
    assert io.writes == list(entries)
    assert store.pending == 0 and store.take() == {}


def test_reads_see_the_buffer_first_and_deletes_reach_the_table() -> None:
    io: Any = RecordingIO()
    store = PartitionStore(io, 0)
    store.put("a", b"A")
    assert store.get("a") == b"A" and io.get(0, "0/a") is None  # buffered, not written yet
    store.take()
    assert store.get("a") == b"A"
    store.delete("a")
    assert store.get("a") is None
    store.take()
    assert io.get(0, "0/a") is None
