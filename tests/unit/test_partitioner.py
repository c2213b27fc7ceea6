"""The partitioner the collector and the worker share (worker/partitioner.py) places every
key exactly where Kafka's default partitioner does: the Java client's test vectors, and
aiokafka's own ``murmur2`` and ``DefaultPartitioner`` over arbitrary keys and partition
counts."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.partitioner import murmur2, partition_for


def _signed(value: int) -> int:
    """An unsigned 32-bit value read as Java's signed ``int``."""
    return value - (1 << 32) if value >= 1 << 31 else value


@pytest.mark.parametrize(
    ("data", "java"),
    [  # org.apache.kafka.common.utils.UtilsTest.testMurmur2
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        (b"abc", 479_470_107),
    ],
)
def test_murmur2_matches_the_java_client(data: bytes, java: int) -> None:
    assert _signed(murmur2(data)) == java


@pytest.mark.parametrize("length", range(0, 12))  # every tail length, with and without words
def test_murmur2_matches_aiokafka_at_every_length(length: int) -> None:
    data = bytes(range(200, 200 + length))
    assert murmur2(data) == aiokafka_murmur2(data)


@settings(max_examples=2_000, deadline=None)
@given(data=st.binary(max_size=300))
def test_murmur2_matches_aiokafka(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@settings(max_examples=1_000, deadline=None)
@given(
    key=st.one_of(st.binary(max_size=80), st.uuids().map(lambda u: str(u).encode())),
    partitions=st.integers(1, 1_000),
)
def test_partition_is_aiokafkas_default_partitioner(key: bytes, partitions: int) -> None:
    every = list(range(partitions))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, every, every)


def test_request_ids_spread_over_the_partitions() -> None:
    counts = [0] * 8
    for _ in range(8_000):
        counts[partition_for(str(uuid.uuid4()).encode(), 8)] += 1
    assert min(counts) > 800  # 1,000 expected each


def test_a_repeated_key_is_answered_from_the_cache() -> None:
    """The worker asks once per event and per decision; a request's key repeats."""
    key = str(uuid.uuid4()).encode()
    first = partition_for(key, 8)
    hits = partition_for.cache_info().hits
    assert partition_for(key, 8) == first
    assert partition_for.cache_info().hits == hits + 1
