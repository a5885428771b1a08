"""A real PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` into a temp dir on a free port.

Import the fixture into a conftest (``from tests._postgres import postgres_url  # noqa: F401``);
it is session-scoped, so one server serves every test: each test should use its own database
(the ``fresh_database`` helper) or its own table prefix. As root (CI), the server runs as the
``postgres`` user through ``runuser``, because PostgreSQL refuses to run as root.

Tests that use it are marked ``postgres`` and deselected by default; ``.ci/run`` installs
Debian's ``postgresql`` and selects them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not candidates:
        raise RuntimeError(
            "PostgreSQL is not installed (no pg_ctl): apt-get install postgresql, "
            "or deselect the tests marked 'postgres'"
        )
    return Path(candidates[-1]).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


class PostgresServer:
    """One initdb'd cluster; ``start()``/``stop()`` may be called again (outage tests)."""

    def __init__(self, directory: Path) -> None:
        self.bindir = _bindir()
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else (os.environ.get("USER") or "postgres")
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres", "postgres")
            os.chmod(directory, 0o700)
        subprocess.run(
            _as_server_user(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        subprocess.run(
            _as_server_user(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "30",
                    "start",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_ready()

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_server_user(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]
            ),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        text = self.log.read_text() if self.log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not listen on {self.port} within 30 s: {text[-2000:]}")

    def fresh_database(self) -> str:
        """Create an empty database and return its URL (isolates one test from another)."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)


@contextlib.contextmanager
def running_postgres(directory: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # Not under pytest's tmp dir: that one is 0700 to root, and the server runs as 'postgres'.
    directory = Path(tempfile.mkdtemp(prefix="gonka-mux-pg-"))
    try:
        with running_postgres(directory) as server:
            yield server
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server: PostgresServer) -> str:
    """A URL of a fresh, empty database on the session's server."""
    return postgres_server.fresh_database()
