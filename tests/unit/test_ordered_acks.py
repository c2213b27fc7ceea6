"""OrderedAcks: held acks released in hold order, only after their flush is confirmed.

The windows adapter's and delivery's tests (test_windows_acks, test_buffered_tables) check
the same through their adapters; here the property is drawn: any number of flushes, each
covering the records held since the one before, confirmed or refused in any order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from worker.agents.acks import Flushed, OrderedAcks


class Run:
    def __init__(self) -> None:
        self.acked: list[int] = []
        self.failures: list[BaseException] = []
        self.acks = OrderedAcks("test records", self.failures.append)
        self.sends: list[asyncio.Future[int]] = []
        self.confirmed: list[list[Any]] = []
        self.held = 0

    def hold(self) -> None:
        n = self.held
        self.held += 1

        async def ack() -> None:
            self.acked.append(n)

        self.acks.hold(0, ack)

    async def flush(self) -> None:
        async def write(owned: Callable[[], bool]) -> Flushed:
            sent: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self.sends.append(sent)
            return Flushed([sent], self.confirmed.append)

        await self.acks.flush(0, write)


async def settle() -> None:
    """Enough loop turns for a confirmation to pass down a chain of every flush drawn."""
    for _ in range(100):
        await asyncio.sleep(0)


@given(
    st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=8),
    st.data(),
)
async def test_acks_follow_hold_order_whatever_order_flushes_are_confirmed_in(
    per_flush: list[int], data: st.DataObject
) -> None:
    run = Run()
    covered: list[int] = []  # per flush: the records held up to it
    for holds in per_flush:
        for _ in range(holds):
            run.hold()
        await run.flush()
        covered.append(run.held)
    order = data.draw(st.permutations(range(len(run.sends))))
    refused = data.draw(st.none() | st.sampled_from(range(len(run.sends))))
    for i in order:
        if i == refused:
            run.sends[i].set_exception(RuntimeError("refused"))
        else:
            run.sends[i].set_result(i)
        await settle()
        # a prefix of the hold order, up to the newest flush whose flushes before it are all
        # confirmed (and none refused)
        done = 0
        for j, upto in enumerate(covered):
            if run.sends[j].done() and j != refused:
                done = upto
            else:
                break
        assert run.acked == list(range(done))
    if refused is None:
        assert run.acked == list(range(run.held))
    else:  # nothing from the refused flush on, then or later
        assert run.acked == list(range(covered[refused - 1] if refused else 0))
    assert len(run.failures) == (1 if refused is not None else 0)


async def test_nothing_held_before_a_revocation_is_acked_even_when_confirmed() -> None:
    run = Run()
    run.hold()
    await run.flush()
    run.acks.on_revoked([0])
    run.sends[0].set_result(1)
    run.hold()  # a record of the revoked partition still in flight: dropped
    await run.flush()
    await settle()
    assert run.acked == [] and run.confirmed == [] and len(run.sends) == 1
    run.acks.on_assigned([0])
    run.hold()
    await run.flush()
    run.sends[1].set_result(2)
    await settle()
    assert run.acked == [2] and run.confirmed == [[2]]


async def test_a_flush_revoked_while_it_sends_acks_nothing() -> None:
    run = Run()
    run.hold()

    async def write(owned: Callable[[], bool]) -> Flushed:
        run.acks.on_revoked([0])  # revoked while the send is being made
        assert not owned()
        sent: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        sent.set_result(0)
        return Flushed([sent], run.confirmed.append)

    await run.acks.flush(0, write)
    await settle()
    assert run.acked == [] and run.confirmed == []


async def test_held_acks_with_nothing_written_still_wait_for_the_flush_before() -> None:
    run = Run()
    run.hold()
    await run.flush()

    async def nothing(owned: Callable[[], bool]) -> None:
        return None

    run.hold()
    await run.acks.flush(0, nothing)
    await settle()
    assert run.acked == []
    run.sends[0].set_result(0)
    await settle()
    assert run.acked == [0, 1]


async def test_a_flush_refused_before_it_was_queued_stops_the_partition() -> None:
    """A producer that is closed (or whose buffer stayed full) raises at send time: the acks
    that flush took are never released, nor any later ones of the assignment, while the
    records confirmed before it are."""
    run = Run()
    run.hold()
    await run.flush()

    async def refuse(owned: Callable[[], bool]) -> Flushed:
        raise RuntimeError("ProducerClosed")

    run.hold()
    await run.acks.flush(0, refuse)
    assert [str(exc) for exc in run.failures] == ["ProducerClosed"]
    run.hold()
    await run.flush()
    for sent in run.sends:
        sent.set_result(0)
    await settle()
    assert run.acked == [0]
    run.acks.on_revoked([0])  # the next assignment starts clean
    run.acks.on_assigned([0])
    run.hold()
    await run.flush()
    run.sends[-1].set_result(0)
    await settle()
    assert run.acked == [0, 3]
