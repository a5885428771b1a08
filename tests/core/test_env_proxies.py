"""Proxies from the environment (HTTP_PROXY, NO_PROXY...) apply to endpoints built from URLs, as
they do to the SDK's own clients: the shared HTTP client is given a transport (the pool router),
and httpx/httpx2 skip the environment when given one. Against a real forward proxy on loopback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from gonka_mux import AsyncMultiplexer
from gonka_mux.testing import FakeBackendSpec, FakeFleet

MSG = [{"role": "user", "content": "hello"}]
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class ForwardProxy:
    """An HTTP forward proxy that "knows the way": every request it is sent (absolute-form, as
    clients send to a proxy) goes to one upstream, one request per connection."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.seen: list[str] = []  # request targets, as the client sent them
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.rstrip("\r\n").split("\r\n")
            method, target, version = request_line.split(" ")
            self.seen.append(target)
            headers = [line.split(":", 1) for line in lines if line]
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
            body = await reader.readexactly(length)
            parts = urlsplit(target)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            hop_by_hop = ("connection", "proxy-connection")
            kept = [f"{k}:{v}" for k, v in headers if k.lower() not in hop_by_hop]
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            forwarded = "".join(f"{h}\r\n" for h in kept)
            up_writer.write(
                f"{method} {path} {version}\r\n{forwarded}Connection: close\r\n\r\n".encode(
                    "latin-1"
                )
                + body
            )
            await up_writer.drain()
            writer.write(await up_reader.read())
            await writer.drain()
            up_writer.close()
        finally:
            writer.close()


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.fixture
def backend_and_proxy() -> Iterator[tuple[object, ForwardProxy]]:
    with FakeFleet([FakeBackendSpec(name="upstream")]) as fleet:
        backend = fleet["upstream"]
        with ForwardProxy(backend.url) as proxy:
            yield backend, proxy


async def test_http_proxy_carries_endpoints_built_from_urls(clean_environment, backend_and_proxy):
    backend, proxy = backend_and_proxy
    clean_environment.setenv("HTTP_PROXY", proxy.url)
    mux = AsyncMultiplexer()
    # A host only the proxy can reach: without it, this endpoint cannot answer.
    mux.add_endpoint("http://behind-the-proxy.invalid:8080/v1", models=["m"], name="far")
    reply = await mux.chat.completions.create(model="m", messages=MSG)
    assert reply.choices[0].message.content
    assert proxy.seen == ["http://behind-the-proxy.invalid:8080/v1/chat/completions"]
    # The relay path (the gateway's) leaves proxied URLs to the HTTP library's proxy transport.
    relayed = await mux.chat.completions.relay(model="m", messages=MSG)
    assert relayed.choices[0].message.content and len(proxy.seen) == 2
    stream = await mux.chat.completions.relay(model="m", messages=MSG, stream=True)
    assert [item async for item in stream] and len(proxy.seen) == 3
    assert backend.request_count == 3
    await mux.aclose()


async def test_no_proxy_hosts_are_sent_to_directly(clean_environment, backend_and_proxy):
    backend, proxy = backend_and_proxy
    clean_environment.setenv("HTTP_PROXY", proxy.url)
    clean_environment.setenv("NO_PROXY", "127.0.0.1,localhost")
    mux = AsyncMultiplexer()
    mux.add_endpoint(backend.url, models=["m"], name="near")
    await mux.chat.completions.create(model="m", messages=MSG)
    await mux.chat.completions.relay(model="m", messages=MSG)
    assert proxy.seen == [] and backend.request_count == 2
    await mux.aclose()


async def test_without_proxy_variables_nothing_is_mounted(clean_environment, backend_and_proxy):
    backend, proxy = backend_and_proxy
    mux = AsyncMultiplexer()
    mux.add_endpoint(backend.url, models=["m"], name="near")
    await mux.chat.completions.create(model="m", messages=MSG)
    assert mux._clients.http_client._mounts == {}
    assert proxy.seen == [] and backend.request_count == 1
    await mux.aclose()
