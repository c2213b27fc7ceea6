"""A Helicone-compatible HTTP server for tests and the demo, with fault injection (DESIGN 2, 6).

It answers the three write calls the worker makes the way Helicone does, records every call it
receives, and can be told to misbehave.  Checks run in Helicone's order::

    injected fault        latency, then a forced status or a connection reset
    authentication        no/unknown key -> 401 {"error", "trace"}; read-only key -> 403
    rate limit            over `rate_limit` calls per `rate_window_s` -> 429 + Retry-After
    body validation       malformed JSON -> 400; wrong shape or extra field -> 422
                          {"message": "Validation Failed", "details": {...}}
    path id               request id not UUID v1-v5 -> 500 "Invalid requestId: ..."
                          a session id listed in `unknown_sessions` -> 500 "No request found"
    write                 score with a non-integer number -> 500 (as Helicone's insert fails)
                          request feedback / score -> 201, session feedback -> 200,
                          body {"data": null, "error": null}

In-process use (tests)::

    async with Receiver(rate_limit=2) as receiver:
        client = HeliconeClient(key, base_url=receiver.url)
        receiver.fail_next(2, status=503, retry_after=1)
        ...
        await receiver.wait_for(3, path_prefix="/v1/request/")   # a signal, not a sleep

From another process (the demo, docker-compose) run :func:`serve` or
``python -m worker.devtools.receiver --port 8585`` and drive faults over HTTP:
``POST /_admin/faults`` with ``{"status": 429, "count": 3, "retry_after": "2"}``,
``{"reset": true}``, ``{"status": 503, "for_s": 10}`` or ``{"latency_s": 0.5}``;
``DELETE /_admin/faults`` clears them; ``GET /_admin/records`` lists what was received.
The admin routes are unauthenticated: bind the receiver to loopback or a private network only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

from worker.clock import Clock, SystemClock
from worker.events import is_helicone_request_id

__all__ = ["HELICONE_KEY_PREFIX", "Fault", "Received", "Receiver", "main", "serve"]

#: With no explicit key list, any key with this prefix is accepted (EU keys included).
HELICONE_KEY_PREFIX: Final = "sk-helicone-"

_OK: Final = {"data": None, "error": None}
_API_PREFIX: Final = "/v1/"


@dataclass(frozen=True, slots=True)
class Received:
    """One call to the API routes and how it was answered (``status=None``: connection reset).

    The ``Authorization`` header is deliberately not kept.
    """

    method: str
    path: str
    body: Any
    at_ms: int
    status: int | None

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status <= 299


@dataclass(slots=True)
class Fault:
    """A misbehaviour for matching calls: a forced answer, or a reset when ``reset`` is set.

    Active while ``remaining`` calls are left, or, when ``remaining`` is None, until
    ``until_ms`` on the receiver's clock.
    """

    status: int = 500
    reset: bool = False
    retry_after: str | None = None
    body: Any = None
    remaining: int | None = 1
    until_ms: int | None = None
    path_prefix: str = ""

    def applies(self, path: str, now_ms: int) -> bool:
        if not path.startswith(self.path_prefix):
            return False
        if self.remaining is not None:
            return self.remaining > 0
        return self.until_ms is not None and now_ms < self.until_ms

    def expired(self, now_ms: int) -> bool:
        if self.remaining is not None:
            return self.remaining <= 0
        return self.until_ms is None or now_ms >= self.until_ms


class Receiver:
    """The fake Helicone: start with ``async with`` (or :meth:`start`/:meth:`stop`).

    ``api_keys``: the keys accepted for writes (None: any key starting ``sk-helicone-``).
    ``read_only_keys``: keys that authenticate but may not write (403).
    ``unknown_sessions``: session ids answered with Helicone's 500 "No request found".
    ``rate_limit``: calls allowed per fixed window of ``rate_window_s`` (None: unlimited).
    ``clock``: drives the rate window, fault time spans and record times.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Collection[str] | None = None,
        read_only_keys: Collection[str] = (),
        unknown_sessions: Collection[str] = (),
        rate_limit: int | None = None,
        rate_window_s: float = 300.0,
        clock: Clock | None = None,
    ) -> None:
        if rate_limit is not None and rate_limit < 0:
            raise ValueError("rate_limit must be >= 0")
        if not rate_window_s > 0:
            raise ValueError("rate_window_s must be > 0")
        self._host = host
        self._port = port
        self._api_keys = None if api_keys is None else frozenset(api_keys)
        self._read_only_keys = frozenset(read_only_keys)
        self._unknown_sessions = frozenset(unknown_sessions)
        self._rate_limit = rate_limit
        self._rate_window_ms = math.ceil(rate_window_s * 1000)
        self._clock: Clock = clock or SystemClock()
        self.history: list[Received] = []
        self._faults: list[Fault] = []
        self._latency_s = 0.0
        self._window_start_ms: int | None = None
        self._window_calls = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        return f"Receiver(url={self._url!r}, received={len(self.history)})"

    # ---- lifecycle

    @property
    def url(self) -> str:
        """The base URL to give the client, e.g. ``http://127.0.0.1:41234``."""
        if self._url is None:
            raise RuntimeError("the receiver is not running; use `async with Receiver()`")
        return self._url

    async def start(self) -> str:
        """Listen (port 0 picks a free port) and return the base URL."""
        app = web.Application()
        app.router.add_post("/v1/request/{request_id}/feedback", self._request_feedback)
        app.router.add_post("/v1/request/{request_id}/score", self._request_score)
        app.router.add_post("/v1/session/{session_id}/feedback", self._session_feedback)
        app.router.add_post("/_admin/faults", self._admin_add_fault)
        app.router.add_delete("/_admin/faults", self._admin_clear_faults)
        app.router.add_get("/_admin/records", self._admin_records)
        app.router.add_delete("/_admin/records", self._admin_clear_records)
        # A short shutdown timeout: a call parked in injected latency must not hold up stop().
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        host = f"[{host}]" if ":" in host else host
        self._url = f"http://{host}:{port}"
        return self._url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._url = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- what was received

    @property
    def records(self) -> list[Received]:
        """The calls that were accepted (2xx), in arrival order."""
        return [r for r in self.history if r.accepted]

    def count(self, path_prefix: str = "") -> int:
        """How many accepted calls have a path starting with ``path_prefix``."""
        return sum(1 for r in self.history if r.accepted and r.path.startswith(path_prefix))

    def attempts(self, path_prefix: str = "") -> int:
        """How many calls arrived at all (accepted, rejected, faulted or reset)."""
        return sum(1 for r in self.history if r.path.startswith(path_prefix))

    async def wait_for(
        self, n: int, *, path_prefix: str = "", timeout_s: float = 5.0
    ) -> list[Received]:
        """Wait until ``n`` accepted calls match ``path_prefix``; return those records.

        Raises ``TimeoutError`` naming how many arrived, so a failing test says what it saw.
        """
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.count(path_prefix) >= n), timeout_s
                )
            except TimeoutError:
                raise TimeoutError(
                    f"waited {timeout_s} s for {n} accepted calls under {path_prefix!r}; "
                    f"got {self.count(path_prefix)} ({self.attempts(path_prefix)} arrived)"
                ) from None
        return [r for r in self.records if r.path.startswith(path_prefix)]

    def clear_records(self) -> None:
        self.history.clear()

    # ---- fault injection

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        retry_after: str | float | None = None,
        body: Any = None,
        path_prefix: str = "",
    ) -> None:
        """Answer the next ``count`` matching calls with ``status`` (and ``Retry-After``)."""
        self._faults.append(
            Fault(
                status=status,
                retry_after=_header_value(retry_after),
                body=body,
                remaining=count,
                path_prefix=path_prefix,
            )
        )

    def fail_for(
        self,
        seconds: float,
        *,
        status: int = 503,
        retry_after: str | float | None = None,
        body: Any = None,
        path_prefix: str = "",
    ) -> None:
        """Answer every matching call with ``status`` for the next ``seconds``."""
        self._faults.append(
            Fault(
                status=status,
                retry_after=_header_value(retry_after),
                body=body,
                remaining=None,
                until_ms=self._clock.now_ms() + math.ceil(seconds * 1000),
                path_prefix=path_prefix,
            )
        )

    def reset_next(self, count: int = 1, *, path_prefix: str = "") -> None:
        """Close the connection without answering on the next ``count`` matching calls."""
        self._faults.append(Fault(reset=True, remaining=count, path_prefix=path_prefix))

    def set_latency(self, seconds: float) -> None:
        """Delay every API answer by ``seconds`` (0 turns it off)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency_s = seconds

    def clear_faults(self) -> None:
        """Remove every fault and the latency."""
        self._faults.clear()
        self._latency_s = 0.0

    # ---- API routes

    async def _request_feedback(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, _validate_rating, success=201)

    async def _request_score(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, _validate_scores, success=201)

    async def _session_feedback(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, _validate_rating, success=200)

    async def _handle(
        self,
        request: web.Request,
        validate: Callable[[Any], dict[str, Any]],
        *,
        success: int,
    ) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
            malformed = True
        else:
            malformed = False
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        response = self._answer(request, body, malformed, validate, success)
        if response is None:  # an injected reset: hang up without a word
            if request.transport is not None:
                request.transport.close()
            response = web.Response(status=200)
            status: int | None = None
        else:
            status = response.status
        self.history.append(
            Received(request.method, request.path, body, self._clock.now_ms(), status)
        )
        async with self._changed:
            self._changed.notify_all()
        return response

    def _answer(
        self,
        request: web.Request,
        body: Any,
        malformed: bool,
        validate: Callable[[Any], dict[str, Any]],
        success: int,
    ) -> web.Response | None:
        """The answer Helicone would give (or a fault's), or None for a connection reset."""
        fault = self._take_fault(request.path)
        if fault is not None:
            if fault.reset:
                return None
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            payload = fault.body if fault.body is not None else {"error": "injected fault"}
            return web.json_response(payload, status=fault.status, headers=headers)
        denied = self._authenticate(request.headers.get("Authorization"))
        if denied is not None:
            return denied
        limited = self._rate_limited()
        if limited is not None:
            return limited
        if malformed:
            return web.json_response({"message": "Malformed JSON body"}, status=400)
        details = validate(body)
        if details:
            return web.json_response(
                {"message": "Validation Failed", "details": details}, status=422
            )
        request_id = request.match_info.get("request_id")
        if request_id is not None and not is_helicone_request_id(request_id):
            return web.json_response(
                {"data": None, "error": "Invalid requestId: must be a valid UUID"}, status=500
            )
        if request.match_info.get("session_id") in self._unknown_sessions:
            return web.json_response({"data": None, "error": "No request found"}, status=500)
        scores = body.get("scores") if isinstance(body, dict) else None
        if isinstance(scores, dict) and any(
            isinstance(v, float) and not v.is_integer() for v in scores.values()
        ):
            return web.json_response(
                {"data": None, "error": "invalid input syntax for type integer"}, status=500
            )
        return web.json_response(_OK, status=success)

    def _take_fault(self, path: str) -> Fault | None:
        now_ms = self._clock.now_ms()
        self._faults = [f for f in self._faults if not f.expired(now_ms)]
        for fault in self._faults:
            if fault.applies(path, now_ms):
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    def _authenticate(self, authorization: str | None) -> web.Response | None:
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return _auth_error(401, "Missing or malformed Authorization header")
        if key in self._read_only_keys:
            return _auth_error(403, "This API key does not have write access")
        known = (
            key in self._api_keys
            if self._api_keys is not None
            else (key.startswith(HELICONE_KEY_PREFIX))
        )
        return None if known else _auth_error(401, "Invalid API key")

    def _rate_limited(self) -> web.Response | None:
        if self._rate_limit is None:
            return None
        now_ms = self._clock.now_ms()
        if self._window_start_ms is None or now_ms >= self._window_start_ms + self._rate_window_ms:
            self._window_start_ms, self._window_calls = now_ms, 0
        if self._window_calls >= self._rate_limit:
            left_ms = self._window_start_ms + self._rate_window_ms - now_ms
            wait_s = max(1, math.ceil(left_ms / 1000))
            return web.json_response(
                {"error": "Too many requests, please try again later."},
                status=429,
                headers={"Retry-After": str(wait_s)},
            )
        self._window_calls += 1
        return None

    # ---- admin routes (for a receiver in another process)

    async def _admin_add_fault(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
            if not isinstance(spec, dict):
                raise ValueError("expected a JSON object")
            self._add_fault_from(spec)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(
            {"faults": len(self._faults), "latency_s": self._latency_s}, status=201
        )

    def _add_fault_from(self, spec: Mapping[str, Any]) -> None:
        known = {
            "status",
            "count",
            "for_s",
            "retry_after",
            "reset",
            "latency_s",
            "body",
            "path_prefix",
        }
        if unknown := set(spec) - known:
            raise ValueError(f"unknown fields {sorted(unknown)}; expected some of {sorted(known)}")
        if "latency_s" in spec:
            self.set_latency(float(spec["latency_s"]))
        if not {"status", "reset", "count", "for_s"} & set(spec):
            return  # latency only
        prefix = str(spec.get("path_prefix", ""))
        if spec.get("reset"):
            self.reset_next(int(spec.get("count", 1)), path_prefix=prefix)
            return
        status = int(spec.get("status", 500))
        if not 100 <= status <= 599:
            raise ValueError("status must be 100-599")
        options: dict[str, Any] = {
            "status": status,
            "retry_after": spec.get("retry_after"),
            "body": spec.get("body"),
            "path_prefix": prefix,
        }
        if "for_s" in spec:
            self.fail_for(float(spec["for_s"]), **options)
        else:
            self.fail_next(int(spec.get("count", 1)), **options)

    async def _admin_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"faults": 0, "latency_s": 0.0})

    async def _admin_records(self, request: web.Request) -> web.Response:
        return web.json_response({"records": [asdict(r) for r in self.history]})

    async def _admin_clear_records(self, request: web.Request) -> web.Response:
        self.clear_records()
        return web.json_response({"records": []})


# --------------------------------------------------------------------------- validation


def _validate_rating(body: Any) -> dict[str, Any]:
    """Problems with a ``{"rating": bool}`` body, in tsoa's ``details`` shape (empty: fine)."""
    if not isinstance(body, dict):
        return {"requestBody": {"message": "invalid object", "value": body}}
    details: dict[str, Any] = {}
    if not isinstance(body.get("rating"), bool):
        details["requestBody.rating"] = {
            "message": "'rating' is required" if "rating" not in body else "invalid boolean value",
            "value": body.get("rating"),
        }
    details.update(_extra_fields(body, {"rating"}))
    return details


def _validate_scores(body: Any) -> dict[str, Any]:
    """Problems with a ``{"scores": {name: number | bool}}`` body (empty: fine).

    Non-integer numbers pass validation, as at Helicone, and fail later with a 500.
    """
    if not isinstance(body, dict):
        return {"requestBody": {"message": "invalid object", "value": body}}
    details: dict[str, Any] = dict(_extra_fields(body, {"scores"}))
    scores = body.get("scores")
    if not isinstance(scores, dict):
        details["requestBody.scores"] = {"message": "invalid object", "value": scores}
        return details
    for name, value in scores.items():
        if not isinstance(value, int | float):  # bool is an int here, and allowed
            details[f"requestBody.scores.{name}"] = {
                "message": "invalid number or boolean value",
                "value": value,
            }
    return details


def _extra_fields(body: Mapping[str, Any], allowed: set[str]) -> dict[str, Any]:
    extra = sorted(set(body) - allowed)
    if not extra:
        return {}
    return {
        "requestBody": {
            "message": f'"{", ".join(extra)}" is an excess property and therefore is not allowed'
        }
    }


def _auth_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "trace": "auth.middleware"}, status=status)


def _header_value(retry_after: str | float | None) -> str | None:
    if retry_after is None:
        return None
    if isinstance(retry_after, float | int):
        return str(math.ceil(retry_after))
    return retry_after


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
    parser.add_argument("--rate-limit", type=int, default=None, help="calls per window")
    parser.add_argument("--rate-window-s", type=float, default=300.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it is meant to stop
        asyncio.run(serve(**vars(args)))


if __name__ == "__main__":
    main()
