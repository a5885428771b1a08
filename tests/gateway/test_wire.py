"""The relay hop's own HTTP/1.1 client (``gonka_mux._wire``): used only for the Multiplexer's plain
shared client, and indistinguishable from the httpx2 path it replaces in what it sends, what it
returns and what it raises. Every endpoint here is a real loopback server: the project's fake
backend, or a raw asyncio server where a test needs bytes the fake does not send (gzip, a
redirect, a body delimited by the connection's end)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("httptools")
httpx2 = pytest.importorskip("httpx2")
openai = pytest.importorskip("openai")
if int(openai.__version__.split(".")[0]) < 3:  # pragma: no cover - 2.x: no hop
    pytest.skip("the relay hop needs openai 3.x", allow_module_level=True)

from openai import AsyncStream  # noqa: E402
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402

from gonka_mux import AsyncMultiplexer  # noqa: E402
from gonka_mux._hop import DirectHop, direct_hop  # noqa: E402
from gonka_mux._raw_stream import DONE_EVENT, RawSSEStream  # noqa: E402
from gonka_mux._wire import WireResponse  # noqa: E402
from gonka_mux.testing import FakeBackend, Faults, Reply  # noqa: E402

pytestmark = pytest.mark.asyncio

PATH = "/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
CONTENT = json.dumps(BODY).encode()
STREAM_CONTENT = json.dumps({**BODY, "stream": True}).encode()


def timeout(read: float = 10.0, connect: float = 5.0) -> Any:
    return httpx2.Timeout(read, connect=connect)


@contextlib.asynccontextmanager
async def plain_client(url: str) -> AsyncIterator[Any]:
    """An endpoint's openai client as the Multiplexer builds it from a URL (the shared HTTP
    client over its pool router): what the gateway's configured endpoints use."""
    mux = AsyncMultiplexer(max_attempts=1)
    mux.add_endpoint(url, models=["m"], name="a", api_key="sk-endpoint")
    (endpoint,) = mux._core.endpoints.values()
    try:
        yield endpoint.client
    finally:
        await mux.aclose()


async def hop_of(client: Any) -> DirectHop:
    hop = await direct_hop(client, PATH, dict)
    assert isinstance(hop, DirectHop)
    return hop


def pool_of(hop: DirectHop) -> Any:
    assert hop.wire is not None, "the plain client should be sent to by the wire client"
    return hop.wire.pool


async def read_stream(stream: Any) -> list[bytes]:
    events: list[bytes] = []
    async for batch in stream:
        events.extend(data for data, _ in batch)
    return events


async def via_httpx2(hop: DirectHop, *args: Any, **kwargs: Any) -> Any:
    """The hop's result with its wire client switched off: the httpx2 path it replaces."""
    wire, hop.wire = hop.wire, None
    try:
        return await hop.post(*args, **kwargs)
    finally:
        hop.wire = wire


# -- what goes out, what comes back ---------------------------------------------------------


async def test_json_and_streams_go_over_one_kept_alive_connection():
    with FakeBackend(name="a", models=["m"]) as backend:
        async with plain_client(backend.url) as client:
            hop = await hop_of(client)
            pool = pool_of(hop)
            for _ in range(3):
                reply = await hop.post(CONTENT, timeout(), ChatCompletion)
                assert isinstance(reply, ChatCompletion) and reply.choices[0].message.content
                stream = await hop.post(
                    STREAM_CONTENT, timeout(), None, RawSSEStream, ChatCompletionChunk
                )
                assert isinstance(stream.response, WireResponse)
                events = await read_stream(stream)
                assert events[-1] == DONE_EVENT[0] and len(events) > 2
                assert json.loads(events[0])["object"] == "chat.completion.chunk"
            assert pool.idle_connections == 1
            assert backend.open_connections == 1  # six requests, one connection
            assert len(backend.requests) == 6


async def test_the_wire_sends_the_headers_httpx2_sends():
    with FakeBackend(name="a", models=["m"], api_key="sk-endpoint") as backend:
        async with plain_client(backend.url) as client:
            hop = await hop_of(client)
            pool_of(hop)
            await hop.post(CONTENT, timeout(), ChatCompletion)
            await via_httpx2(hop, CONTENT, timeout(), ChatCompletion)
            wire, reference = backend.requests[-2:]
            assert wire.path == reference.path and wire.body == reference.body == CONTENT
            assert list(wire.headers.items()) == list(reference.headers.items())
            assert wire.headers["authorization"] == "Bearer sk-endpoint"
            assert wire.headers["x-stainless-read-timeout"] == "10.0"


async def test_only_the_multiplexers_plain_shared_client_gets_the_wire():
    with FakeBackend(name="a", models=["m"]) as backend:
        # a client of its own (the SDK's transport, a connection cap): httpx2 sends
        own = openai.AsyncOpenAI(base_url=backend.url, api_key="k", max_retries=0)
        try:
            assert (await hop_of(own)).wire is None
        finally:
            await own.close()
        # a custom transport (what tests and proxies use)
        transport = httpx2.AsyncHTTPTransport()
        custom = openai.AsyncOpenAI(
            base_url=backend.url,
            api_key="k",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=transport),
        )
        try:
            assert (await hop_of(custom)).wire is None
        finally:
            await custom.close()

        async with plain_client(backend.url) as client:
            hop = await hop_of(client)
            pool = pool_of(hop)
            # an auth flow (Gonka's request signing is one) or an event hook added later: the
            # request goes by httpx2, and the hook sees it
            seen: list[Any] = []

            async def hook(request: Any) -> None:
                seen.append(request)

            client._client.event_hooks["request"].append(hook)
            await hop.post(CONTENT, timeout(), ChatCompletion)
            assert len(seen) == 1 and pool.idle_connections == 0
            client._client.event_hooks["request"].clear()
            await hop.post(CONTENT, timeout(), ChatCompletion)
            assert len(seen) == 1 and pool.idle_connections == 1


# -- errors: the same openai errors as the httpx2 path ---------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        Faults(status_errors={503: 1.0}),
        Faults(rate_429=1.0, retry_after=2),
        Faults(rate_500=1.0),
    ],
    ids=["503", "429", "500"],
)
async def test_status_errors_are_the_sdks(faults: Faults):
    with FakeBackend(name="a", models=["m"], faults=faults) as backend:
        async with plain_client(backend.url) as client:
            hop = await hop_of(client)
            pool = pool_of(hop)
            errors = []
            for send in (
                lambda: hop.post(CONTENT, timeout(), ChatCompletion),
                lambda: hop.post(
                    STREAM_CONTENT, timeout(), None, RawSSEStream, ChatCompletionChunk
                ),
                lambda: client.post(
                    PATH, cast_to=ChatCompletion, body=BODY, options={"timeout": timeout()}
                ),
            ):
                with pytest.raises(openai.APIStatusError) as caught:
                    await send()
                errors.append(caught.value)
            wire, wire_stream, sdk = errors
            for err in (wire, wire_stream):
                assert type(err) is type(sdk)
                assert (err.status_code, err.body) == (sdk.status_code, sdk.body)
                assert str(err) == str(sdk)
                assert err.response.headers.get("retry-after") == sdk.response.headers.get(
                    "retry-after"
                )
                assert err.request.url == sdk.request.url
            assert pool.idle_connections == 1  # an error body read to its end: reused


async def test_a_reply_that_is_not_json_raises_as_the_httpx2_path():
    with FakeBackend(name="a", models=["m"], faults=Faults(rate_malformed=1.0)) as backend:
        async with plain_client(backend.url) as client:
            hop = await hop_of(client)
            pool_of(hop)
            errors = []
            for send in (hop.post, lambda *a: via_httpx2(hop, *a)):
                with pytest.raises(openai.APIResponseValidationError) as caught:
                    await send(CONTENT, timeout(), ChatCompletion)
                errors.append(caught.value)
            assert str(errors[0]) == str(errors[1])
            assert type(errors[0].body) is type(errors[1].body) is str  # the reply's text


async def test_transport_failures_and_timeouts_are_the_sdks():
    with FakeBackend(name="a", models=["m"]) as backend:
        async with plain_client(backend.url) as client:
            hop = await hop_of(client)
            pool = pool_of(hop)
            backend.set_faults(rate_drop_before=1.0)  # the socket closes before any response
            for send in (hop.post, lambda *a: via_httpx2(hop, *a)):
                with pytest.raises(openai.APIConnectionError) as caught:
                    await send(CONTENT, timeout(), ChatCompletion)
                assert type(caught.value) is openai.APIConnectionError
                assert caught.value.request.url == httpx2.URL(hop.url)

            backend.set_faults(Faults(rate_hang=1.0))  # never answers: the read timeout
            t0 = time.monotonic()
            with pytest.raises(openai.APITimeoutError) as timed_out:
                await hop.post(CONTENT, timeout(read=0.3), ChatCompletion)
            assert 0.25 < time.monotonic() - t0 < 3
            assert timed_out.value.request.headers["x-stainless-read-timeout"] == "0.3"
            assert pool.idle_connections == 0  # the timed-out connection is not pooled

    # nothing listens: connection refused
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with plain_client(f"http://127.0.0.1:{port}/v1") as client:
        hop = await hop_of(client)
        pool_of(hop)
        with pytest.raises(openai.APIConnectionError) as refused:
            await hop.post(CONTENT, timeout(), ChatCompletion)
        assert type(refused.value) is openai.APIConnectionError


async def test_a_stream_cut_mid_way_raises_a_connection_error():
    with FakeBackend(name="a", models=["m"], seed=3) as backend:
        backend.set_faults(rate_drop_mid_stream=1.0, inter_chunk=0.01)
        async with plain_client(backend.url) as client:
            hop = await hop_of(client)
            pool = pool_of(hop)
            stream = await hop.post(
                STREAM_CONTENT, timeout(), None, RawSSEStream, ChatCompletionChunk
            )
            with pytest.raises(openai.APIConnectionError):
                await read_stream(stream)
            assert pool.idle_connections == 0


# -- connections: never a half-read one back in the pool; a dead one never reused -----------


async def test_an_abandoned_or_cancelled_stream_closes_its_connection():
    replies = [Reply("one two three four five six seven eight")] * 4
    with FakeBackend(name="a", models=["m"], replies=replies) as backend:
        backend.set_faults(inter_chunk=0.05)
        async with plain_client(backend.url) as client:
            hop = await hop_of(client)
            pool = pool_of(hop)
            stream = await hop.post(
                STREAM_CONTENT, timeout(), None, RawSSEStream, ChatCompletionChunk
            )
            await stream.__anext__()  # the first events, then the caller walks away
            await stream.close()
            assert pool.idle_connections == 0
            for _ in range(100):
                if backend.open_connections == 0:
                    break
                await asyncio.sleep(0.01)
            assert backend.open_connections == 0  # closed, not left half-read

            async def consume() -> None:
                s = await hop.post(
                    STREAM_CONTENT, timeout(), None, RawSSEStream, ChatCompletionChunk
                )
                try:
                    await read_stream(s)
                finally:
                    await s.close()

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.08)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.idle_connections == 0

            backend.set_faults(inter_chunk=0.0)  # the next request: a new connection, whole
            stream = await hop.post(
                STREAM_CONTENT, timeout(), None, RawSSEStream, ChatCompletionChunk
            )
            assert (await read_stream(stream))[-1] == DONE_EVENT[0]
            assert pool.idle_connections == 1


async def test_a_pooled_connection_the_server_closed_is_not_reused():
    with FakeBackend(name="a", models=["m"]) as backend:
        async with plain_client(backend.url) as client:
            hop = await hop_of(client)
            pool = pool_of(hop)
            await hop.post(CONTENT, timeout(), ChatCompletion)
            assert pool.idle_connections == 1
            # closed while idle, and no turn of this loop since: its EOF is not seen yet, the
            # socket is polled before reuse
            backend.set_faults(down=True)  # closes the connections open now
            backend.set_faults(down=False)
            time.sleep(0.05)  # noqa: ASYNC251 - on purpose: the loop must not run meanwhile
            reply = await hop.post(CONTENT, timeout(), ChatCompletion)
            assert reply.choices[0].message.content
            # and closed with turns of the loop in between: connection_lost drops it
            backend.set_faults(down=True)
            backend.set_faults(down=False)
            for _ in range(100):
                if pool.idle_connections == 0:
                    break
                await asyncio.sleep(0.01)
            assert pool.idle_connections == 0
            assert (await hop.post(CONTENT, timeout(), ChatCompletion)).choices
            assert len([r for r in backend.requests if r.fault is None]) == 3


async def test_the_multiplexer_closing_closes_the_pooled_connections():
    with FakeBackend(name="a", models=["m"]) as backend:
        async with plain_client(backend.url) as client:
            hop = await hop_of(client)
            pool = pool_of(hop)
            await hop.post(CONTENT, timeout(), ChatCompletion)
            assert backend.open_connections == 1
        assert pool.closed and pool.idle_connections == 0
        for _ in range(100):
            if backend.open_connections == 0:
                break
            await asyncio.sleep(0.01)
        assert backend.open_connections == 0


async def test_the_multiplexer_closing_closes_a_stream_in_flight():
    """A relayed stream still open when the Multiplexer closes: its connection is closed with
    the shared client, as httpx2's pool closes its own, not left open until the stream goes."""
    replies = [Reply("one two three four five six seven eight")]
    with FakeBackend(name="a", models=["m"], replies=replies) as backend:
        backend.set_faults(inter_chunk=0.05)
        async with plain_client(backend.url) as client:
            hop = await hop_of(client)
            pool_of(hop)
            stream = await hop.post(
                STREAM_CONTENT, timeout(), None, RawSSEStream, ChatCompletionChunk
            )
            await stream.__anext__()
            assert backend.open_connections == 1
        for _ in range(100):
            if backend.open_connections == 0:
                break
            await asyncio.sleep(0.01)
        assert backend.open_connections == 0
        with pytest.raises(openai.APIConnectionError):
            await read_stream(stream)


# -- framings the fake does not send: a raw server ------------------------------------------

Handler = Callable[[bytes], list[bytes]]


@contextlib.asynccontextmanager
async def raw_server(answer: Handler) -> AsyncIterator[str]:
    """A loopback server answering each request (its head and body) with ``answer``'s parts,
    written one by one; a part ``b""`` closes the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                request = head + await reader.readexactly(length)
                for part in answer(request):
                    if not part:
                        return
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(0.005)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()


def completion(text: str) -> bytes:
    return json.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }
    ).encode()


async def test_gzip_chunked_and_until_close_bodies():
    zipped = gzip.compress(completion("zipped"))
    sse = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[]}'
    answers = iter(
        [
            # gzip, content-length, split across writes
            [
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                b"x-request-id: req-1\r\ncontent-length: %d\r\n\r\n" % len(zipped),
                zipped[:10],
                zipped[10:],
            ],
            # chunked, an event split across chunks, CRLF line ends
            [
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n",
                b"%x\r\n%s\r\n" % (20, sse[:20]),
                b"%x\r\n%s\r\n" % (len(sse) - 20 + 4, sse[20:] + b"\r\n\r\n"),
                b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n",
            ],
            # no length, not chunked: the body ends with the connection
            [
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n",
                completion("until close"),
                b"",
            ],
        ]
    )
    async with raw_server(lambda _: next(answers)) as url, plain_client(url) as client:
        hop = await hop_of(client)
        pool = pool_of(hop)
        reply = await hop.post(CONTENT, timeout(), ChatCompletion)
        assert reply.choices[0].message.content == "zipped"
        assert reply._request_id == "req-1"
        stream = await hop.post(STREAM_CONTENT, timeout(), None, RawSSEStream, ChatCompletionChunk)
        assert await read_stream(stream) == [sse[6:], DONE_EVENT[0]]
        assert pool.idle_connections == 1
        reply = await hop.post(CONTENT, timeout(), ChatCompletion)
        assert reply.choices[0].message.content == "until close"
        assert pool.idle_connections == 0  # that connection ended with its body


async def test_a_redirect_is_followed_by_httpx2_as_before():
    requests: list[bytes] = []

    def answer(request: bytes) -> list[bytes]:
        requests.append(request)
        if request.startswith(b"POST /v1/chat/completions "):
            return [
                b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /v2/chat/completions\r\n"
                b"content-length: 0\r\n\r\n"
            ]
        body = completion("moved")
        return [
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % len(body)
            + body
        ]

    async with raw_server(answer) as url, plain_client(url) as client:
        hop = await hop_of(client)
        pool_of(hop)
        reply = await hop.post(CONTENT, timeout(), ChatCompletion)
        assert reply.choices[0].message.content == "moved"
        # the wire's POST, then httpx2's: the POST again and the redirected one
        paths = [r.split(b" ")[1] for r in requests]
        assert paths == [b"/v1/chat/completions", b"/v1/chat/completions", b"/v2/chat/completions"]
        assert all(r.endswith(CONTENT) for r in requests)
        # this endpoint redirects: its next requests go by httpx2 at once (no POST sent twice)
        assert hop.wire is None
        reply = await hop.post(CONTENT, timeout(), ChatCompletion)
        assert reply.choices[0].message.content == "moved"
        paths = [r.split(b" ")[1] for r in requests[3:]]
        assert paths == [b"/v1/chat/completions", b"/v2/chat/completions"]


async def test_the_sdks_own_stream_class_keeps_the_httpx2_path():
    """A stream asked for as chunk objects (a per-chunk feature such as the response cache)
    goes through httpx2: openai's AsyncStream reads an httpx2 response."""
    with FakeBackend(name="a", models=["m"]) as backend:
        async with plain_client(backend.url) as client:
            hop = await hop_of(client)
            pool = pool_of(hop)
            stream = await hop.post(
                STREAM_CONTENT,
                timeout(),
                None,
                AsyncStream[ChatCompletionChunk],
                ChatCompletionChunk,
            )
            assert isinstance(stream.response, httpx2.Response)
            chunks = [c async for c in stream]
            assert chunks and all(isinstance(c, ChatCompletionChunk) for c in chunks)
            assert pool.idle_connections == 0


async def test_a_cookie_the_endpoint_sets_is_kept_and_sent_as_httpx2_does():
    requests: list[bytes] = []

    def answer(request: bytes) -> list[bytes]:
        requests.append(request)
        body = completion("ok")
        return [
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"set-cookie: lb=node-7; Path=/\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        ]

    async with raw_server(answer) as url, plain_client(url) as client:
        hop = await hop_of(client)
        pool = pool_of(hop)
        await hop.post(CONTENT, timeout(), ChatCompletion)
        assert b"\r\ncookie:" not in requests[0].lower()
        assert client._client.cookies.get("lb") == "node-7"
        await hop.post(CONTENT, timeout(), ChatCompletion)  # httpx2 now: it sends the cookie
        assert b"\r\ncookie: lb=node-7\r\n" in requests[1].lower()
        assert pool.idle_connections == 1  # the wire's connection stays pooled, unused


def _self_signed() -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for 127.0.0.1, its own CA."""
    import datetime
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


async def test_https_on_the_routers_ssl_context(tmp_path: Any):
    import ssl

    cert, key = _self_signed()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                body = completion("over tls")
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        async with plain_client(f"https://127.0.0.1:{port}/v1") as client:
            hop = await hop_of(client)
            pool = pool_of(hop)
            # not trusted yet: the certificate check fails, as httpx2's would
            with pytest.raises(openai.APIConnectionError):
                await hop.post(CONTENT, timeout(), ChatCompletion)
            client._client._transport._ssl_context.load_verify_locations(cadata=cert.decode())
            for _ in range(3):
                reply = await hop.post(CONTENT, timeout(), ChatCompletion)
                assert reply.choices[0].message.content == "over tls"
            assert pool.idle_connections == 1
            assert connections == 1  # one kept-alive connection (the refused one never served)
    finally:
        server.close()


async def test_the_callers_deadline_ends_a_wire_request_as_it_ends_an_sdk_one():
    from gonka_mux.context import CHAT
    from gonka_mux.errors import DeadlineExceeded
    from gonka_mux.settings import CallOptions

    params = {"model": "m", "messages": BODY["messages"]}
    with FakeBackend(name="a", models=["m"], faults=Faults(rate_hang=1.0)) as backend:
        mux = AsyncMultiplexer(max_attempts=1)
        mux.add_endpoint(backend.url, models=["m"], name="a", api_key="k")
        core = mux._core
        try:
            for stream in (False, True):
                for relay in (False, True):
                    t0 = time.monotonic()
                    with pytest.raises(DeadlineExceeded):
                        await core.execute(
                            CHAT,
                            {**params, "stream": stream},
                            {},
                            CallOptions(deadline=0.3),
                            stream=stream,
                            relay=relay,
                        )
                    assert time.monotonic() - t0 < 3
            (endpoint,) = core.endpoints.values()
            hop = endpoint.client.__dict__["_gonka_mux_hops"][PATH]
            assert pool_of(hop).idle_connections == 0  # the hung connections were closed
            for _ in range(100):
                if backend.open_connections == 0:
                    break
                await asyncio.sleep(0.01)
            assert backend.open_connections == 0
        finally:
            await mux.aclose()


async def test_connections_past_descriptor_1023_are_reused():
    """select() refuses descriptors past 1023; a busy gateway has them, and its pooled
    connections must still be checked and reused."""
    import os
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip(f"needs 1200 open files (RLIMIT_NOFILE is {soft})")
    with FakeBackend(name="a", models=["m"]) as backend:
        filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
        try:
            async with plain_client(backend.url) as client:
                hop = await hop_of(client)
                pool = pool_of(hop)
                assert (await hop.post(CONTENT, timeout(), ChatCompletion)).choices
                (conn,) = pool._idle[hop.wire.key]
                assert conn.fd > 1023
                for _ in range(2):
                    assert (await hop.post(CONTENT, timeout(), ChatCompletion)).choices
                    assert pool._idle[hop.wire.key] == [conn]  # the same connection again
                assert backend.open_connections == 1
        finally:
            for fd in filler:
                os.close(fd)


async def test_a_malformed_response_is_a_connection_error_and_trailers_are_not_headers():
    body = completion("trailed")
    answers = iter(
        [
            [b"NOT HTTP AT ALL\r\n\r\n"],
            [
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                b"connection: upgrade\r\n\r\n"
            ],
            [
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"transfer-encoding: chunked\r\ntrailer: x-request-id\r\n\r\n"
                b"%x\r\n%s\r\n0\r\nx-request-id: from-trailer\r\n\r\n" % (len(body), body)
            ],
        ]
    )
    async with raw_server(lambda _: next(answers)) as url, plain_client(url) as client:
        hop = await hop_of(client)
        pool = pool_of(hop)
        for _ in range(2):
            with pytest.raises(openai.APIConnectionError) as caught:
                await hop.post(CONTENT, timeout(), ChatCompletion)
            assert type(caught.value) is openai.APIConnectionError
            assert pool.idle_connections == 0
        reply = await hop.post(CONTENT, timeout(), ChatCompletion)
        assert reply.choices[0].message.content == "trailed"
        assert reply._request_id is None  # a trailer is not a header
        assert pool.idle_connections == 1


async def test_a_body_its_content_encoding_does_not_decode_is_a_connection_error():
    """A reply whose ``content-encoding`` does not match its body: httpx2 reads it inside its
    send, and its ``DecodingError`` (a transport error) becomes openai's
    ``APIConnectionError``; the wire path raises the same, for a reply and for an error reply."""
    body = completion("not gzip at all")
    answers = [
        b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        b"content-length: %d\r\n\r\n%s" % (status, len(body), body)
        for status in (200, 200, 500, 500)
    ]
    parts = iter(answers)
    async with raw_server(lambda _: [next(parts)]) as url, plain_client(url) as client:
        hop = await hop_of(client)
        pool_of(hop)
        for _ in range(2):  # a reply, then an error reply
            for send in (hop.post, lambda *a: via_httpx2(hop, *a)):
                with pytest.raises(openai.APIConnectionError) as caught:
                    await send(CONTENT, timeout(), ChatCompletion)
                assert type(caught.value) is openai.APIConnectionError
                assert isinstance(caught.value.__cause__, httpx2.DecodingError)


async def test_a_compressed_reply_that_is_not_json_raises_as_the_httpx2_path():
    """A gzip reply that decodes to something not JSON (a proxy's HTML page): openai's
    ``APIResponseValidationError`` with the decoded text, on both paths."""
    page = gzip.compress(b"<html>502 from a proxy</html>")
    reply = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-encoding: gzip\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(page), page)
    )
    async with raw_server(lambda _: [reply]) as url, plain_client(url) as client:
        hop = await hop_of(client)
        pool_of(hop)
        errors = []
        for send in (hop.post, lambda *a: via_httpx2(hop, *a)):
            with pytest.raises(openai.APIResponseValidationError) as caught:
                await send(CONTENT, timeout(), ChatCompletion)
            errors.append(caught.value)
        assert errors[0].body == errors[1].body == "<html>502 from a proxy</html>"


async def test_a_compressed_reply_openai_builds_leniently_is_the_same_object():
    """A gzip reply that does not conform to the SDK's model (fields missing, as some servers
    send): openai builds it leniently; so does the wire path, from the decoded body."""
    lenient = gzip.compress(
        b'{"id": "c1", "object": "chat.completion", "choices": [{"index": 0, '
        b'"message": {"role": "assistant", "content": "lenient"}}]}'
    )
    reply = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        b"x-request-id: req-9\r\ncontent-length: %d\r\n\r\n%s" % (len(lenient), lenient)
    )
    async with raw_server(lambda _: [reply]) as url, plain_client(url) as client:
        hop = await hop_of(client)
        pool_of(hop)
        wire = await hop.post(CONTENT, timeout(), ChatCompletion)
        reference = await via_httpx2(hop, CONTENT, timeout(), ChatCompletion)
        assert wire.model_dump() == reference.model_dump()
        assert wire.choices[0].message.content == "lenient"
        assert wire._request_id == reference._request_id == "req-9"


async def test_a_reply_with_both_content_length_and_chunked_is_read_as_httpx2_reads_it():
    """``Transfer-Encoding: chunked`` and a ``Content-Length`` both present (some proxies send
    them): httpx2 reads the chunked body (the transfer coding wins, RFC 9112 6.3); so does the
    wire, and that connection is not reused."""
    body = completion("both framings")
    reply = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n"
        b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    async with raw_server(lambda _: [reply]) as url, plain_client(url) as client:
        hop = await hop_of(client)
        pool = pool_of(hop)
        for send in (hop.post, lambda *a: via_httpx2(hop, *a)):
            result = await send(CONTENT, timeout(), ChatCompletion)
            assert result.choices[0].message.content == "both framings"
        assert pool.idle_connections == 0


async def test_a_request_the_server_does_not_read_ends_at_the_write_timeout():
    accepted: list[asyncio.StreamWriter] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # holds the connection open, reads nothing

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    big = b'{"model": "m", "messages": [], "pad": "' + b"x" * (48 << 20) + b'"}'
    try:
        async with plain_client(f"http://127.0.0.1:{port}/v1") as client:
            hop = await hop_of(client)
            pool = pool_of(hop)
            for send in (hop.post, lambda *a: via_httpx2(hop, *a)):
                t0 = time.monotonic()
                with pytest.raises(openai.APITimeoutError) as caught:
                    await send(big, timeout(read=0.5), ChatCompletion)
                assert time.monotonic() - t0 < 5
                assert isinstance(caught.value.__cause__, httpx2.WriteTimeout)
            assert pool.idle_connections == 0
    finally:
        for writer in accepted:
            writer.close()
        server.close()


async def test_a_connect_that_hangs_ends_at_the_connect_timeout():
    # a listening socket whose accept queue is full: the kernel leaves new SYNs unanswered
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    await asyncio.sleep(0.1)
    try:
        async with plain_client(f"http://127.0.0.1:{port}/v1") as client:
            hop = await hop_of(client)
            pool_of(hop)
            for send in (hop.post, lambda *a: via_httpx2(hop, *a)):
                t0 = time.monotonic()
                with pytest.raises(openai.APITimeoutError) as caught:
                    await send(CONTENT, timeout(read=5, connect=0.3), ChatCompletion)
                assert 0.25 < time.monotonic() - t0 < 3
                assert isinstance(caught.value.__cause__, httpx2.ConnectTimeout)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_an_endpoint_httpx2_would_send_through_a_mount_keeps_httpx2():
    """A mounted transport for the URL (how httpx2 routes to a proxy) is httpx2's to use."""
    from httpx2._utils import URLPattern

    async with plain_client("http://10.0.0.7:8000/v1") as client:
        client._client._mounts = {URLPattern("http://"): httpx2.AsyncHTTPTransport()}
        assert (await hop_of(client)).wire is None
