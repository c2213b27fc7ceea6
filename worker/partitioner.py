"""Kafka's default partitioner for keyed records: the one implementation in this project.

:func:`partition_for` is ``(murmur2(key) & 0x7fffffff) % partitions`` with the Java client's
``murmur2`` (which aiokafka's ``DefaultPartitioner`` and kafkajs also use), so a record's
partition is the one any other producer of the same key picks.  Two sides rely on that:

* the collector names each keyed record's partition itself and hands it to
  ``AIOKafkaProducer.send(partition=...)``, which then skips its own partitioner;
* the worker checks whether an event, or a decision, already sits on the partition that
  owns its request's state, and forwards it there when not (DESIGN 2).

Because both call this function, they cannot disagree on where a key belongs.

This module imports nothing outside the standard library, so the collector's and the
worker's pure cores can use it.  :func:`murmur2` reads the key as little-endian 32-bit
words in one :func:`struct.unpack_from`, four arithmetic steps per word, where aiokafka's
reads it a byte at a time; both are checked against each other (hypothesis) and against
the Java client's test vectors (tests/unit/test_partitioner.py).
"""

from __future__ import annotations

from functools import lru_cache
from struct import unpack_from
from typing import Final

__all__ = ["murmur2", "partition_for"]

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The Java client's ``Utils.murmur2`` of ``data``, as an unsigned 32-bit integer (the
    Java value is the same bits read as a signed ``int``)."""
    length = len(data)
    h = _SEED ^ length
    words = length >> 2
    if words:
        for k in unpack_from(f"<{words}I", data):
            k = (k * _M) & _MASK
            # (a & m) ^ (b & m) == (a ^ b) & m: one mask for h and k together
            h = ((h * _M) ^ ((k ^ (k >> 24)) * _M)) & _MASK
    tail = length & 3
    if tail:
        end = length - tail
        if tail == 3:
            h ^= data[end + 2] << 16
        if tail >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


@lru_cache(maxsize=65_536)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``.

    Cached: the worker asks once per event and per decision, and a request's events and
    decisions repeat its key; a hit skips the hash.  The result depends on the arguments
    alone, so a cached answer is always the current one.
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions
