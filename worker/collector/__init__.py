"""The HTTP collector (DESIGN 11): browsers and backends post events over HTTP.

Map of the package::

    batch.py        pure core: body bytes -> Batch (records to write) | Refusal (typed error)
    policy.py       pure policies: write keys, CORS origins, per-address token buckets
    producer.py     the Kafka side: one idempotent producer, a batch acknowledged whole or 503
    app.py          aiohttp handlers, thin adapters over the above
    server.py       wiring from Settings, start_collector() for tests, serve() for the CLI

Events are validated by :func:`worker.ingest.inspect_record`, the same function the ingest
agent runs, so the collector and the worker never disagree about what is valid.

This module imports nothing, so the pure core (``batch``, ``policy``) loads
without aiohttp or aiokafka; start the service from :mod:`worker.collector.server`.
"""
