"""What the fake Helicone answers: body validation and the shapes of its answers.

Validation problems come in tsoa's ``details`` shape (Helicone's controllers are tsoa), errors
of authentication in its auth middleware's ``{"error", "trace"}``, a refused rate in
express-rate-limit's message, and a read request as the fields of ``HeliconeRequest`` that the
stored state determines.  Pure: no I/O beyond building ``aiohttp`` responses.

Sources (Helicone/helicone on GitHub, read for this module):
``valhalla/jawn/src/managers/score/ScoreManager.ts`` (``addScores``/``mapScores``: one message
per call; ``procesScores``: the per-request dedupe with a strict ``createdAt <``, the
``-hcone-bool`` suffix, the feedback upsert; ``addBatchScores``: the 10-minute delay);
``valhalla/jawn/src/lib/stores/ScoreStore.ts`` (``putScoresIntoClickhouse``: new keys merged
over the stored scores, requests older than 30 days or never logged not found);
``valhalla/jawn/src/controllers/public/requestController.ts`` (routes, 201 for scores, every
error a 500 with a ``Result`` body ``{data, error}``); ``RequestManager.ts`` (feedback needs the
logged request); ``valhalla/jawn/src/middleware/ratelimitter.ts`` (express-rate-limit with
``standardHeaders: true``: header names and format from express-rate-limit's
``source/headers.ts`` ``setDraft6Headers``/``setRetryAfterHeader``).  The read-back shape
follows the ``HeliconeRequest`` result of ``GET /v1/request/{requestId}`` in Helicone's
published OpenAPI (docs.helicone.ai/rest/request/get-v1request); only the fields the stored
state determines are sent.  The status of its not-found answer (500) is inferred from the
controller pattern above, not read from that handler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from worker.devtools.helicone_store import StoredRequest
from worker.events import is_helicone_request_id

__all__ = [
    "HELICONE_KEY_PREFIX",
    "Keys",
    "auth_error",
    "authenticate",
    "helicone_request",
    "refusal",
    "too_many",
    "validate_rating",
    "validate_scores",
]

#: With no explicit key list, any key with this prefix is accepted (EU keys included).
HELICONE_KEY_PREFIX: Final = "sk-helicone-"


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys a receiver accepts: ``write`` (None: any ``sk-helicone-...`` key) and
    ``read_only`` ones, which authenticate but may not write."""

    write: frozenset[str] | None
    read_only: frozenset[str]


def authenticate(authorization: str | None, keys: Keys, *, write: bool) -> web.Response | None:
    """Helicone's auth middleware's refusal of this ``Authorization`` header, or None."""
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return auth_error(401, "Missing or malformed Authorization header")
    if key in keys.read_only:
        return auth_error(403, "This API key does not have write access") if write else None
    known = key in keys.write if keys.write is not None else key.startswith(HELICONE_KEY_PREFIX)
    return None if known else auth_error(401, "Invalid API key")


def refusal(
    request: web.Request,
    body: Any,
    malformed: bool,
    validate: Callable[[Any], dict[str, Any]],
    *,
    unknown_sessions: frozenset[str],
    is_known: Callable[[str], bool],
) -> tuple[int, Any] | None:
    """Why Helicone would refuse this authorised call (status, body), or None."""
    if malformed:
        return 400, {"message": "Malformed JSON body"}
    details = validate(body)
    if details:
        return 422, {"message": "Validation Failed", "details": details}
    request_id = request.match_info.get("request_id")
    if request_id is not None and not is_helicone_request_id(request_id):
        return 500, {"data": None, "error": "Invalid requestId: must be a valid UUID"}
    if request.match_info.get("session_id") in unknown_sessions:
        return 500, {"data": None, "error": "No request found"}
    if request.method == "PUT" and not is_known(request_id or ""):
        return 500, {"data": None, "error": "Request not found"}  # a property, not logged
    scores = body.get("scores") if isinstance(body, dict) else None
    if isinstance(scores, dict) and any(
        isinstance(v, float) and not v.is_integer() for v in scores.values()
    ):
        return 500, {"data": None, "error": "invalid input syntax for type integer"}
    return None


def validate_rating(body: Any) -> dict[str, Any]:
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


def validate_scores(body: Any) -> dict[str, Any]:
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


def helicone_request(
    request_id: str, stored: StoredRequest, properties: dict[str, str]
) -> dict[str, Any]:
    """The fields of Helicone's ``HeliconeRequest`` that the stored state determines.

    Helicone returns many more (bodies, model, tokens, cost...); a fake has none of them, and
    leaving them out beats inventing them.
    """
    return {
        "request_id": request_id,
        "scores": dict(stored.scores),
        "feedback_rating": stored.feedback,
        "properties": properties,
    }


def too_many(headers: Mapping[str, str]) -> web.Response:
    return web.json_response(
        {"error": "Too many requests, please try again later."}, status=429, headers=headers
    )


def auth_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "trace": "auth.middleware"}, status=status)
