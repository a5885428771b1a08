"""A real ``redis-server`` for tests: started on a free loopback port in a temp dir, then stopped.

Import the fixture into a conftest (``from tests._redis import redis_url  # noqa: F401``); it is
session-scoped, so one server serves every test, and each test should use its own key prefix.

For an outage, use a :class:`RedisServer` of the test's own (``with RedisServer(tmp_path) as
server:``): ``stop()`` / ``start()`` restart it on the same port (empty), ``pause()`` /
``resume()`` freeze it (SIGSTOP: connections hang instead of being refused).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A ``redis-server`` (no persistence) that a test can stop and start again on the same port,
    to play a Redis outage: ``stop()`` terminates the process, ``start()`` brings up a fresh one
    (empty: nothing is saved) on the port of the first.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = directory / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Start the server (if it is not running) and wait until it answers PING."""
        if self.running:
            return self.url
        deadline = time.monotonic() + 15
        while True:
            self._proc = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.directory),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--logfile",
                    str(self.log),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait_ready(self.port, self._proc, self.log)
                return self.url
            except RuntimeError:
                # On a restart the old socket may linger a moment (the bind fails): try again.
                if self._proc.poll() is None or time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 10 s) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections open but nothing answers, like a hung host."""
        assert self._proc is not None, "the server is not running"
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        assert self._proc is not None, "the server is not running"
        self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_redis(directory: Path) -> Iterator[str]:
    """Start ``redis-server`` (no persistence) and yield its ``redis://`` URL."""
    with RedisServer(directory) as server:
        yield server.url


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"redis-server exited with {proc.returncode}: {text[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"redis-server did not answer PING on port {port} within 15 s")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url
