"""Stand-ins for worker.faust_compat.stores.TableIO: the local store as one dict per partition, and
changelog sends that are either nothing (MemoryIO) or futures the test resolves
(UnconfirmedIO), so a test decides when, and in which order, the broker confirms them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

K = TypeVar("K", str, bytes)


@dataclass(frozen=True)
class Written:
    """What a confirmed send resolves to: the offset the broker gave the record."""

    offset: int


class MemoryIO(Generic[K]):
    """The local store ("RocksDB") as one dict per partition; nothing is sent."""

    def __init__(self) -> None:
        self.data: dict[int, dict[K, bytes]] = {}
        self.local_writes: list[dict[K, bytes | None]] = []

    def get(self, partition: int, key: K) -> bytes | None:
        return self.data.get(partition, {}).get(key)

    def items(self, partition: int, prefix: K) -> list[tuple[K, bytes]]:
        return [(k, v) for k, v in self.data.get(partition, {}).items() if k.startswith(prefix)]

    def all_items(self) -> Iterator[tuple[K, bytes]]:
        for table in self.data.values():
            yield from table.items()

    def put_local(self, partition: int, entries: dict[K, bytes | None]) -> None:
        self.local_writes.append(dict(entries))
        table = self.data.setdefault(partition, {})
        for key, value in entries.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value

    async def send_changelog(
        self, partition: int, entries: dict[K, bytes | None], owned: Callable[[], bool]
    ) -> list[Awaitable[Any]]:
        return []

    def committed(self, partition: int, offset: int) -> None:
        pass


class UnconfirmedIO(MemoryIO[K]):
    """Each changelog send is recorded and stays unconfirmed until the test resolves its
    future; the offsets the adapter reports as committed are recorded too."""

    def __init__(self) -> None:
        super().__init__()
        self.changelog: list[tuple[int, dict[K, bytes | None]]] = []
        self.sends: list[asyncio.Future[Written]] = []
        self.committed_offsets: list[tuple[int, int]] = []

    async def send_changelog(
        self, partition: int, entries: dict[K, bytes | None], owned: Callable[[], bool]
    ) -> list[Awaitable[Any]]:
        self.changelog.append((partition, dict(entries)))
        sent: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        self.sends.append(sent)
        return [sent]

    def committed(self, partition: int, offset: int) -> None:
        self.committed_offsets.append((partition, offset))
