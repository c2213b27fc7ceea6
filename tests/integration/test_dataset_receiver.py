"""DatasetUploader against the devtools receiver over real HTTP on loopback (no broker).

The uploader's clock is a FakeClock moved by its injected ``sleep``, so backoff and pacing are
checked by what it asked to wait, never by timing.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from worker.clock import FakeClock
from worker.delivery import AdaptiveRate, RetryPolicy
from worker.devtools.receiver import Receiver
from worker.errors import AuthRejected, RetryableDelivery
from worker.helicone import HeliconeClient
from worker.helicone_datasets import (
    AmbiguousName,
    DatasetAnswerError,
    DatasetApi,
    DatasetUploader,
)

KEY = "sk-helicone-test-datasets"
PREFIX = "/v1/helicone-dataset"


def rid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


@pytest.fixture
async def client(receiver: Receiver) -> AsyncIterator[HeliconeClient]:
    async with HeliconeClient(SecretStr(KEY), base_url=receiver.url) as c:
        yield c


class Harness:
    def __init__(self, client: HeliconeClient, *, page_size: int = 5_000, rate: float = 1e6):
        self.clock = FakeClock(t_ms=1_000_000)
        self.sleeps: list[float] = []
        self.rate = AdaptiveRate(ceiling_per_s=rate, clock=self.clock)
        api = DatasetApi(
            client, on_answer=lambda r, s: self.rate.answered(remaining=r, reset_s=s)
        )
        self.uploader = DatasetUploader(
            api,
            rate=self.rate,
            policy=RetryPolicy(base_s=1, cap_s=4, max_attempts=4, rng=random.Random(7)),
            clock=self.clock,
            sleep=self.sleep,
            page_size=page_size,
        )
        self.progress = 0

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)

    def count(self, n: int) -> None:
        self.progress += n


def mutates(receiver: Receiver) -> list[list[str]]:
    """The ``addRequests`` of every mutate call that arrived (accepted or not)."""
    return [r.body["addRequests"] for r in receiver.history if r.path.endswith("/mutate")]


async def test_creates_the_dataset_and_adds_in_batches_once(
    receiver: Receiver, client: HeliconeClient
) -> None:
    h = Harness(client)
    ids = [rid() for _ in range(7)]
    dataset_id = await h.uploader.resolve("good answers", known_id=None)
    report = await h.uploader.add(dataset_id, ids, batch_size=3, on_added=h.count)
    assert report.created and (report.added, report.already_present) == (7, 0)
    assert [len(b) for b in mutates(receiver)] == [3, 3, 1]
    assert sorted(receiver.datasets.request_ids(dataset_id)) == sorted(ids)
    assert h.progress == 7

    again = Harness(client)
    assert await again.uploader.resolve("good answers", known_id=None) == dataset_id
    second = await again.uploader.add(dataset_id, ids, batch_size=3, on_added=again.count)
    assert (second.added, second.already_present, second.created) == (0, 7, False)
    assert len(mutates(receiver)) == 3  # nothing more was sent
    assert again.progress == 7


async def test_a_resumed_run_sends_only_what_the_dataset_lacks(
    receiver: Receiver, client: HeliconeClient
) -> None:
    h = Harness(client)
    ids = [rid() for _ in range(10)]
    dataset_id = await h.uploader.resolve("resume", known_id=None)
    receiver.datasets.add(dataset_id, ids[:4], now_ms=1)  # an earlier, interrupted run
    report = await h.uploader.add(dataset_id, ids, batch_size=4, on_added=h.count)
    assert [r for batch in mutates(receiver) for r in batch] == ids[4:]
    assert (report.added, report.already_present) == (6, 4)
    assert sorted(receiver.datasets.request_ids(dataset_id)) == sorted(ids)


async def test_the_state_files_id_is_used_and_two_datasets_of_a_name_need_a_choice(
    receiver: Receiver, client: HeliconeClient
) -> None:
    h = Harness(client)
    _, first = receiver.datasets.create("twice", [], meta=None, now_ms=1)
    _, second = receiver.datasets.create("twice", [], meta=None, now_ms=2)
    with pytest.raises(AmbiguousName) as caught:
        await h.uploader.resolve("twice", known_id=None)
    assert caught.value.ids == [second["data"]["datasetId"], first["data"]["datasetId"]]
    chosen = first["data"]["datasetId"]
    assert await h.uploader.resolve("twice", known_id=chosen) == chosen
    gone = str(uuid.uuid4())  # deleted since: found by name, or created
    assert await h.uploader.resolve("other", known_id=gone) != gone
    assert h.uploader.report.created


async def test_a_503_is_retried_and_nothing_is_added_twice(
    receiver: Receiver, client: HeliconeClient
) -> None:
    h = Harness(client)
    ids = [rid() for _ in range(4)]
    dataset_id = await h.uploader.resolve("retry", known_id=None)
    receiver.fail_next(2, status=503, path_prefix=f"{PREFIX}/{dataset_id}/mutate")
    report = await h.uploader.add(dataset_id, ids, batch_size=2, on_added=h.count)
    assert report.added == 4 and report.stored_despite_error == 0
    assert sorted(receiver.datasets.request_ids(dataset_id)) == sorted(ids)
    assert len(mutates(receiver)) == 4
    backoff = [s for s in h.sleeps if s >= 0.5]  # the rest is pacing at a million a second
    assert backoff == pytest.approx([1.0, 2.0], rel=0.21)  # both on the first batch


async def test_rows_stored_before_a_500_are_not_sent_again() -> None:
    """Helicone inserts a mutate's rows before it fails on a request it never logged."""
    ghost = rid()
    async with (
        Receiver(known_requests=lambda r: r != ghost) as receiver,
        HeliconeClient(SecretStr(KEY), base_url=receiver.url) as client,
    ):
        h = Harness(client)
        ids = [rid(), ghost, rid(), rid()]
        dataset_id = await h.uploader.resolve("ghosts", known_id=None)
        report = await h.uploader.add(dataset_id, ids, batch_size=2, on_added=h.count)
        assert (report.added, report.stored_despite_error) == (2, 2)
        assert sorted(receiver.datasets.request_ids(dataset_id)) == sorted(ids)
        assert h.progress == 4
        assert [len(b) for b in mutates(receiver)] == [2, 2]
        assert all(s < 0.5 for s in h.sleeps), "nothing was left to retry, so no backoff"


async def test_a_429_holds_calls_for_retry_after_and_is_resent_without_a_reread(
    receiver: Receiver, client: HeliconeClient
) -> None:
    h = Harness(client, rate=100.0)
    ids = [rid() for _ in range(3)]
    dataset_id = await h.uploader.resolve("limited", known_id=None)
    receiver.fail_next(1, status=429, retry_after=5, path_prefix=f"{PREFIX}/{dataset_id}/mutate")
    reads_before = _reads(receiver)
    report = await h.uploader.add(dataset_id, ids, batch_size=3, on_added=h.count)
    assert report.added == 3
    assert max(h.sleeps) >= 5.0
    assert h.rate.per_s < 100.0  # halved, recovering
    assert _reads(receiver) - reads_before == 2  # count + one page before adding, none after


def _reads(receiver: Receiver) -> int:
    return sum(1 for r in receiver.history if r.path.endswith(("/query", "/count")))


async def test_dataset_calls_count_in_the_same_window_as_feedback() -> None:
    """jawn mounts one limiter on the whole /v1 router."""
    async with (
        Receiver(rate_limit=2, rate_window_s=300) as receiver,
        HeliconeClient(SecretStr(KEY), base_url=receiver.url) as client,
    ):
        api = DatasetApi(client)
        await api.datasets()
        await client.post_request_feedback(rid(), True)
        with pytest.raises(RetryableDelivery) as caught:
            await api.datasets()
        assert caught.value.status == 429 and caught.value.retry_after_s is not None


async def test_a_page_boundary_inside_one_mutate_is_read_again_in_one_page(
    receiver: Receiver, client: HeliconeClient
) -> None:
    h = Harness(client, page_size=2)
    dataset_id = await h.uploader.resolve("ties", known_id=None)
    ids = [rid() for _ in range(3)]
    receiver.datasets.add(dataset_id, ids, now_ms=5)  # one statement: one created_at
    assert await h.uploader.contents(dataset_id) == set(ids)
    limits = [r.body["limit"] for r in receiver.history if r.path.endswith(f"{dataset_id}/query")]
    assert limits == [2, 2, 4]  # two pages split the tie; then all rows in one


async def test_a_wrong_key_stops_at_once(receiver: Receiver) -> None:
    async with HeliconeClient(SecretStr("not-a-helicone-key"), base_url=receiver.url) as client:
        h = Harness(client)
        with pytest.raises(AuthRejected):
            await h.uploader.resolve("x", known_id=None)
        assert h.sleeps == []


async def test_an_answer_of_the_wrong_shape_is_a_typed_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body: Any = {"data": {"unexpected": 1}, "error": None}
        return httpx.Response(200, json=body)

    transport = httpx.MockTransport(handler)
    async with HeliconeClient(SecretStr(KEY), transport=transport) as client:
        with pytest.raises(DatasetAnswerError, match="create dataset"):
            await DatasetApi(client).create("x")


async def test_the_receiver_validates_bodies_like_tsoa(receiver: Receiver) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=receiver.url, headers=headers) as http:
        created = await http.post(PREFIX, json={"datasetName": "v", "requestIds": []})
        dataset_id = created.json()["data"]["datasetId"]
        missing = await http.post(f"{PREFIX}/{dataset_id}/mutate", json={"addRequests": [rid()]})
        extra = await http.post(PREFIX, json={"datasetName": "v", "requestIds": [], "x": 1})
        bad_page = await http.post(f"{PREFIX}/{dataset_id}/query", json={"offset": 0})
        negative = await http.post(f"{PREFIX}/{dataset_id}/query", json={"offset": -1, "limit": 2})
        count = await http.post(f"{PREFIX}/{dataset_id}/count")
    assert created.status_code == 200
    assert missing.status_code == 422 and "requestBody.removeRequests" in missing.json()["details"]
    assert extra.status_code == 422
    assert bad_page.status_code == 422
    assert negative.status_code == 500
    assert count.json() == {"data": 0, "error": None}


async def test_every_call_reads_included_waits_for_the_budget(
    receiver: Receiver, client: HeliconeClient
) -> None:
    """At 2 calls a second, n calls take at least (n - 1) / 2 s of the uploader's clock."""
    h = Harness(client, rate=2.0)
    started_ms = h.clock.now_ms()
    dataset_id = await h.uploader.resolve("paced", known_id=None)
    report = await h.uploader.add(dataset_id, [rid() for _ in range(8)], batch_size=2)
    calls = len(receiver.history)
    assert report.calls == calls == 8  # list, create, count, one page, four mutates
    assert h.clock.now_ms() - started_ms >= (calls - 1) / 2 * 1000


@pytest.mark.parametrize("seed", range(8))
async def test_any_mix_of_faults_and_reruns_ends_with_each_request_once(seed: int) -> None:
    """Random 503s, 429s, resets and requests Helicone never logged, on reads and writes;
    a run that gives up is simply run again, as a user would."""
    rng = random.Random(seed)
    ids = [rid() for _ in range(rng.randint(5, 30))]
    ghosts = set(rng.sample(ids, k=rng.randint(0, 3)))
    async with (
        Receiver(known_requests=lambda r: r not in ghosts) as receiver,
        HeliconeClient(SecretStr(KEY), base_url=receiver.url) as client,
    ):
        for _ in range(rng.randint(3, 10)):
            kind = rng.choice(["503", "429", "reset"])
            if kind == "reset":
                receiver.reset_next(rng.randint(1, 2), path_prefix=PREFIX)
            else:
                receiver.fail_next(rng.randint(1, 2), status=int(kind), retry_after=1,
                                   path_prefix=PREFIX)
        dataset_id, runs = None, 0
        while True:
            runs += 1
            h = Harness(client, page_size=rng.choice([2, 3, 50]))
            try:
                dataset_id = await h.uploader.resolve("chaos", known_id=dataset_id)
                await h.uploader.add(dataset_id, ids, batch_size=rng.randint(1, 6))
                break
            except RetryableDelivery:
                assert runs < 20, "reruns must make progress"
        assert dataset_id is not None
        assert sorted(receiver.datasets.request_ids(dataset_id)) == sorted(ids)
        assert len(receiver.datasets.by_name("chaos")) == 1
