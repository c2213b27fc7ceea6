"""How the worker's adapters produce a record: one :class:`Producer` protocol.

Two awaits, two promises.  Awaiting :meth:`Producer.send` returns once the record is queued,
behind every record queued before it through the same producer, so records to one partition
keep the order they were sent in (the watermarks rely on it: a watermark queued after a
forwarded event is read after it).  Awaiting the future it returns returns once the broker
has acknowledged the record.  An adapter that may acknowledge its input only once its outputs
are durable (the windows adapter, delivery) awaits both; each adapter's docstring says which
it awaits and why.

The protocol names no Kafka or Faust type, so adapters and their tests depend on it alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

__all__ = ["Headers", "Producer"]

#: Record headers, in order: (name, value).
Headers = Sequence[tuple[str, bytes]]


class Producer(Protocol):
    """Queues records for the broker (see the module docstring for what each await means)."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> Awaitable[Any]:
        """Queue one record (``partition`` None: the key picks it; ``value`` None: a
        tombstone); the returned future resolves when the broker has acknowledged it."""
        ...
