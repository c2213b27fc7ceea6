"""Shared test setup: a clean environment per test, and the fixture areas."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.config import Settings

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.worker",
    "tests.fixtures.delivery",
    "tests.fixtures.collector",
]


@pytest.fixture(autouse=True)
def _clean_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """A developer's shell (or a .env file) must never change a test's result."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # no stray .env is picked up
    yield
