"""Kafka's default partitioner for keyed records, pure and faster than aiokafka's.

The collector names each keyed record's partition itself and hands it to
``AIOKafkaProducer.send(partition=...)``, which then skips its own partitioner.  The
placement is exactly Kafka's (the Java client's ``murmur2``, which aiokafka's
``DefaultPartitioner`` also uses): ``(murmur2(key) & 0x7fffffff) % partitions``, so a
record lands where any other producer of the same key puts it, and where the worker looks
for its request's state (DESIGN 2).  Unkeyed records are left to aiokafka (a random
available partition), as before.

Why not aiokafka's ``murmur2``: it is pure Python too, but it reads the key a byte at a
time, masking after every operation; here the key is read as little-endian 32-bit words in
one :func:`struct.unpack_from` and each word takes four arithmetic steps.  Both are checked
against each other (hypothesis) and against the Java client's test vectors
(tests/unit/test_collector_partitioner.py).
"""

from __future__ import annotations

from struct import unpack_from
from typing import Final

__all__ = ["murmur2", "partition_for_key"]

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


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
