"""The socket guard that keeps the framework tests offline really blocks (and allows loopback)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from . import _netguard


def test_non_loopback_connections_and_lookups_are_blocked():
    before = list(_netguard.attempts)
    try:
        with pytest.raises(_netguard.NetworkBlocked):
            socket.create_connection(("192.0.2.1", 443), timeout=1)
        with pytest.raises(_netguard.NetworkBlocked):
            socket.getaddrinfo("telemetry.crewai.com", 4319)
        assert len(_netguard.attempts) == len(before) + 2
    finally:
        _netguard.attempts[:] = before  # expected attempts: do not fail the session


def test_loopback_is_allowed():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=1):
            pass
    assert socket.getaddrinfo("localhost", 80)


def test_child_processes_run_under_the_guard(tmp_path: Path):
    script = tmp_path / "phone_home.py"
    script.write_text(
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 443), timeout=1)\n"
        "except OSError:\n"
        "    pass  # a framework swallowing the error must still fail the run\n"
    )
    done = subprocess.run(
        [sys.executable, _netguard.__file__, str(script)], capture_output=True, text=True
    )
    assert done.returncode == 3 and "192.0.2.1:443" in done.stderr
