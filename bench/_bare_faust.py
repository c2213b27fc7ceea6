"""Baseline (b) of bench/pipeline.py: a bare Faust agent that only decodes each record.

Run as its own process: ``python bench/_bare_faust.py BOOTSTRAP TOPIC N PARTITIONS OUT.json``.
Writes ``{"events": N, "seconds": ...}`` (first record to N-th record) and exits.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import faust
import orjson

bootstrap, topic_name, total, partitions, out = (
    sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
)
app = faust.App(
    f"bare-{uuid.uuid4().hex[:8]}",
    broker=f"kafka://{bootstrap}",
    store="memory://",
    topic_partitions=partitions,
    broker_rebalance_timeout=6,
    broker_session_timeout=10,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    key_serializer="raw",
    value_serializer="raw",
)
topic = app.topic(topic_name, key_type=bytes, value_type=bytes, partitions=partitions)
state = {"n": 0, "t0": 0.0}


@app.agent(topic)
async def decode(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        orjson.loads(event.message.value)
        state["n"] += 1
        if state["n"] == 1:
            state["t0"] = time.perf_counter()
        elif state["n"] >= total:
            seconds = time.perf_counter() - state["t0"]
            with open(out, "wb") as f:
                f.write(orjson.dumps({"events": total, "seconds": seconds}))
            os._exit(0)


if __name__ == "__main__":
    faust.Worker(app, loglevel="warn").execute_from_commandline()
