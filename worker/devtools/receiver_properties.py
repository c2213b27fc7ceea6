"""The receiver's property endpoint: ``PUT /v1/request/{requestId}/property`` (DESIGN 6).

Mounted by :class:`~worker.devtools.receiver.Receiver` (kept apart so that module does not
grow).  The call goes through the receiver's usual checks, in Helicone's order: injected
fault, authentication, the organisation's rate limit (Helicone's limiter,
``valhalla/jawn/src/middleware/ratelimitter.ts``, is one express-rate-limit keyed by
organisation for every route but ``/v1/log`` and ``/v1/trace``, so a property call counts
toward the same budget as feedback and scores), body validation (422 for a body that is not
``{"key": str, "value": str}``), then the request id.  A request the receiver does not know
(``known_requests``) is answered 500 ``{"data": null, "error": "Request not found"}``, as
Helicone does until it has logged it.  Success is 200 ``{"data": null, "error": null}``
(``requestController.putProperty`` sets 200).

Helicone writes the property at once (``VersionedRequestStore.addPropertyToRequest`` reads
the request's latest row, adds the key, inserts the row again; no queue, no delay), so the
store here is a plain map: request id -> {key: value}, last write per key wins.  It shows in
the read-back (``GET /v1/request/{id}``, ``properties``) and in ``GET /_admin/stored``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from worker.devtools.receiver_server import Receiver

__all__ = ["PROPERTY_ROUTE", "PropertyStore", "mount_properties", "validate_property"]

PROPERTY_ROUTE = "/v1/request/{request_id}/property"


class PropertyStore:
    """Request id -> the properties set on it by property calls (no I/O)."""

    def __init__(self) -> None:
        self._properties: dict[str, dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"PropertyStore(requests={len(self._properties)})"

    def put(self, request_id: str, key: str, value: str) -> None:
        self._properties.setdefault(request_id, {})[key] = value

    def of(self, request_id: str) -> dict[str, str]:
        """The properties of one request (a copy; empty when none were set)."""
        return dict(self._properties.get(request_id, {}))

    def all(self) -> dict[str, dict[str, str]]:
        return {request_id: dict(props) for request_id, props in self._properties.items()}

    def clear(self) -> None:
        self._properties.clear()


def validate_property(body: Any) -> dict[str, Any]:
    """Problems with a ``{"key": str, "value": str}`` body, in tsoa's ``details`` shape."""
    if not isinstance(body, dict):
        return {"requestBody": {"message": "invalid object", "value": body}}
    details: dict[str, Any] = {}
    for name in ("key", "value"):
        if not isinstance(body.get(name), str):
            details[f"requestBody.{name}"] = {
                "message": f"'{name}' is required" if name not in body else "invalid string value",
                "value": body.get(name),
            }
    extra = sorted(set(body) - {"key", "value"})
    if extra:
        details["requestBody"] = {
            "message": f'"{", ".join(extra)}" is an excess property and therefore is not allowed'
        }
    return details


def mount_properties(app: web.Application, receiver: Receiver) -> None:
    """Add the property route to the receiver's application."""

    async def put_property(request: web.Request) -> web.StreamResponse:
        request_id = request.match_info["request_id"]

        def accept(body: dict[str, Any]) -> None:
            receiver.properties.put(request_id, body["key"], body["value"])

        return await receiver.handle_write(request, validate_property, accept, success=200)

    app.router.add_put(PROPERTY_ROUTE, put_property)
