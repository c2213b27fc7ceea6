"""A Helicone-compatible server for tests and the demo: answers, stores, misbehaves like it.

DESIGN 2, 5 and 6 say what it must do.

This module is its public entry point and standalone process (:func:`serve`, :func:`main`);
the parts have one job each: :mod:`~worker.devtools.helicone_store` models what Helicone
*stores* (pure), :mod:`~worker.devtools.receiver_server` is the aiohttp adapter that answers,
records and runs the store's consumer, :mod:`~worker.devtools.receiver_answers` validates and
shapes answers, :mod:`~worker.devtools.receiver_limits` limits rates,
:mod:`~worker.devtools.receiver_faults` misbehaves on demand and
:mod:`~worker.devtools.receiver_admin` drives all that over HTTP.

Answering the write calls.  Checks run in Helicone's order::

    injected fault        latency, then a forced status or a connection reset
    authentication        no/unknown key -> 401 {"error", "trace"}; read-only key -> 403
    rate limit            over `rate_limit` calls per `rate_window_s` -> 429 + Retry-After;
                          every answer from here on carries RateLimit-Policy/-Limit/-Remaining/
                          -Reset (express-rate-limit `standardHeaders: true`, IETF draft 6)
    body validation       malformed JSON -> 400; wrong shape or extra field -> 422
                          {"message": "Validation Failed", "details": {...}}
    path id               request id not UUID v1-v5 -> 500 "Invalid requestId: ..."
                          a session id listed in `unknown_sessions` -> 500 "No request found"
    write                 score with a non-integer number -> 500 (as Helicone's insert fails)
                          request feedback / score -> 201, session feedback -> 200,
                          body {"data": null, "error": null}

Storing.  Each accepted request feedback or score call becomes a scores message
``{request_id, scores: {key: int}, created_at_ms}``: ``/feedback {"rating": true}`` is
``{"helicone-score-feedback": 1}``; ``/score`` keeps integer keys and stores a boolean ``k`` as
``k-hcone-bool`` 1/0.  A message is visible to the consumer ``ingestion_delay_s`` after the call
(Helicone: 10 minutes).  Every ``batch_interval_s`` the consumer takes the visible messages,
keeps only the latest per request, drops those of unknown requests (answered 2xx all the same)
and merges the rest into the stored scores; a kept message with ``helicone-score-feedback``
sets the feedback rating.  So ``/feedback`` then ``/score`` in one batch loses the rating, and
one ``/score`` that carries ``helicone-score-feedback`` stores both.  Session feedback is stored
at once per session id.  ``GET /v1/request/{id}`` reads a request back (own limit, 600 per 5 min
by default): ``{"data": {"request_id", "scores", "feedback_rating", "properties"}, "error":
null}``, or 500 ``{"data": null, "error": "Request not found"}`` for an unknown request.

Sources: see :mod:`worker.devtools.receiver_answers`.

In-process use (tests)::

    async with Receiver(rate_limit=2) as receiver:
        client = HeliconeClient(key, base_url=receiver.url)
        receiver.fail_next(2, status=503, retry_after=1)
        ...
        await receiver.wait_for(3, path_prefix="/v1/request/")   # a signal, not a sleep
        await receiver.settle()                                  # consume what is queued now
        assert receiver.stored()[request_id] == StoredRequest({...}, feedback=True)

From another process (the demo, docker-compose) run :func:`serve` or
``python -m worker.devtools.receiver --port 8585`` and drive faults over HTTP:
``POST /_admin/faults`` with ``{"status": 429, "count": 3, "retry_after": "2"}``,
``{"reset": true}``, ``{"status": 503, "for_s": 10}`` or ``{"latency_s": 0.5}``, and the
other routes of :mod:`worker.devtools.receiver_admin` (unauthenticated: loopback only).
Helicone's dataset API is mounted from :mod:`worker.devtools.receiver_datasets`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable, Collection

from worker.devtools.helicone_store import (
    BOOL_SUFFIX,
    FEEDBACK_KEY,
    BatchResult,
    HeliconeStore,
    KnownRequests,
    ScoresMessage,
    StoreCounters,
    StoredRequest,
    feedback_message,
    score_message,
)
from worker.devtools.receiver_answers import HELICONE_KEY_PREFIX
from worker.devtools.receiver_faults import Fault
from worker.devtools.receiver_limits import FixedWindowLimiter, RateDecision
from worker.devtools.receiver_server import Received, Receiver

__all__ = [
    "BOOL_SUFFIX",
    "FEEDBACK_KEY",
    "HELICONE_KEY_PREFIX",
    "BatchResult",
    "Fault",
    "FixedWindowLimiter",
    "HeliconeStore",
    "RateDecision",
    "Received",
    "Receiver",
    "ScoresMessage",
    "StoreCounters",
    "StoredRequest",
    "feedback_message",
    "main",
    "score_message",
    "serve",
]


# --------------------------------------------------------------------------- running it alone


async def serve(
    host: str = "127.0.0.1",
    port: int = 8585,
    *,
    api_keys: Collection[str] | None = None,
    read_only_keys: Collection[str] = (),
    unknown_sessions: Collection[str] = (),
    rate_limit: int | None = None,
    rate_window_s: float = 300.0,
    on_ready: Callable[[Receiver], None] | None = None,
    read_rate_limit: int | None = 600,
    read_rate_window_s: float = 300.0,
    batch_interval_s: float = 0.05,
    ingestion_delay_s: float = 0.0,
    known_requests: KnownRequests = None,
) -> None:
    """Run a receiver until cancelled; ``on_ready`` gets it once it listens (default: print)."""
    async with Receiver(
        host=host,
        port=port,
        api_keys=api_keys,
        read_only_keys=read_only_keys,
        unknown_sessions=unknown_sessions,
        rate_limit=rate_limit,
        rate_window_s=rate_window_s,
        read_rate_limit=read_rate_limit,
        read_rate_window_s=read_rate_window_s,
        batch_interval_s=batch_interval_s,
        ingestion_delay_s=ingestion_delay_s,
        known_requests=known_requests,
    ) as receiver:
        if on_ready is not None:
            on_ready(receiver)
        else:
            print(f"Helicone-compatible receiver listening on {receiver.url}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m worker.devtools.receiver``: the receiver as a standalone process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8585, help="0 picks a free port")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help="accepted key (repeatable); default: any sk-helicone-... key",
    )
    parser.add_argument("--read-only-key", action="append", default=[], dest="read_only_keys")
    parser.add_argument("--unknown-session", action="append", default=[], dest="unknown_sessions")
    parser.add_argument("--rate-limit", type=int, default=None, help="write calls per window")
    parser.add_argument("--rate-window-s", type=float, default=300.0)
    parser.add_argument(
        "--read-rate-limit",
        type=_optional_int,
        default=600,
        help="GET /v1/request/{id} calls per read window (Helicone: 600); 'none': unlimited",
    )
    parser.add_argument("--read-rate-window-s", type=float, default=300.0)
    parser.add_argument(
        "--batch-interval-s", type=float, default=0.05, help="how often scores are consumed"
    )
    parser.add_argument(
        "--ingestion-delay-s",
        type=float,
        default=0.0,
        help="delay before a call's scores can be consumed (Helicone: 600)",
    )
    parser.add_argument(
        "--known-request",
        action="append",
        dest="known_requests",
        help="a request id Helicone has logged (repeatable); default: every valid UUID",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it is meant to stop
        asyncio.run(serve(**vars(args)))


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


if __name__ == "__main__":
    main()
