"""Health, readiness and supervision: what ``/healthz`` and ``/readyz`` answer, and why.

* :class:`Liveness` counts agent crashes over a sliding window; :func:`healthz` calls the
  worker unhealthy while ``limit`` of them fall within ``window_ms``.  Faust restarts a
  crashed agent in place, so the process keeps answering HTTP while a record or a bad state
  crashes it again and again; only this count lets a liveness probe see the loop (and
  restart the container, which clears in-memory state).
* :func:`supervised` wraps an agent so each of its crashes reaches :class:`Liveness` before
  it propagates to Faust, which restarts the agent.
* :func:`stop_on_failure` is what a refused flush does: the worker crashes, so it restarts
  and replays from its last commit rather than going on with records it can never
  acknowledge; unless it is already stopping, when the refusal is expected (the producer
  closes before the app's tasks end) and the unacknowledged records are simply read again by
  the partitions' next owner.  Crashing then would turn a clean SIGTERM into exit code 1.
* :class:`Readiness` collects what ``/readyz`` checks beyond Faust's own state: whether the
  first rebalance has completed, and named checks that components register (delivery).
  :func:`readyz` is ready only when every check passes.

At run time this module imports only the standard library (:mod:`worker.clock` is read for
type checking alone), so any adapter can import it and none has to import :mod:`worker.app`
for it; the Faust web views in :mod:`worker.app` only turn these answers into responses.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from worker.clock import Clock

__all__ = [
    "Liveness", "Readiness", "Stoppable", "healthz", "readyz", "stop_on_failure", "supervised",
]

log = logging.getLogger(__name__)

#: A stream an agent consumes (Faust's ``StreamT``; any type will do here).
S = TypeVar("S")


def _ignore(agent: str) -> None:
    """The default crash hook: nothing beyond the count itself."""


@dataclass
class Liveness:
    """Agent crashes within the last ``window_ms`` on ``clock``.

    Every crash is appended with its time and old ones are dropped when counted, so
    :meth:`recent_crashes` is exactly the number within the window ending now.
    ``on_crash`` gets the crashed agent's name each time (the worker counts it in a metric).
    """

    clock: Clock
    #: This many crashes within :attr:`window_ms` make the worker unhealthy.
    limit: int = 3
    window_ms: int = 60_000
    on_crash: Callable[[str], None] = _ignore
    _crashes: deque[int] = field(default_factory=deque)

    def crashed(self, agent: str) -> None:
        """Handler ``agent`` raised on a record: count it, and tell ``on_crash``."""
        self._crashes.append(self.clock.now_ms())
        self.on_crash(agent)

    def recent_crashes(self) -> int:
        cutoff = self.clock.now_ms() - self.window_ms
        while self._crashes and self._crashes[0] < cutoff:
            self._crashes.popleft()
        return len(self._crashes)


def supervised(
    name: str, agent: Callable[[S], Awaitable[None]], liveness: Liveness
) -> Callable[[S], Awaitable[None]]:
    """``agent``, with each crash counted in ``liveness`` before Faust restarts it.

    The exception is re-raised unchanged, so Faust's own restart and logging still happen.
    The wrapper is named ``<name>_agent``, the name Faust shows for it.
    """

    async def run(stream: S) -> None:
        try:
            await agent(stream)
        except Exception:
            liveness.crashed(name)
            raise

    run.__name__ = run.__qualname__ = f"{name}_agent"
    return run


class Stoppable(Protocol):
    """What :func:`stop_on_failure` needs of the app (a Faust app is one)."""

    @property
    def should_stop(self) -> bool: ...

    async def crash(self, reason: BaseException) -> None: ...


def stop_on_failure(app: Stoppable) -> Callable[[BaseException], object]:
    """The ``on_failure`` of the adapters' flushes: crash ``app``, unless it is stopping."""

    def on_failure(exc: BaseException) -> object:
        if app.should_stop:
            log.warning("a flush was refused while the worker stops (%r): its records stay "
                        "unacknowledged and are read again by their next owner", exc)
            return None
        return asyncio.ensure_future(app.crash(exc))

    return on_failure


@dataclass
class Readiness:
    """What ``/readyz`` checks beyond Faust's state; components add named checks."""

    #: Set once the first rebalance completed: before that the worker owns no partitions.
    joined: bool = False
    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)


def healthz(liveness: Liveness) -> tuple[dict[str, Any], int]:
    """``/healthz``'s body and status: 503 in a crash loop, else 200."""
    crashes = liveness.recent_crashes()
    if crashes >= liveness.limit:
        return {"status": "crash_loop", "agent_crashes_last_minute": crashes}, 503
    return {"status": "ok"}, 200


def readyz(
    readiness: Readiness, *, rebalancing: bool, recovery_done: bool
) -> tuple[dict[str, Any], int]:
    """``/readyz``'s body and status: 200 only when every check passes.

    ``rebalancing`` and ``recovery_done`` are Faust's (the app's rebalance flag, the table
    manager's recovery); a worker mid-rebalance is not ready even after it first joined.
    """
    checks = {
        "joined_group": readiness.joined and not rebalancing,
        "recovery_done": recovery_done,
        **{name: check() for name, check in readiness.checks.items()},
    }
    ready = all(checks.values())
    return {"ready": ready, "checks": checks}, 200 if ready else 503
