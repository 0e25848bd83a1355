"""A real redis-server for the tests: Debian's, started on a free loopback port in
a temporary directory, stopped (and started again, on the same port) at will.

Without ``redis-server`` on PATH the tests that need it skip, saying why, except
under ``CI=true``, where that fails them: CI installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

__all__ = ["RedisServer", "free_port", "redis_server_fixture"]


class RedisServer:
    """A redis-server of the tests' own on 127.0.0.1."""

    def __init__(self, executable: str, directory: Path) -> None:
        self._executable = executable
        self._directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it answers (a guard of 10 s)."""
        self._process = subprocess.Popen(
            [
                self._executable,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self._directory),
                "--save", "",
                "--appendonly", "no",
                "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        with redis.Redis.from_url(self.url) as client:  # pyright: ignore[reportUnknownMemberType]
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self._process.poll() is not None:
                        raise
                    time.sleep(0.01)

    def stop(self) -> None:
        """Stop it (its data goes with it: it saves nothing)."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def start_if_stopped(self) -> None:
        if self._process is None:
            self.start()

    def flush(self) -> None:
        with redis.Redis.from_url(self.url) as client:  # pyright: ignore[reportUnknownMemberType]
            client.flushall()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The body of the ``redis_server`` fixture (conftest.py)."""
    executable = shutil.which("redis-server")
    if executable is None:
        reason = "redis-server is not installed (Debian's package redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI installs it, and must have")
        pytest.skip(reason)
    server = RedisServer(executable, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
