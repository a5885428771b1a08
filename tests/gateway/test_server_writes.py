"""The CLI's uvicorn protocol sends what one event-loop turn writes in one ``send()`` (a JSON
response's headers and body together), and responses stay whole and in order: JSON and SSE on one
kept-alive connection, with the protocol h11 and httptools give."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import uvicorn

from gonka_mux.gateway.server import CoalescingTransport, header_timeout_protocol
from gonka_mux.testing import Reply

from ._serve import _socket
from .conftest import MSG, make_gateway

pytestmark = pytest.mark.asyncio


class RecordingTransport:
    """What a socket transport would have been asked to write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


class SpyTransport:
    """A real transport, its writes noted."""

    def __init__(self, transport: Any, sent: list[bytes]) -> None:
        self._transport = transport
        self._sent = sent

    def write(self, data: bytes) -> None:
        self._sent.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def test_writes_in_one_turn_leave_together_and_close_flushes_first():
    loop = asyncio.get_running_loop()
    raw = RecordingTransport()
    transport = CoalescingTransport(raw, loop)
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert raw.writes == []  # not before the turn ends
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert raw.writes[-1] == b"next"  # a later turn: its own write, not held back
    transport.write(b"last words")
    transport.close()
    assert raw.writes[-1] == b"last words" and raw.closed
    await asyncio.sleep(0)
    assert len(raw.writes) == 3  # the scheduled flush found nothing more to send
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_nothing_is_written_to_a_transport_that_closed():
    raw = RecordingTransport()
    transport = CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"late")
    raw.closed = True  # the client went away before the turn ended
    await asyncio.sleep(0)
    assert raw.writes == []


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_json_and_sse_through_the_cli_protocol_on_one_connection(fleet, tmp_path, http):
    pytest.importorskip(http)
    app, state = await make_gateway(list(fleet), tmp_path)
    _, key = state["keys"].create()
    for backend in fleet:
        backend.set_replies([Reply("one two three")] * 20)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", http=http)
    config.load()
    base = header_timeout_protocol(config.http_protocol_class, 5)
    sent: list[bytes] = []

    class Recorded(base):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(SpyTransport(transport, sent))

    config.http_protocol_class = Recorded
    server = uvicorn.Server(config)
    sock = _socket()
    task = asyncio.create_task(server.serve(sockets=[sock]))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        for _ in range(1000):
            if server.started:
                break
            await asyncio.sleep(0.01)
        limits = httpx.Limits(max_connections=1)  # every request on the one connection
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            client.headers["Authorization"] = f"Bearer {key}"
            for _ in range(3):
                reply = await client.post(
                    "/v1/chat/completions", json={"model": "m", "messages": MSG}
                )
                assert reply.status_code == 200
                assert reply.json()["choices"][0]["message"]["content"] == "one two three"
                # status line, headers and JSON body went out in one write
                assert sent[-1].startswith(b"HTTP/1.1 200") and sent[-1].endswith(reply.content)
                body = {"model": "m", "messages": MSG, "stream": True}
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    raw = await r.aread()
                events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
                assert events[-1] == b"[DONE]"
                text = "".join(
                    c["choices"][0]["delta"].get("content") or ""
                    for c in map(json.loads, events[:-1])
                    if c["choices"]
                )
                assert text == "one two three"
            missing = await client.get("/nope")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
        await state["mux"].aclose()


async def test_added_middleware_still_sees_completion_requests(fleet, tmp_path):
    """The completion routes skip Starlette's stack only while no middleware was added."""
    from starlette.middleware.base import BaseHTTPMiddleware

    from ._serve import serve

    app, state = await make_gateway(list(fleet), tmp_path)
    _, key = state["keys"].create()
    seen: list[str] = []

    async def note(request: Any, call_next: Any) -> Any:
        seen.append(request.url.path)
        response = await call_next(request)
        response.headers["x-noted"] = "1"
        return response

    app.add_middleware(BaseHTTPMiddleware, dispatch=note)
    try:
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            client.headers["Authorization"] = f"Bearer {key}"
            reply = await client.post("/v1/chat/completions", json={"model": "m", "messages": MSG})
            wrong = await client.post("/v1/chat/completions", json={"model": "m"})
    finally:
        await state["mux"].aclose()
    assert reply.status_code == 200 and reply.headers["x-noted"] == "1"
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "messages"
    assert seen == ["/v1/chat/completions"] * 2
