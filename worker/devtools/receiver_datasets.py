"""The receiver's dataset endpoints: Helicone's dataset API as tests and the demo need it.

Two parts, as in :mod:`worker.devtools.receiver`: :class:`DatasetStore`, a pure model of what
Helicone stores (no I/O, time passed in), and :func:`mount_datasets`, which adds the routes to
a :class:`~worker.devtools.receiver.Receiver`'s app.  The routes go through the receiver's own
answering path, so faults, authentication (a write key: every route is a POST), the rate limit
and body validation (422 with tsoa's ``details``) apply exactly as to the feedback calls::

    POST /v1/helicone-dataset              {datasetName, requestIds, meta?} -> {datasetId}
    POST /v1/helicone-dataset/query        {datasetIds?} -> [{id, name, requests_count, ...}]
    POST /v1/helicone-dataset/{id}/count   -> number of rows
    POST /v1/helicone-dataset/{id}/query   {offset, limit} -> rows, newest first
    POST /v1/helicone-dataset/{id}/mutate  {addRequests, removeRequests} -> null
    GET  /_admin/datasets                  every dataset with its request ids (unauthenticated)

Each answer is a ``Result`` ``{data, error}``, 200 on success and 500 on every error, as jawn's
``HeliconeDatasetController`` answers.  What the model keeps from Helicone's
``HeliconeDatasetManager`` (Helicone/helicone, ``valhalla/jawn/src/managers/dataset/``):

* **The rate limit counts dataset calls.**  jawn mounts its limiter on the whole ``/v1``
  router after authentication (``src/index.ts``), so every call here takes from the same
  per-organisation window as feedback and scores (the receiver's ``rate_limit``).
* **Adding is not idempotent.**  ``addRequests`` inserts one row per id, duplicates included.
* **Ids are checked by Postgres, not by the route.**  An id that is not UUID-shaped fails the
  insert (500, nothing written); the worker's UUID v1-v5 rule (DESIGN 6) is not applied here,
  because the dataset route does not apply it.
* **A request Helicone never logged fails after the insert.**  Rows are inserted first, then
  each request's bodies are copied in storage; a copy that fails answers 500 with every row of
  the call already stored.  "Logged" is the receiver's ``known_requests`` (default: any UUID
  v1-v5).  The error texts are modelled on Postgres' and S3's, not copied from Helicone.
* **Rows come newest first** (``ORDER BY created_at DESC``); rows of one call share their
  ``created_at``.  Unknown or deleted datasets read as empty, as the SQL join makes them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

if TYPE_CHECKING:
    from worker.devtools.receiver_server import Receiver

__all__ = ["DatasetRow", "DatasetStore", "StoredDataset", "mount_datasets", "with_result"]

_UUID: Final = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
_PREFIX: Final = "/v1/helicone-dataset"

#: (status, body) a route answers instead of the receiver's plain ``{data: null, error: null}``.
Answer = tuple[int, Any]


@dataclass(frozen=True, slots=True)
class DatasetRow:
    """One row of ``helicone_dataset_row``: its own id and the request it copies."""

    id: str
    origin_request_id: str
    created_at_ms: int


@dataclass(slots=True)
class StoredDataset:
    id: str
    name: str
    created_at_ms: int
    meta: Any = None
    rows: list[DatasetRow] = field(default_factory=list)


class DatasetStore:
    """Datasets and their rows, as Helicone's Postgres tables hold them; time passed in."""

    def __init__(self, *, is_known: Callable[[str], bool]) -> None:
        self._is_known = is_known
        self._datasets: dict[str, StoredDataset] = {}

    def create(self, name: str, request_ids: Sequence[str], *, meta: Any, now_ms: int) -> Answer:
        dataset_id = str(uuid.uuid4())
        self._datasets[dataset_id] = StoredDataset(dataset_id, name, now_ms, meta)
        if request_ids:
            status, body = self.add(dataset_id, request_ids, now_ms=now_ms)
            if status != 200:
                return status, body
        return 200, {"data": {"datasetId": dataset_id}, "error": None}

    def add(self, dataset_id: str, request_ids: Sequence[str], *, now_ms: int) -> Answer:
        """Insert a row per id (one statement), then "copy" each request's bodies."""
        bad = next((r for r in [dataset_id, *request_ids] if not _UUID.match(r)), None)
        if bad is not None:
            return _error(f'invalid input syntax for type uuid: "{bad[:64]}"')
        dataset = self._datasets.get(dataset_id.lower())
        if dataset is None:
            return _error(
                'insert or update on table "helicone_dataset_row" violates foreign key '
                'constraint "helicone_dataset_row_dataset_id_fkey"'
            )
        for request_id in request_ids:
            dataset.rows.append(DatasetRow(str(uuid.uuid4()), request_id.lower(), now_ms))
        missing = next((r for r in request_ids if not self._is_known(r)), None)
        if missing is not None:
            return _error(f"NoSuchKey: no stored bodies for request {missing[:64]}")
        return 200, {"data": None, "error": None}

    def remove(self, dataset_id: str, row_ids: Sequence[str]) -> Answer:
        bad = next((r for r in [dataset_id, *row_ids] if not _UUID.match(r)), None)
        if bad is not None:
            return _error(f'invalid input syntax for type uuid: "{bad[:64]}"')
        dataset = self._datasets.get(dataset_id.lower())
        if dataset is not None:
            gone = {r.lower() for r in row_ids}
            dataset.rows = [row for row in dataset.rows if row.id not in gone]
        return 200, {"data": None, "error": None}

    def rows(self, dataset_id: str, *, offset: int, limit: int) -> list[DatasetRow]:
        """Newest first; within one ``created_at``, the later insert first (stable here)."""
        dataset = self._datasets.get(dataset_id.lower())
        ordered = list(reversed(dataset.rows)) if dataset is not None else []
        return ordered[offset : offset + limit]

    def count(self, dataset_id: str) -> int:
        dataset = self._datasets.get(dataset_id.lower())
        return 0 if dataset is None else len(dataset.rows)

    def datasets(self, dataset_ids: Sequence[str] = ()) -> list[StoredDataset]:
        """Newest first; only the ids asked for, when any are."""
        wanted = {d.lower() for d in dataset_ids}
        found = [d for d in self._datasets.values() if not wanted or d.id in wanted]
        return sorted(found, key=lambda d: d.created_at_ms, reverse=True)

    def request_ids(self, dataset_id: str) -> list[str]:
        """The requests of a dataset's rows, oldest row first, duplicates kept (for tests)."""
        dataset = self._datasets.get(dataset_id.lower())
        return [] if dataset is None else [row.origin_request_id for row in dataset.rows]

    def by_name(self, name: str) -> list[StoredDataset]:
        return [d for d in self.datasets() if d.name == name]


def _error(message: str) -> Answer:
    return 500, {"data": None, "error": message}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


# --------------------------------------------------------------------------- validation (tsoa)


def _strings(body: dict[str, Any], name: str, *, required: bool) -> dict[str, Any]:
    value = body.get(name)
    if value is None and not required and name not in body:
        return {}
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        message = f"'{name}' is required" if name not in body else "invalid array"
        return {f"requestBody.{name}": {"message": message, "value": value}}
    return {}


def _extra(body: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    extra = sorted(set(body) - allowed)
    if not extra:
        return {}
    names = ", ".join(extra)
    message = f'"{names}" is an excess property and therefore is not allowed'
    return {"requestBody": {"message": message}}


def _validate_create(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        return {"requestBody": {"message": "invalid object", "value": body}}
    details = _extra(body, {"datasetName", "requestIds", "meta"})
    if not isinstance(body.get("datasetName"), str):
        details["requestBody.datasetName"] = {"message": "invalid string value"}
    details.update(_strings(body, "requestIds", required=True))
    return details


def _validate_mutate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        return {"requestBody": {"message": "invalid object", "value": body}}
    details = _extra(body, {"addRequests", "removeRequests"})
    details.update(_strings(body, "addRequests", required=True))
    details.update(_strings(body, "removeRequests", required=True))
    return details


def _validate_page(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        return {"requestBody": {"message": "invalid object", "value": body}}
    details = _extra(body, {"offset", "limit"})
    for name in ("offset", "limit"):
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            details[f"requestBody.{name}"] = {"message": "invalid float number", "value": value}
    return details


def _validate_list(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        return {"requestBody": {"message": "invalid object", "value": body}}
    return {**_extra(body, {"datasetIds"}), **_strings(body, "datasetIds", required=False)}


def _anything(body: Any) -> dict[str, Any]:
    return {}


# --------------------------------------------------------------------------- routes


def with_result(response: web.Response, answer: Answer) -> web.Response:
    """``answer`` as the response, keeping the ``RateLimit-*`` headers already decided."""
    status, payload = answer
    headers = {k: v for k, v in response.headers.items() if k.lower().startswith("ratelimit-")}
    return web.json_response(payload, status=status, headers=headers)


def mount_datasets(app: web.Application, receiver: Receiver) -> None:
    """Add the dataset routes of the module docstring to ``app``, answering for ``receiver``."""
    store = receiver.datasets
    now = receiver.now_ms

    def created(body: dict[str, Any]) -> Answer:
        return store.create(
            body["datasetName"], body["requestIds"], meta=body.get("meta"), now_ms=now()
        )

    def listed(body: dict[str, Any]) -> Answer:
        found = store.datasets(body.get("datasetIds") or ())
        return 200, {"data": [_dataset_json(d) for d in found], "error": None}

    async def create(request: web.Request) -> web.StreamResponse:
        return await receiver.answer_with(request, _validate_create, created)

    async def list_datasets(request: web.Request) -> web.StreamResponse:
        return await receiver.answer_with(request, _validate_list, listed)

    async def count(request: web.Request) -> web.StreamResponse:
        dataset_id = request.match_info["dataset_id"]
        return await receiver.answer_with(
            request, _anything, lambda _: (200, {"data": store.count(dataset_id), "error": None})
        )

    async def rows(request: web.Request) -> web.StreamResponse:
        dataset_id = request.match_info["dataset_id"]

        def page(body: dict[str, Any]) -> Answer:
            offset, limit = body["offset"], body["limit"]
            if not (float(offset).is_integer() and float(limit).is_integer()) or min(
                offset, limit
            ) < 0:  # jawn puts both straight into the SQL text
                return _error(f"invalid LIMIT/OFFSET: {limit!r}/{offset!r}")
            found = store.rows(dataset_id, offset=int(offset), limit=int(limit))
            return 200, {"data": [_row_json(dataset_id, r) for r in found], "error": None}

        return await receiver.answer_with(request, _validate_page, page)

    async def mutate(request: web.Request) -> web.StreamResponse:
        dataset_id = request.match_info["dataset_id"]

        def apply(body: dict[str, Any]) -> Answer:
            if body["addRequests"]:
                added = store.add(dataset_id, body["addRequests"], now_ms=now())
                if added[0] != 200:
                    return added
            if body["removeRequests"]:
                return store.remove(dataset_id, body["removeRequests"])
            return 200, {"data": None, "error": None}

        return await receiver.answer_with(request, _validate_mutate, apply)

    async def admin(request: web.Request) -> web.Response:
        listing = {d.id: {"name": d.name, "request_ids": store.request_ids(d.id)}
                   for d in store.datasets()}
        return web.json_response(listing)

    app.router.add_post(_PREFIX, create)
    app.router.add_post(_PREFIX + "/query", list_datasets)
    app.router.add_post(_PREFIX + "/{dataset_id}/count", count)
    app.router.add_post(_PREFIX + "/{dataset_id}/query", rows)
    app.router.add_post(_PREFIX + "/{dataset_id}/mutate", mutate)
    app.router.add_get("/_admin/datasets", admin)


def _dataset_json(dataset: StoredDataset) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "name": dataset.name,
        "created_at": _iso(dataset.created_at_ms),
        "dataset_type": "helicone",
        "meta": dataset.meta,
        "organization": "receiver",
        "requests_count": len(dataset.rows),
    }


def _row_json(dataset_id: str, row: DatasetRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "origin_request_id": row.origin_request_id,
        "dataset_id": dataset_id,
        "created_at": _iso(row.created_at_ms),
        "signed_url": {"data": None, "error": "no storage in the receiver"},
    }
