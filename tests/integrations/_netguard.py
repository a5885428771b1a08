"""A socket guard: any connection or DNS lookup that is not loopback fails the test run.

Installed by ``tests/integrations/conftest.py`` for the framework tests (CrewAI and LangChain
reach for telemetry, version checks and hosted APIs when misconfigured). A blocked attempt raises
``NetworkBlocked`` at once and is also recorded, so one swallowed by a framework's own
``except Exception`` still fails the session (see the conftest's ``pytest_sessionfinish``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

attempts: list[str] = []


class NetworkBlocked(ConnectionRefusedError):
    """A test tried to reach something other than loopback."""


def _is_loopback(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(what: str, host: Any, port: Any) -> None:
    if not _is_loopback(host):
        attempts.append(f"{what} {host}:{port}")
        raise NetworkBlocked(f"network access blocked in tests: {what} {host}:{port}")


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _connect(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check("connect", address[0], address[1])
    return _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check("connect", address[0], address[1])
    return _real_connect_ex(self, address)


def _getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    if host is not None:
        _check("getaddrinfo", host, port)
    return _real_getaddrinfo(host, port, *args, **kwargs)


def install() -> None:
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _getaddrinfo


def main() -> None:
    """``python _netguard.py script.py args...``: run a script with the guard installed.

    Used for the tests that run agents in a child process; exits 3 if the script tried to
    reach anything but loopback (even when the script caught the error).
    """
    import runpy
    import sys

    install()
    sys.argv = sys.argv[1:]
    # As `python script.py` would: the script's folder first, not this one (whose `crewai/` and
    # `langgraph/` test packages would shadow the real ones).
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        if attempts:
            sys.stderr.write(f"blocked network attempts: {attempts}\n")
            sys.stdout.flush()
            os._exit(3)


if __name__ == "__main__":
    main()
