"""The receiver's ``PUT /v1/request/{id}/property`` over real HTTP (in-process server)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from pydantic import SecretStr

from worker.devtools.receiver import Receiver
from worker.errors import PermanentDelivery, RequestNotLogged, RetryableDelivery
from worker.helicone import HeliconeClient

KEY = "sk-helicone-props-1"


async def test_a_property_is_stored_read_back_and_dumped() -> None:
    rid = str(uuid.uuid4())
    async with Receiver() as receiver, HeliconeClient(SecretStr(KEY), base_url=receiver.url) as c:
        record = await c.put_request_property(rid, "Feedback-Rule", "engagement")
        await c.put_request_property(rid, "Feedback-Signals", "copied")
        await c.put_request_property(rid, "Feedback-Rule", "explicit")  # last write wins
        assert record.status == 200 and record.endpoint == "request_property"
        expected = {"Feedback-Rule": "explicit", "Feedback-Signals": "copied"}
        assert receiver.properties.of(rid) == expected
        read = await c.get_request(rid)
        assert read is not None and read["properties"] == expected
        async with httpx.AsyncClient(base_url=receiver.url) as admin:
            dumped = (await admin.get("/_admin/stored")).json()
        assert dumped["properties"] == {rid: expected}
        assert [r.method for r in receiver.records] == ["PUT"] * 3


async def test_an_unknown_request_is_answered_like_helicone_until_it_is_logged() -> None:
    rid = str(uuid.uuid4())
    known: set[str] = set()
    async with (
        Receiver(known_requests=known) as receiver,
        HeliconeClient(SecretStr(KEY), base_url=receiver.url) as client,
    ):
        with pytest.raises(RequestNotLogged) as caught:
            await client.put_request_property(rid, "Feedback-Rule", "engagement")
        assert caught.value.status == 500 and "Request not found" in caught.value.body_excerpt
        assert receiver.properties.of(rid) == {}
        known.add(rid)  # Helicone logs the request
        await client.put_request_property(rid, "Feedback-Rule", "engagement")
        assert receiver.properties.of(rid) == {"Feedback-Rule": "engagement"}


async def test_property_calls_count_toward_the_write_rate_limit() -> None:
    rid = str(uuid.uuid4())
    async with (
        Receiver(rate_limit=2) as receiver,
        HeliconeClient(SecretStr(KEY), base_url=receiver.url) as client,
    ):
        await client.post_request_scores(rid, {"helicone-score-feedback": 1})
        await client.put_request_property(rid, "Feedback-Rule", "engagement")
        with pytest.raises(RetryableDelivery) as caught:
            await client.put_request_property(rid, "Feedback-Signals", "copied")
        assert caught.value.status == 429
        assert not isinstance(caught.value, RequestNotLogged)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"key": "k"}, "requestBody.value"),
        ({"key": 1, "value": "v"}, "requestBody.key"),
        ({"key": "k", "value": "v", "extra": 1}, "requestBody"),
        (["k", "v"], "requestBody"),
    ],
)
async def test_a_bad_body_is_a_422_with_tsoa_details(body: object, field: str) -> None:
    rid = str(uuid.uuid4())
    async with Receiver() as receiver, httpx.AsyncClient(base_url=receiver.url) as http:
        answer = await http.put(
            f"/v1/request/{rid}/property", json=body, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert answer.status_code == 422
        assert field in answer.json()["details"]


async def test_the_client_refuses_what_helicone_could_not_take() -> None:
    async with HeliconeClient(SecretStr(KEY), base_url="http://127.0.0.1:9") as client:
        with pytest.raises(PermanentDelivery):
            await client.put_request_property("not-a-uuid", "k", "v")
        with pytest.raises(PermanentDelivery):
            await client.put_request_property(str(uuid.uuid4()), "k", "")
