"""Development and test stand-ins for the worker's real counterparts (DESIGN 2).

``receiver`` is a Helicone-compatible HTTP server with fault injection; ``broker`` starts an
embedded Kafka-protocol broker.  Both are used by the demo and the tests, never in production.
"""
