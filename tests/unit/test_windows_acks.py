"""Windows.hold / flush: the ordered acknowledgements at-least-once rests on, through the
windows adapter (worker.agents.acks.OrderedAcks holds and releases them).

What must hold (worker.agents.windows): a record is acknowledged only once the broker has
confirmed the window state it changed and every decision sent before it; acknowledgements
of a partition happen in offset order even when a later flush's sends are confirmed first;
a refused send acknowledges nothing on that partition, then or later; and nothing of a
revoked assignment is acknowledged.  Faust commits up to the acknowledged records, so any
of these broken would commit a record whose state or decision the broker never took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tests.unit.rules.eventkit import T0, ev
from tests.unit.table_ios import UnconfirmedIO, Written
from worker.agents.windows import Windows
from worker.clock import FakeClock
from worker.metrics import Metrics
from worker.producing import Headers
from worker.rules import RuleConfig

REQUESTS = [f"5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e{n:02x}" for n in range(16)]


class Harness:
    def __init__(self) -> None:
        self.io: UnconfirmedIO[str] = UnconfirmedIO()
        self.acked: list[int] = []
        self.failures: list[BaseException] = []
        self.decisions: list[asyncio.Future[None]] = []
        self.windows = Windows(
            io=self.io,  # type: ignore[arg-type]
            config=RuleConfig(), grace_ms=5_000, idle_close_ms=30_000, max_signals=200,
            clock=FakeClock(T0 + 1_000), metrics=Metrics(), producer=self,
            outbox_topic="outbox", late_topic="late", on_failure=self.failures.append,
        )

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, *,
        partition: int | None = None, headers: Headers | None = None,
    ) -> asyncio.Future[None]:
        """The windows adapter's producer: each decision's acknowledgement is a future the
        test resolves."""
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.decisions.append(sent)
        return sent

    def ack(self, n: int) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            self.acked.append(n)

        return ack

    async def two_flushes(self) -> list[asyncio.Future[Written]]:
        """Records 0 and 1 flushed, then 2 and 3: the two changelog sends, unconfirmed."""
        await self.events(range(2))
        await self.windows.flush(0)
        await self.events(range(2, 4))
        await self.windows.flush(0)
        return self.io.sends

    async def events(self, numbers: range, partition: int = 0) -> None:
        """One event of its own request per number, acknowledged as record ``n``."""
        for n in numbers:
            event = ev("response_shown", 1_000 + n, request_id=REQUESTS[n])
            await self.windows.on_event(partition, event, self.ack(n))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_records_are_acked_only_once_their_state_is_confirmed() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.events(range(3))
        await h.windows.flush(0)
        await settle()
        assert h.acked == []  # the changelog write is not confirmed yet
        h.io.sends[0].set_result(Written(offset=41))
        await settle()
        assert h.acked == [0, 1, 2]
        assert h.io.committed_offsets == [(0, 41)]

    asyncio.run(scenario())


def test_a_later_flush_confirmed_first_still_acks_in_offset_order() -> None:
    async def scenario() -> None:
        h = Harness()
        first, second = await h.two_flushes()
        second.set_result(Written(offset=8))
        await settle()
        assert h.acked == []  # records 2 and 3 wait for 0 and 1
        first.set_result(Written(offset=7))
        await settle()
        assert h.acked == [0, 1, 2, 3]

    asyncio.run(scenario())


def test_a_decision_not_yet_confirmed_holds_the_acks_behind_it() -> None:
    async def scenario() -> None:
        h = Harness()
        # A code suggestion shown and accepted, then another request's event far later:
        # stream time closes the suggestion's window and its decision goes out.
        await h.windows.on_event(0, ev("suggestion_shown", 0), h.ack(0))
        await h.windows.on_event(0, ev("suggestion_accepted", 2_000), h.ack(1))
        await h.windows.on_event(
            0, ev("response_shown", 60_000, request_id=REQUESTS[5]), h.ack(2)
        )
        assert len(h.decisions) == 1
        await h.windows.flush(0)
        h.io.sends[0].set_result(Written(offset=3))
        await settle()
        assert h.acked == []  # the state is in, the decision is not
        h.decisions[0].set_result(None)
        await settle()
        assert h.acked == [0, 1, 2]

    asyncio.run(scenario())


def test_a_refused_send_acks_nothing_on_that_partition_then_or_later() -> None:
    async def scenario() -> None:
        h = Harness()
        first, second = await h.two_flushes()
        first.set_exception(RuntimeError("broker refused"))
        second.set_result(Written(offset=9))
        await settle()
        assert h.acked == []
        assert [str(exc) for exc in h.failures] == ["broker refused"]
        assert h.io.committed_offsets == []

    asyncio.run(scenario())


def test_nothing_of_a_revoked_assignment_is_acked() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.events(range(3))
        await h.windows.flush(0)
        h.windows.on_revoked([0])
        h.io.sends[0].set_result(Written(offset=5))
        await settle()
        assert h.acked == []
        await h.events(range(3, 5))  # in flight from before the revocation: dropped
        await h.windows.flush(0)
        await settle()
        assert h.acked == [] and len(h.io.sends) == 1

    asyncio.run(scenario())


def test_partitions_are_acked_independently() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.events(range(2), partition=0)
        await h.windows.flush(0)
        await h.events(range(2, 4), partition=1)
        await h.windows.flush(1)
        p0, p1 = h.io.sends
        p1.set_result(Written(offset=1))
        await settle()
        assert h.acked == [2, 3]  # partition 1 does not wait for partition 0
        p0.set_result(Written(offset=1))
        await settle()
        assert h.acked == [2, 3, 0, 1]

    asyncio.run(scenario())
