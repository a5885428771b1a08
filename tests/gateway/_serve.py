"""Serve the gateway with uvicorn on a free loopback port: on the test's loop, or on a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import uvicorn


def _socket() -> socket.socket:
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every response waits 40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _server(app: Any) -> uvicorn.Server:
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    return uvicorn.Server(config)


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Yield the base URL (``http://127.0.0.1:PORT``) while uvicorn serves ``app`` on this loop."""
    sock = _socket()
    server = _server(app)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()


@contextlib.contextmanager
def serve_in_thread(build: Callable[[], Awaitable[tuple[Any, Any]]]) -> Iterator[tuple[str, Any]]:
    """Run ``build()`` (returns ``(app, state)``) and uvicorn on a thread with its own loop, so
    synchronous clients (schemathesis, the CLI tests) can call it. Yields ``(url, state)``."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway-under-test", daemon=True)
    thread.start()
    sock = _socket()
    app, state = asyncio.run_coroutine_threadsafe(build(), loop).result(30)
    server = _server(app)
    done = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), loop)
    try:
        for _ in range(1000):
            if server.started or done.done():
                break
            threading.Event().wait(0.01)
        if done.done():
            done.result()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", state
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            done.result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        sock.close()
