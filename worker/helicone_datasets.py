"""Helicone's dataset API, and adding requests to a dataset exactly once within the budget.

Map of the module::

    DatasetApi          the five calls, each one POST, answers validated with pydantic
    DatasetInfo         one dataset as Helicone lists it
    DatasetAnswerError  an answer of the wrong shape (a PermanentDelivery: waiting won't fix it)
    AmbiguousName       more than one dataset has the name asked for
    DatasetUploader     find or create the dataset, read what it holds, add the rest in batches

The API (Helicone/helicone ``valhalla/jawn/src/controllers/public/heliconeDatasetController.ts``
and ``managers/dataset/HeliconeDatasetManager.ts``; every answer a ``Result`` ``{data, error}``)::

    POST /v1/helicone-dataset              {datasetName, requestIds, meta?} -> {datasetId}
    POST /v1/helicone-dataset/query        {datasetIds?} -> [{id, name, requests_count, ...}]
    POST /v1/helicone-dataset/{id}/count   -> number of rows (Postgres COUNT: may be a string)
    POST /v1/helicone-dataset/{id}/query   {offset, limit} -> rows, newest first
                                           [{id, origin_request_id, dataset_id, created_at}]
    POST /v1/helicone-dataset/{id}/mutate  {addRequests, removeRequests} (both required)

There is no lookup by name: ``/query`` lists the organisation's datasets and the name is matched
here.  Names are not unique at Helicone, so two datasets with the name make the caller choose.

Why the uploader works the way it does (what the jawn source shows):

* **Mutate is not idempotent.**  ``addRequests`` inserts one row per id with no check for rows
  the dataset holds, so resending a request duplicates it.  The uploader therefore reads what the
  dataset holds before it adds anything, and never trusts memory over Helicone.
* **A failed mutate may have written.**  Helicone inserts all rows of a call in one statement,
  *then* copies each request's bodies; a copy that fails (a request it never logged) answers
  500 with the rows already stored.  A timeout or reset says nothing either.  So after any
  failure other than a 429 (refused before the route runs) the uploader reads the dataset
  again and sends only what is still missing.
* **Reading is paged by offset over ``created_at DESC``.**  Rows of one mutate share their
  ``created_at``, so pages of a tie may overlap or skip between calls.  The uploader reads in
  pages of ``page_size`` and checks the rows read against ``/count``; on a mismatch it reads
  again, in one page as large as the count, where no page boundary can split a tie.
* **Every call counts against the organisation's rate limit** (jawn mounts its limiter on the
  whole ``/v1`` router), so reads and writes take a token from the same
  :class:`~worker.delivery.AdaptiveRate` (ceiling ``DELIVERY_RATE_PER_S``), which follows
  ``RateLimit-*`` answers and backs off on 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from worker.datasets import plan_batches
from worker.errors import PermanentDelivery, RetryableDelivery

if TYPE_CHECKING:
    from worker.clock import Clock
    from worker.delivery import AdaptiveRate, RetryPolicy
    from worker.helicone import HeliconeClient

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "AmbiguousName",
    "DatasetAnswerError",
    "DatasetApi",
    "DatasetInfo",
    "DatasetUploader",
    "UploadReport",
]

T = TypeVar("T")

#: Rows per ``/query`` page.  Helicone signs a URL per row locally; thousands are cheap.
DEFAULT_PAGE_SIZE: Final = 5_000
_LABEL: Final = "helicone_dataset"


class DatasetAnswerError(PermanentDelivery):
    """Helicone answered 2xx with a body of the wrong shape (a proxy, or an API change)."""


class AmbiguousName(Exception):
    """Several datasets have the name; ``ids`` lists them, newest first."""

    def __init__(self, name: str, ids: Sequence[str]) -> None:
        super().__init__(
            f"{len(ids)} datasets are named {name!r} ({', '.join(ids)}); "
            "pass --dataset-id to choose one"
        )
        self.ids = list(ids)


class DatasetInfo(BaseModel):
    """One dataset of ``POST /v1/helicone-dataset/query`` (the fields used here)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    name: str | None = None
    requests_count: int = 0


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    origin_request_id: str = Field(min_length=1, max_length=64)
    created_at: str = Field(default="", max_length=64)


class _Created(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    datasetId: str = Field(min_length=1, max_length=64)  # Helicone's spelling


_DATASETS: Final = TypeAdapter(list[DatasetInfo])
_ROWS: Final = TypeAdapter(list[_Row])
_COUNT: Final = TypeAdapter(int)  # lax: Postgres COUNT comes back as a string from node-pg


def _data(body: Any, adapter: TypeAdapter[T], what: str) -> T:
    if not isinstance(body, dict) or body.get("error") is not None:
        raise DatasetAnswerError(f"{what}: not a Helicone result", endpoint=_LABEL)
    try:
        return adapter.validate_python(body.get("data"))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise DatasetAnswerError(
            f"{what}: unexpected answer at {first['loc']}: {first['msg']}", endpoint=_LABEL
        ) from None


class DatasetApi:
    """The dataset calls, one POST each; rate hints go to ``on_answer`` (remaining, reset_s)."""

    def __init__(
        self,
        client: HeliconeClient,
        *,
        on_answer: Callable[[int | None, float | None], None] | None = None,
    ) -> None:
        self._client = client
        self._on_answer = on_answer

    async def _post(self, path: str, payload: dict[str, Any]) -> Any:
        body, remaining, reset_s = await self._client.post_json(
            "/v1/helicone-dataset" + path, payload, label=_LABEL
        )
        if self._on_answer is not None:
            self._on_answer(remaining, reset_s)
        return body

    async def datasets(self, dataset_ids: Sequence[str] = ()) -> list[DatasetInfo]:
        payload = {"datasetIds": list(dataset_ids)} if dataset_ids else {}
        return _data(await self._post("/query", payload), _DATASETS, "list datasets")

    async def create(self, name: str) -> str:
        body = await self._post("", {"datasetName": name, "requestIds": []})
        return _data(body, TypeAdapter(_Created), "create dataset").datasetId

    async def count(self, dataset_id: str) -> int:
        return _data(await self._post(f"/{dataset_id}/count", {}), _COUNT, "count rows")

    async def rows(self, dataset_id: str, *, offset: int, limit: int) -> list[tuple[str, str]]:
        """``(request id, created_at)`` of a page of rows, newest first."""
        body = await self._post(f"/{dataset_id}/query", {"offset": offset, "limit": limit})
        return [
            (row.origin_request_id.lower(), row.created_at)
            for row in _data(body, _ROWS, "query rows")
        ]

    async def add(self, dataset_id: str, request_ids: Sequence[str]) -> None:
        payload = {"addRequests": list(request_ids), "removeRequests": []}
        _data(await self._post(f"/{dataset_id}/mutate", payload), TypeAdapter(Any), "mutate")


@dataclass(slots=True)
class UploadReport:
    """What one run did: added in 2xx calls, found stored after a failed call, calls made."""

    dataset_id: str = ""
    created: bool = False
    already_present: int = 0
    added: int = 0
    stored_despite_error: int = 0
    calls: int = 0


class DatasetUploader:
    """Adds requests to one dataset so that each ends up in it once, pacing every call.

    Invariant: an id goes into a mutate only if the latest consistent read of the dataset
    lacked it and no mutate answered 2xx with it since; after a failure that may have written
    (anything but a 429), a fresh read comes before any resend.  So no run adds a request the
    dataset holds, and a run that stops anywhere leaves a state the next run reads as it is:
    each request ends up in the dataset once (as long as nothing else adds to it meanwhile).
    Every call, reads included, takes a token from ``rate`` first.

    ``sleep`` is injected (tests pass one that advances a FakeClock); ``on_added(n)`` is told
    of every request that became present, for the progress bar.
    """

    def __init__(
        self,
        api: DatasetApi,
        *,
        rate: AdaptiveRate,
        policy: RetryPolicy,
        clock: Clock,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self._api = api
        self._rate = rate
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._page_size = page_size
        self.report = UploadReport()

    async def resolve(self, name: str, *, known_id: str | None) -> str:
        """The dataset's id: ``known_id`` if Helicone still has it, else the one dataset named
        ``name``, else a new one.  Raises :class:`AmbiguousName` for several."""
        if known_id is not None:
            found = await self._call(lambda: self._api.datasets([known_id]))
            if any(d.id == known_id for d in found):
                self.report.dataset_id = known_id
                return known_id
        listed = await self._call(lambda: self._api.datasets())
        named = [d.id for d in listed if d.name == name]
        if len(named) > 1:
            raise AmbiguousName(name, named)
        if named:
            self.report.dataset_id = named[0]
            return named[0]
        # Not retried on an unclear failure: a create that did write would leave a second
        # dataset of the name; the next run finds the first by name instead.
        await self._take_token()
        self.report.calls += 1
        dataset_id = await self._api.create(name)
        self.report.dataset_id, self.report.created = dataset_id, True
        return dataset_id

    async def contents(self, dataset_id: str) -> set[str]:
        """Every request id the dataset holds, read consistently (module docstring).

        A read is trusted when it returned as many rows as ``/count`` says and no page boundary
        fell inside a run of equal ``created_at`` (where offset paging may overlap or skip);
        otherwise it is repeated in one page of the whole count, which one SQL statement
        answers from one snapshot.  Three tries, then a RetryableDelivery.
        """
        page = self._page_size
        for _ in range(3):
            expected = await self._call(lambda: self._api.count(dataset_id))
            seen: list[tuple[str, str]] = []
            split = False
            while True:
                offset = len(seen)
                rows = await self._call(
                    functools.partial(self._api.rows, dataset_id, offset=offset, limit=page)
                )
                split = split or bool(seen and rows and seen[-1][1] == rows[0][1])
                seen.extend(rows)
                if len(rows) < page:
                    break
            if len(seen) == expected and not split:
                return {request_id for request_id, _ in seen}
            page = max(page, expected + 1)
        raise RetryableDelivery(
            "the dataset's rows could not be read consistently (is something else changing it?)",
            endpoint=_LABEL,
        )

    async def add(
        self,
        dataset_id: str,
        request_ids: Sequence[str],
        *,
        batch_size: int,
        on_added: Callable[[int], None] = lambda n: None,
    ) -> UploadReport:
        """Add what the dataset does not hold yet, in batches; safe to run again at any time."""
        present = await self.contents(dataset_id)
        wanted = {rid.lower() for rid in request_ids}
        self.report.already_present = len(wanted & present)
        on_added(self.report.already_present)
        for batch in plan_batches(request_ids, present, batch_size=batch_size):
            present = await self._add_batch(dataset_id, batch, present, on_added)
        return self.report

    async def _add_batch(
        self,
        dataset_id: str,
        batch: list[str],
        present: set[str],
        on_added: Callable[[int], None],
    ) -> set[str]:
        """Send ``batch`` until every id of it is present; return what the dataset holds."""
        remaining = list(batch)
        attempt, first_ms = 0, self._clock.now_ms()
        while remaining:
            await self._take_token()
            self.report.calls += 1
            try:
                await self._api.add(dataset_id, remaining)
            except RetryableDelivery as exc:
                attempt += 1
                if exc.status != 429:  # a 429 is refused before the route: nothing written
                    present = await self.contents(dataset_id)
                    stored = [rid for rid in remaining if rid.lower() in present]
                    self.report.stored_despite_error += len(stored)
                    on_added(len(stored))
                    remaining = [rid for rid in remaining if rid.lower() not in present]
                if remaining:
                    await self._back_off(exc, attempt, first_ms)
                continue
            present |= {rid.lower() for rid in remaining}
            self.report.added += len(remaining)
            on_added(len(remaining))
            remaining = []
        return present

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """A read (or lookup): paced, retried on retryable failures within the policy."""
        attempt, first_ms = 0, self._clock.now_ms()
        while True:
            await self._take_token()
            self.report.calls += 1
            try:
                return await call()
            except RetryableDelivery as exc:
                attempt += 1
                await self._back_off(exc, attempt, first_ms)

    async def _back_off(self, exc: RetryableDelivery, attempt: int, first_ms: int) -> None:
        """Wait as the policy says after a retryable failure, or re-raise when it gives up."""
        if exc.status == 429:
            self._rate.throttled(exc.retry_after_s)
        now_ms = self._clock.now_ms()
        at_ms = self._policy.next_attempt_at(
            attempt, first_attempt_ms=first_ms, now_ms=now_ms, retry_after_s=exc.retry_after_s
        )
        if at_ms is None:
            raise exc
        await self._sleep((at_ms - now_ms) / 1000)

    async def _take_token(self) -> None:
        while (wait_ms := self._rate.try_acquire()) > 0:
            await self._sleep(wait_ms / 1000)
