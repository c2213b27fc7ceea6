"""Caught up (input_backlog == 0): idle close may fire only when nothing is left to process.

The offsets are modelled as they move: a partition is assigned with a committed offset, the
consumer fetches up to the high watermark (its position moves), Faust hands records to the
stream buffer (its read offset moves), the agent processes some of them.  Caught up must mean
exactly "every record below the high watermark was processed".
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.kafka import input_backlog


def input_caught_up(**offsets: int | None) -> bool:
    """What the worker checks before idle close: nothing left to process."""
    return input_backlog(**offsets) == 0


def test_unknown_end_is_never_caught_up() -> None:
    assert not input_caught_up(highwater=None, processed=None, handed_out=None, position=None)
    assert not input_caught_up(highwater=-1, processed=5, handed_out=5, position=6)


def test_fetched_but_unprocessed_records_are_a_backlog() -> None:
    """The soak's restarts: the whole backlog fetched (position at the end) and handed to the
    stream buffer, nothing processed yet.  The fetch position alone said "caught up"."""
    assert not input_caught_up(highwater=500, processed=None, handed_out=120, position=500)
    assert not input_caught_up(highwater=500, processed=None, handed_out=499, position=500)


def test_committed_at_the_end_is_caught_up_before_any_record() -> None:
    assert input_caught_up(highwater=500, processed=None, handed_out=500, position=500)
    assert not input_caught_up(highwater=500, processed=None, handed_out=400, position=400)


def test_nothing_committed_falls_back_on_the_fetch_position() -> None:
    assert input_caught_up(highwater=0, processed=None, handed_out=None, position=0)
    # a retention-trimmed partition: fetched from its new start, nothing to hand out
    assert input_caught_up(highwater=900, processed=None, handed_out=None, position=900)
    assert not input_caught_up(highwater=900, processed=None, handed_out=None, position=None)
    assert not input_caught_up(highwater=900, processed=None, handed_out=None, position=0)


@given(
    committed=st.integers(0, 50),
    backlog=st.integers(0, 50),
    fetched=st.integers(0, 50),
    handed=st.integers(0, 50),
    done=st.integers(0, 50),
)
def test_caught_up_exactly_when_everything_was_processed(
    committed: int, backlog: int, fetched: int, handed: int, done: int
) -> None:
    highwater = committed + backlog
    fetched = min(fetched, backlog)  # records the consumer fetched past the commit
    handed = min(handed, fetched)  # of those, handed to the stream buffer
    done = min(done, handed)  # of those, processed by the agent
    assert input_caught_up(
        highwater=highwater,
        processed=committed + done - 1 if done else None,
        handed_out=committed + handed - 1 if handed else committed,
        position=committed + fetched,
    ) == (done == backlog)
