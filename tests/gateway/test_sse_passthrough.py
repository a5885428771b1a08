"""The gateway relays a stream's SSE bytes as the endpoint sent them (no chunk objects built and
serialised again), and still meters it, appends it to the session, settles limits, hides the usage
chunk it asked for, and ends a broken stream with an error event instead of ``[DONE]``.

The endpoint here is a real loopback HTTP server that writes scripted bytes (events split across
reads, CRLF line endings, comments, spaces JSON re-serialising would drop), so what reaches the
client can be compared with what the endpoint wrote, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from gonka_mux._core import STREAM_TAP
from gonka_mux.context import Extension

from ._serve import serve
from .conftest import MSG, make_gateway

pytestmark = pytest.mark.asyncio

USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def event(data: dict[str, Any]) -> bytes:
    # spaces after separators: what json.dumps writes by default and openai's objects would not
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
        **extra,
    }


USAGE_CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [],
    "usage": USAGE,
}


@dataclass
class ScriptedSSE:
    """An endpoint that answers every POST with ``parts`` written one by one (a short pause
    between, so they arrive as separate reads), then closes the connection."""

    parts: list[bytes] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    name: str = "scripted"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.bodies.append(json.loads(await reader.readexactly(length)))
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            )
            for part in self.parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.01)
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def scripted(parts: list[bytes]) -> AsyncIterator[ScriptedSSE]:
    endpoint = ScriptedSSE(parts)
    server = await asyncio.start_server(endpoint.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    endpoint.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield endpoint
    finally:
        server.close()


class Tap(Extension):
    """A per-chunk feature (as the response cache is): it asks to see every chunk object."""

    def __init__(self) -> None:
        self.chunks: list[Any] = []

    async def before(self, ctx: Any) -> None:
        if ctx.stream:
            ctx.slots[STREAM_TAP] = self.chunks

    async def after(self, ctx: Any) -> None:
        return None


@contextlib.asynccontextmanager
async def gateway_over(endpoint: ScriptedSSE, tmp_path: Any, tap: Tap | None = None) -> Any:
    app, state = await make_gateway([endpoint], tmp_path)  # type: ignore[list-item]
    mux = state["mux"]
    if tap is not None:
        mux._core.add_extension(tap, order=1)
    _, plaintext = state["keys"].create(name="tester", tier="default")
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        http.headers["Authorization"] = f"Bearer {plaintext}"
        yield http, state
    await mux.aclose()
    state["keys"].close()


async def stream_events(http: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> bytes:
    async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        return await r.aread()


def data_events(raw: bytes) -> list[bytes]:
    return [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]


async def usage_records(state: dict[str, Any]) -> list[Any]:
    state["meter"].flush(timeout=5)
    return state["usage"].select()


async def test_relays_the_endpoints_bytes_and_still_meters_and_appends(tmp_path):
    first, second = (
        event(chunk({"role": "assistant", "content": "Hel"})),
        event(chunk({"content": "lo"}, vendor_field={"kept": True})),
    )
    last = event(chunk({}, "stop"))
    parts = [
        b": keep-alive\n\n" + first[:20],  # a comment, then an event cut across two reads
        first[20:] + second,
        last.replace(b"\n", b"\r\n"),  # CRLF line endings
        event(USAGE_CHUNK) + b"data: [DONE]\n\n",
    ]
    async with scripted(parts) as endpoint, gateway_over(endpoint, tmp_path) as (http, state):
        body = {"model": "m", "messages": MSG, "stream": True}
        raw = await stream_events(http, body, **{"X-Session-Id": "s1"})
        # the gateway asked for usage (metering) and hid it from a client that did not
        assert endpoint.bodies[0]["stream_options"] == {"include_usage": True}
        assert data_events(raw) == [
            first[6:-2],
            second[6:-2],
            last[6:-2],
            b"[DONE]",
        ]
        (record,) = await usage_records(state)
        assert (record.prompt_tokens, record.completion_tokens) == (7, 5)
        assert record.status == "ok"
        session = (await http.get("/v1/sessions/s1")).json()
        assert session["messages"][-1] == {"role": "assistant", "content": "Hello"}


async def test_tool_call_deltas_and_the_usage_chunk_the_client_asked_for(tmp_path):
    call = {"index": 0, "id": "call_1", "type": "function"}
    deltas = [
        chunk({"role": "assistant", "tool_calls": [{**call, "function": {"name": "read"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"path": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"x.md"}'}}]}),
        chunk({}, "tool_calls"),
        USAGE_CHUNK,
    ]
    parts = [b"".join(event(d) for d in deltas) + b"data: [DONE]\n\n"]
    async with scripted(parts) as endpoint, gateway_over(endpoint, tmp_path) as (http, state):
        body = {
            "model": "m",
            "messages": MSG,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        raw = await stream_events(http, body, **{"X-Session-Id": "tools"})
        assert data_events(raw) == [event(d)[6:-2] for d in deltas] + [b"[DONE]"]
        (record,) = await usage_records(state)
        assert (record.prompt_tokens, record.completion_tokens) == (7, 5)
        message = (await http.get("/v1/sessions/tools")).json()["messages"][-1]
        assert message["tool_calls"] == [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "read", "arguments": '{"path": "x.md"}'},
            }
        ]


async def test_an_upstream_cut_mid_stream_ends_with_an_error_event(tmp_path):
    parts = [event(chunk({"role": "assistant", "content": "partial"}))]  # then the socket closes
    async with scripted(parts) as endpoint, gateway_over(endpoint, tmp_path) as (http, state):
        raw = await stream_events(http, {"model": "m", "messages": MSG, "stream": True})
        events = data_events(raw)
        assert b"[DONE]" not in events
        assert json.loads(events[0])["choices"][0]["delta"]["content"] == "partial"
        error = json.loads(events[-1])["error"]
        assert error["code"] == "stream_interrupted"
        (record,) = await usage_records(state)
        assert record.status != "ok"


async def test_an_error_event_from_the_endpoint_ends_the_stream_with_an_error(tmp_path):
    parts = [
        event(chunk({"role": "assistant", "content": "so far"}))
        + event({"error": {"message": "the model crashed", "type": "server_error"}})
        + event(chunk({}, "stop"))
        + b"data: [DONE]\n\n"
    ]
    async with scripted(parts) as endpoint, gateway_over(endpoint, tmp_path) as (http, _):
        raw = await stream_events(http, {"model": "m", "messages": MSG, "stream": True})
        events = data_events(raw)
        assert json.loads(events[0])["choices"][0]["delta"]["content"] == "so far"
        assert len(events) == 2 and b"[DONE]" not in events
        assert json.loads(events[-1])["error"]["code"] == "stream_interrupted"


async def test_a_stream_ending_without_its_final_chunk_is_not_complete(tmp_path):
    # [DONE] but no finish_reason: a truncated answer must not look complete
    parts = [event(chunk({"role": "assistant", "content": "half"})) + b"data: [DONE]\n\n"]
    async with scripted(parts) as endpoint, gateway_over(endpoint, tmp_path) as (http, _):
        raw = await stream_events(http, {"model": "m", "messages": MSG, "stream": True})
        events = data_events(raw)
        assert b"[DONE]" not in events
        assert json.loads(events[-1])["error"]["code"] == "stream_interrupted"


async def test_a_per_chunk_feature_gets_chunk_objects_and_the_client_the_same_stream(tmp_path):
    deltas = [
        chunk({"role": "assistant", "content": "Hi"}),
        chunk({"content": " there"}),
        chunk({}, "stop"),
    ]
    parts = [b"".join(event(d) for d in deltas) + event(USAGE_CHUNK) + b"data: [DONE]\n\n"]
    tap = Tap()
    async with (
        scripted(parts) as endpoint,
        gateway_over(endpoint, tmp_path, tap) as (http, state),
    ):
        raw = await stream_events(http, {"model": "m", "messages": MSG, "stream": True})
        events = data_events(raw)
        assert events[-1] == b"[DONE]"
        # the objects path: the same JSON, serialised again (so not the endpoint's bytes)
        assert [json.loads(e) for e in events[:-1]] == deltas
        assert events[0] != event(deltas[0])[6:-2]
        assert [type(c).__name__ for c in tap.chunks] == ["ChatCompletionChunk"] * 4
        (record,) = await usage_records(state)
        assert (record.prompt_tokens, record.completion_tokens) == (7, 5)


# -- the direct hop (execute(relay=True)) sends what openai's client.post would ---------------


async def test_the_relay_hop_sends_the_sdks_request_and_raises_its_errors():
    import openai

    from gonka_mux import AsyncMultiplexer
    from gonka_mux._hop import DirectHop
    from gonka_mux.context import CHAT
    from gonka_mux.settings import CallOptions
    from gonka_mux.testing import FakeBackend, Reply

    with FakeBackend(name="a", api_key="sk-endpoint") as backend:
        mux = AsyncMultiplexer(max_attempts=1)
        mux.add_endpoint(backend.url, models=["m"], name="a", api_key="sk-endpoint")
        core = mux._core
        try:
            backend.set_replies(
                [Reply("via sdk"), Reply("via hop"), Reply("s"), Reply("h")]
                + [Reply(status=400, error="bad prompt")] * 2
            )
            params = {"model": "m", "messages": MSG}
            via_sdk = await mux.chat.completions.create(**params)
            via_hop = await core.execute(
                CHAT, dict(params), {}, CallOptions(), stream=False, relay=True
            )
            (endpoint,) = core.endpoints.values()
            hop = endpoint.client.__dict__["_gonka_mux_hops"]["/chat/completions"]
            if int(openai.__version__.split(".")[0]) >= 3:
                assert isinstance(hop, DirectHop)
            else:  # openai 2.x: no hop, the SDK's own client.post (the same results below)
                assert hop is None
            assert type(via_hop) is type(via_sdk)
            assert via_hop.choices[0].message.content == "via hop"
            sdk_request, hop_request = backend.requests[-2:]
            skip = {"content-length"}
            assert {k: v for k, v in hop_request.headers.items() if k.lower() not in skip} == {
                k: v for k, v in sdk_request.headers.items() if k.lower() not in skip
            }
            assert hop_request.headers["authorization"] == "Bearer sk-endpoint"
            assert hop_request.path == sdk_request.path and hop_request.json == sdk_request.json

            # a stream: the SDK's yields chunk objects, the relay's SSE bytes of the same reply
            stream_params = {**params, "stream": True}
            sdk_stream = await mux.chat.completions.create(**stream_params)
            sdk_text = "".join(
                [c.choices[0].delta.content or "" async for c in sdk_stream if c.choices]
            )
            hop_stream = await core.execute(
                CHAT, dict(stream_params), {}, CallOptions(), stream=True, relay=True
            )
            raw = b"".join([part async for part in hop_stream])
            assert raw.endswith(b"data: [DONE]\n\n")
            hop_text = "".join(
                json.loads(e.removeprefix(b"data: "))["choices"][0]["delta"].get("content") or ""
                for e in raw.split(b"\n\n")
                if e and e != b"data: [DONE]" and json.loads(e.removeprefix(b"data: "))["choices"]
            )
            assert (sdk_text, hop_text) == ("s", "h")

            errors = []
            for relay in (False, True):
                with pytest.raises(openai.BadRequestError) as caught:
                    await core.execute(
                        CHAT, dict(params), {}, CallOptions(), stream=False, relay=relay
                    )
                errors.append(caught.value)
            assert [e.status_code for e in errors] == [400, 400]
            assert errors[0].body == errors[1].body and "bad prompt" in str(errors[1])
        finally:
            await mux.aclose()


async def test_the_public_relay_door_gives_objects_and_sse_bytes():
    """``mux.chat.completions.relay`` / ``mux.completions.relay``: what the gateway calls."""
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    from gonka_mux import AsyncMultiplexer
    from gonka_mux.testing import FakeBackend

    with FakeBackend(name="a", models=["m"]) as backend:
        mux = AsyncMultiplexer(max_attempts=1)
        mux.add_endpoint(backend.url, models=["m"], name="a")
        try:
            reply = await mux.chat.completions.relay(model="m", messages=MSG, caller="k1")
            assert isinstance(reply, ChatCompletion) and reply.choices[0].message.content
            stream = await mux.chat.completions.relay(model="m", messages=MSG, stream=True)
            parts = [part async for part in stream]
            assert all(type(p) is bytes for p in parts)
            assert parts[-1].endswith(b"data: [DONE]\n\n") and stream.sent_done
            text = await mux.completions.relay(model="m", prompt="hi")
            assert isinstance(text, Completion)
            text_stream = await mux.completions.relay(model="m", prompt="hi", stream=True)
            raw = b"".join([part async for part in text_stream])
            assert raw.endswith(b"data: [DONE]\n\n")
            assert [r.json.get("stream", False) for r in backend.requests] == [
                False,
                True,
                False,
                True,
            ]
        finally:
            await mux.aclose()
