"""Command groups of ``feedback-worker`` that live outside :mod:`worker.cli` (``dlq``)."""
