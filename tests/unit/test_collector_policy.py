"""Write keys, CORS origins and per-address rate limits (worker/collector/policy.py)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from worker.collector.policy import Origins, RateLimiter, WriteKeys, presented_key

KEYS = WriteKeys([SecretStr("pk_live_one"), SecretStr("pk_live_two")])


# --------------------------------------------------------------------------- write keys


@pytest.mark.parametrize(
    ("query", "authorization", "expected"),
    [
        ("q", None, "q"),
        (None, "Bearer h", "h"),
        ("q", "Bearer h", "h"),  # the header wins
        ("q", "bearer  h ", "h"),
        ("q", "Basic abc", "q"),  # another scheme is not a write key
        (None, "Bearer ", None),
        ("", None, None),
        (None, None, None),
    ],
)
def test_presented_key(query: str | None, authorization: str | None, expected: str | None) -> None:
    assert presented_key(query, authorization) == expected


def test_each_write_key_is_accepted() -> None:
    assert KEYS.check("pk_live_one") is None
    assert KEYS.check("pk_live_two") is None


@pytest.mark.parametrize(
    ("candidate", "error"),
    [
        (None, "missing_write_key"),
        ("pk_live_on", "unknown_write_key"),
        ("pk_live_one ", "unknown_write_key"),
        ("PK_LIVE_ONE", "unknown_write_key"),
        ("pk_live_önë", "unknown_write_key"),
        ("pk_live_one" * 100, "unknown_write_key"),
    ],
)
def test_other_keys_are_refused_without_echoing_them(candidate: str | None, error: str) -> None:
    refused = KEYS.check(candidate)
    assert refused is not None and refused.error == error and refused.status == 401
    assert "pk_live" not in refused.message
    assert "pk_live" not in repr(KEYS)


def test_no_keys_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        WriteKeys([])


# --------------------------------------------------------------------------- origins


def test_listed_origins_are_echoed_others_refused_and_vary_always_set() -> None:
    origins = Origins(frozenset({"https://app.example.com"}))
    assert origins.permits("https://app.example.com")
    assert origins.permits("https://app.example.com/")
    assert not origins.permits("https://evil.example.com")
    assert not origins.permits("null")
    assert origins.headers("https://app.example.com") == {
        "Vary": "Origin",
        "Access-Control-Allow-Origin": "https://app.example.com",
        "Access-Control-Expose-Headers": "Retry-After",
    }
    assert origins.headers("https://evil.example.com") == {"Vary": "Origin"}
    preflight = origins.preflight_headers("https://app.example.com")
    assert "POST" in preflight["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight["Access-Control-Allow-Headers"]


def test_no_origin_header_is_not_a_browser_and_gets_no_cors_headers() -> None:
    origins = Origins(frozenset())
    assert origins.permits(None)
    assert origins.headers(None) == {"Vary": "Origin"}
    assert not origins.permits("https://app.example.com")  # nothing listed: no browser


def test_star_only_when_listed() -> None:
    star = Origins(frozenset({"*"}))
    assert star.permits("https://anything.example")
    assert star.headers("https://anything.example")["Access-Control-Allow-Origin"] == "*"


# --------------------------------------------------------------------------- rate limits


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_allows_a_burst_then_says_how_long_to_wait() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2, clock=clock)
    assert [limiter.take("a") for _ in range(2)] == [None, None]
    assert limiter.take("a") == 1
    assert limiter.take("b") is None  # per address
    clock.t += 0.5
    assert limiter.take("a") is None  # one token back after 1/rate s
    assert limiter.take("a") == 1


def test_retry_after_is_whole_seconds_and_covers_the_wait() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=0.2, clock=clock)  # one request per 5 s
    assert limiter.take("a") is None
    wait = limiter.take("a")
    assert wait == 5
    clock.t += wait
    assert limiter.take("a") is None


def test_the_map_of_addresses_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1, clock=clock, max_addresses=100)
    for n in range(10_000):
        limiter.take(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter) == 100
