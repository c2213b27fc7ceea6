"""The fake Helicone's admin routes, for driving a receiver that runs in another process.

``POST /_admin/faults`` adds a fault in the JSON form
:meth:`~worker.devtools.receiver_faults.FaultInjection.add_fault_from` takes and
``DELETE /_admin/faults`` clears them; ``GET``/``DELETE /_admin/records`` list or forget what
was received; ``GET /_admin/stored`` shows the stored state and counters, ``POST
/_admin/settle`` consumes everything queued first, ``DELETE /_admin/stored`` forgets it.  Each
route is one call of the in-process API of :class:`~worker.devtools.receiver.Receiver`, so a
test and the demo see the same receiver either way.  The routes are unauthenticated: bind the
receiver to loopback or a private network only.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from worker.devtools.receiver_server import Receiver

__all__ = ["mount_admin", "stored_json"]


def stored_json(receiver: Receiver) -> dict[str, Any]:
    """``{"requests": {id: {"scores", "feedback"}}, "sessions": {id: bool}, "properties",
    "counters"}``."""
    return {
        "requests": {rid: asdict(s) for rid, s in receiver.stored().items()},
        "sessions": receiver.stored_sessions(),
        "properties": receiver.properties.all(),
        "counters": asdict(receiver.counters),
    }


def mount_admin(app: web.Application, receiver: Receiver) -> None:
    """Add the ``/_admin/...`` routes for ``receiver`` to ``app``."""

    async def add_fault(request: web.Request) -> web.Response:
        try:
            spec = await request.json()
            if not isinstance(spec, dict):
                raise ValueError("expected a JSON object")
            receiver.add_fault_from(spec)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(
            {"faults": receiver.fault_count, "latency_s": receiver.latency_s}, status=201
        )

    async def clear_faults(request: web.Request) -> web.Response:
        receiver.clear_faults()
        return web.json_response({"faults": 0, "latency_s": 0.0})

    async def records(request: web.Request) -> web.Response:
        return web.json_response({"records": [asdict(r) for r in receiver.history]})

    async def clear_records(request: web.Request) -> web.Response:
        receiver.clear_records()
        return web.json_response({"records": []})

    async def stored(request: web.Request) -> web.Response:
        return web.json_response(stored_json(receiver))

    async def settle(request: web.Request) -> web.Response:
        batch = await receiver.settle()
        return web.json_response({"batch": asdict(batch), **stored_json(receiver)})

    async def clear_stored(request: web.Request) -> web.Response:
        receiver.clear_stored()
        return web.json_response(stored_json(receiver))

    app.router.add_post("/_admin/faults", add_fault)
    app.router.add_delete("/_admin/faults", clear_faults)
    app.router.add_get("/_admin/records", records)
    app.router.add_delete("/_admin/records", clear_records)
    app.router.add_get("/_admin/stored", stored)
    app.router.add_post("/_admin/settle", settle)
    app.router.add_delete("/_admin/stored", clear_stored)
