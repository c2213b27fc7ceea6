"""The HTTP collector (DESIGN 11): browsers and backends post events over HTTP.

Map of the package::

    batch.py        pure core: body bytes -> Batch (records to write) | Refusal (typed error)
    policy.py       pure policies: write keys, CORS origins, per-address token buckets
    producer.py     the Kafka side: one idempotent producer, a batch acknowledged whole or 503
    app.py          aiohttp handlers, thin adapters over the above
    server.py       wiring from Settings, start_collector() for tests, serve() for the CLI

Events are validated by :func:`worker.validation.inspect_record`, the same function the ingest
agent runs, so the collector and the worker never disagree about what is valid.

This module imports nothing at load time, so the pure core (``batch``, ``policy``) loads
without aiohttp or aiokafka.  :func:`start_in_process` is the entry point for code outside the
package (the demo command), so it depends on no adapter module; tests and the CLI's
``collect`` may use :mod:`worker.collector.server` directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.collector.server import RunningCollector
    from worker.config import Settings

__all__ = ["start_in_process"]


async def start_in_process(settings: Settings) -> RunningCollector:
    """The collector started in this process from ``settings`` (their host and port, topics
    created), as :func:`worker.collector.server.start_collector` starts it; stop it with
    ``await running.stop()``."""
    from worker.collector.server import start_collector

    return await start_collector(settings)
