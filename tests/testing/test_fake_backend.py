"""The fake OpenAI-compatible backend, driven by the real openai client over real loopback HTTP.

Runs under openai 3 (httpx2) and openai 2 (httpx). The last section tests the HTTP/1.1 server
core (`gonka_mux.testing._server`) on raw sockets, since other fakes are built on it.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from gonka_mux.testing import (
    FakeBackend,
    FakeBackendSpec,
    FakeFleet,
    Faults,
    RecordedRequest,
    Reply,
    StatusError,
    ToolCall,
    spawn_fake_backend,
)
from gonka_mux.testing import __main__ as fake_cli
from gonka_mux.testing._server import (
    Abort,
    HTTPServer,
    Request,
    Response,
    Router,
    StreamingResponse,
    hang,
)

MESSAGES = [{"role": "user", "content": "Say hello to the test suite, please."}]


@pytest.fixture
def fb() -> Iterator[FakeBackend]:
    with FakeBackend(name="fb") as backend:
        yield backend


def client(backend: Any, timeout: float = 10.0, api_key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=backend.url, api_key=api_key, max_retries=0, timeout=timeout)


def aclient(backend: Any, timeout: float = 10.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=backend.url, api_key="x", max_retries=0, timeout=timeout)


def chat(backend: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "fake-model")
    kwargs.setdefault("messages", MESSAGES)
    with client(backend) as c:
        return c.chat.completions.create(**kwargs)


def stream_chunks(backend: Any, **kwargs: Any) -> list[Any]:
    with client(backend) as c:
        stream = c.chat.completions.create(
            model=kwargs.pop("model", "fake-model"),
            messages=kwargs.pop("messages", MESSAGES),
            stream=True,
            **kwargs,
        )
        with stream:
            return list(stream)


def is_transport_error(exc: BaseException) -> bool:
    """openai wraps most transport errors; a cut stream may surface as httpx's own error."""
    root = type(exc).__module__.split(".")[0]
    return isinstance(exc, openai.APIConnectionError) or root in ("httpx", "httpx2", "httpcore")


def control(backend: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=10)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, path, payload)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# =========================================================================== happy paths


def test_chat_completion_json_has_openai_shape(fb: FakeBackend) -> None:
    with client(fb) as c:
        raw = c.chat.completions.with_raw_response.create(model="any-model", messages=MESSAGES)
        completion = raw.parse()
    assert raw.headers["x-fake-backend"] == "fb"
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "any-model"  # echoed
    assert isinstance(completion.created, int)
    [choice] = completion.choices
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    assert choice.message.role == "assistant"
    assert choice.message.content == "ok from fb"
    assert choice.message.tool_calls is None
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == -(-len(MESSAGES[0]["content"]) // 4)  # ~chars/4
    assert usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_default_name_comes_from_the_port() -> None:
    with FakeBackend() as backend:
        assert backend.name == f"fake-{backend.port}"
        assert backend.url == f"http://127.0.0.1:{backend.port}/v1"
        assert chat(backend).choices[0].message.content == f"ok from fake-{backend.port}"


def test_stream_assembles_into_the_reply(fb: FakeBackend) -> None:
    fb.set_replies([Reply("The quick brown fox jumps over the lazy dog.")])
    chunks = stream_chunks(fb)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices[0].delta.content]
    assert len(pieces) >= 3, "content must arrive in several chunks"
    assert "".join(pieces) == "The quick brown fox jumps over the lazy dog."
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)


def test_stream_usage_chunk_comes_last_with_no_choices(fb: FakeBackend) -> None:
    chunks = stream_chunks(fb, stream_options={"include_usage": True})
    *body, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None and c.choices for c in body)
    assert body[-1].choices[0].finish_reason == "stop"


async def test_async_client_stream_and_async_with() -> None:
    async with FakeBackend(replies=[Reply("alpha beta gamma")]) as backend:
        async with aclient(backend) as c:
            stream = await c.chat.completions.create(
                model="fake-model", messages=MESSAGES, stream=True
            )
            text = ""
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""
        assert text == "alpha beta gamma"
    assert not backend.running


def test_tool_calls_json(fb: FakeBackend) -> None:
    fb.set_replies(
        [Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo"}), ToolCall("now", "{}")])]
    )
    message = chat(fb).choices[0].message
    completion_finish = "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None
    first, second = message.tool_calls
    assert first.type == "function"
    assert first.id and second.id and first.id != second.id
    assert first.function.name == "get_weather"
    assert json.loads(first.function.arguments) == {"city": "Oslo"}
    assert second.function.arguments == "{}"
    assert fb.requests[-1].json["messages"] == MESSAGES
    assert chat(fb).choices[0].finish_reason == "stop"  # the script is consumed
    assert completion_finish == "tool_calls"


def test_tool_call_finish_reason_and_explicit_id(fb: FakeBackend) -> None:
    fb.set_replies([Reply(tool_calls=[ToolCall("f", "{}", id="functions.f:0")])])
    choice = chat(fb).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert choice.message.tool_calls[0].id == "functions.f:0"


def test_tool_call_streaming_keeps_index_and_reassembles_arguments(fb: FakeBackend) -> None:
    args_a = {"city": "Oslo", "units": "metric", "days": [1, 2, 3]}
    args_b = {"q": "time in Rome"}
    fb.set_replies(
        [
            Reply(
                content="Let me check.",
                tool_calls=[ToolCall("weather", args_a), ToolCall("search", args_b)],
            )
        ]
    )
    calls: dict[int, dict[str, Any]] = {}
    fragments: dict[int, int] = {}
    finish = None
    for chunk in stream_chunks(fb):
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or ():
            entry = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            if delta.id:
                assert entry["id"] is None, "the id comes once, in the first delta"
                entry["id"] = delta.id
                assert delta.type == "function"
            if delta.function and delta.function.name:
                entry["name"] += delta.function.name
            if delta.function and delta.function.arguments:
                entry["arguments"] += delta.function.arguments
                fragments[delta.index] = fragments.get(delta.index, 0) + 1
    assert sorted(calls) == [0, 1]
    assert calls[0]["name"] == "weather" and calls[1]["name"] == "search"
    assert json.loads(calls[0]["arguments"]) == args_a
    assert json.loads(calls[1]["arguments"]) == args_b
    assert fragments[0] >= 2 and fragments[1] >= 2
    assert calls[0]["id"] != calls[1]["id"]
    assert finish == "tool_calls"


def test_reasoning_json_and_stream_order(fb: FakeBackend) -> None:
    fb.set_replies(
        [Reply("The answer is 4.", reasoning="Two plus two is four."), Reply("4", reasoning="2+2")]
    )
    completion = chat(fb)
    message = completion.choices[0].message
    assert message.model_extra is not None
    assert message.model_extra["reasoning"] == "Two plus two is four."
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens > 0

    kinds = []
    for chunk in stream_chunks(fb):
        delta = chunk.choices[0].delta
        extra = delta.model_extra or {}
        if extra.get("reasoning"):
            kinds.append("reasoning")
        if delta.content:
            kinds.append("content")
    assert kinds[0] == "reasoning" and kinds[-1] == "content"
    assert kinds == sorted(kinds, key=["reasoning", "content"].index), "reasoning comes first"


def test_n_choices_json_and_stream(fb: FakeBackend) -> None:
    completion = chat(fb, n=3)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert {c.message.content for c in completion.choices} == {"ok from fb"}
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in stream_chunks(fb, n=2):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: "ok from fb", 1: "ok from fb"}
    assert finishes == {0: "stop", 1: "stop"}


def test_legacy_completions_json_and_stream(fb: FakeBackend) -> None:
    fb.set_replies([Reply("one two three"), Reply("four five six")])
    with client(fb) as c:
        completion = c.completions.create(model="fake-model", prompt=["a", "b"])
        assert completion.object == "text_completion"
        assert [ch.text for ch in completion.choices] == ["one two three"] * 2
        assert [ch.index for ch in completion.choices] == [0, 1]
        assert completion.usage is not None and completion.usage.completion_tokens >= 2
        stream = c.completions.create(
            model="fake-model", prompt="x", stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "four five six"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"


def test_models_and_health(fb: FakeBackend) -> None:
    with FakeBackend(models=["a", "b"], name="two") as backend, client(backend) as c:
        models = c.models.list()
        assert [m.id for m in models.data] == ["a", "b"]
        assert models.data[0].owned_by == "two"
        assert c.models.retrieve("b").id == "b"
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("missing")
    status, body = control(fb, "GET", "/health")
    assert (status, body) == (200, {"status": "ok"})


def test_strict_models_answers_404_model_not_found() -> None:
    with FakeBackend(models=["real"], strict_models=True) as backend:
        assert chat(backend, model="real").model == "real"
        with pytest.raises(openai.NotFoundError) as info:
            chat(backend, model="imaginary")
    assert info.value.code == "model_not_found"


def test_embeddings_are_deterministic(fb: FakeBackend) -> None:
    with client(fb) as c:
        first = c.embeddings.create(model="emb", input=["hello", "world"])
        again = c.embeddings.create(model="emb", input="hello", encoding_format="float")
        sized = c.embeddings.create(model="emb", input="hello", dimensions=32)
    assert [d.index for d in first.data] == [0, 1]
    hello, world = (d.embedding for d in first.data)
    assert len(hello) == 8
    assert hello != world
    assert again.data[0].embedding == pytest.approx(hello, abs=1e-6)  # base64 f32 vs float
    assert sum(v * v for v in hello) == pytest.approx(1.0, abs=1e-5)
    assert len(sized.data[0].embedding) == 32
    assert first.usage.prompt_tokens >= 1
    # the wire format the SDK asks for by default is little-endian float32 in base64
    status, _ = control(fb, "POST", "/v1/embeddings")
    assert status == 400  # no body: a clear 400, not a crash
    raw = http_post(
        fb, "/v1/embeddings", {"model": "emb", "input": "hello", "encoding_format": "base64"}
    )
    decoded = struct.unpack("<8f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(hello, abs=1e-6)


def http_post(backend: Any, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=10)
    try:
        connection.request("POST", path, json.dumps(body).encode(), headers or {})
        response = connection.getresponse()
        data = response.read()
        assert response.status == 200, data
        return json.loads(data)
    finally:
        connection.close()


def test_bad_requests_get_openai_shaped_400(fb: FakeBackend) -> None:
    with client(fb) as c:
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model="fake-model", messages=[])
        assert "messages" in info.value.message
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="fake-model", messages=MESSAGES, n=0)
    connection = http.client.HTTPConnection("127.0.0.1", fb.port, timeout=10)
    connection.request("POST", "/v1/chat/completions", b"{not json")
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 400
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"


# =========================================================================== scripted replies


def test_reply_list_is_consumed_then_the_default(fb: FakeBackend) -> None:
    fb.set_replies([Reply("first"), "second"])
    assert [chat(fb).choices[0].message.content for _ in range(3)] == [
        "first",
        "second",
        "ok from fb",
    ]


def test_reply_overrides_usage_finish_reason_and_headers(fb: FakeBackend) -> None:
    fb.set_replies(
        [Reply("cut", finish_reason="length", usage={"prompt_tokens": 7}, headers={"x-a": "1"})]
    )
    with client(fb) as c:
        raw = c.chat.completions.with_raw_response.create(model="fake-model", messages=MESSAGES)
    completion = raw.parse()
    assert raw.headers["x-a"] == "1"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.prompt_tokens == 7


def test_reply_callable_sees_the_request(fb: FakeBackend) -> None:
    def reply(request: RecordedRequest) -> Reply | str | None:
        assert request.path == "/v1/chat/completions"
        last = request.messages[-1]["content"]
        return None if last == "default" else f"echo: {last}"

    fb.set_replies(reply)
    say = [{"role": "user", "content": "ping"}]
    assert chat(fb, messages=say).choices[0].message.content == "echo: ping"
    default = [{"role": "user", "content": "default"}]
    assert chat(fb, messages=default).choices[0].message.content == "ok from fb"


async def test_reply_callable_may_be_async() -> None:
    async def reply(request: RecordedRequest) -> Reply:
        await asyncio.sleep(0)
        return Reply(f"model={request.model}")

    async with FakeBackend(replies=reply) as backend, aclient(backend) as c:
        completion = await c.chat.completions.create(model="m1", messages=MESSAGES)
    assert completion.choices[0].message.content == "model=m1"


def test_failing_reply_callable_answers_500_and_fails_the_test_at_exit() -> None:
    def reply(request: RecordedRequest) -> Reply:
        assert request.model == "expected-model", "wrong model routed here"
        return Reply("fine")

    backend = FakeBackend(replies=reply)
    with pytest.raises(AssertionError, match="wrong model routed here"), backend:
        assert chat(backend, model="expected-model").choices[0].message.content == "fine"
        with pytest.raises(openai.InternalServerError) as info:
            chat(backend, model="other-model")
        assert "wrong model routed here" in info.value.message
    assert len(backend.errors) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_scripted_error_replies(fb: FakeBackend, stream: bool) -> None:
    fb.set_replies(
        [
            Reply(status=503, error="overloaded, try later"),
            Reply(status=429, error="slow down", headers={"retry-after": "3"}),
            Reply(
                status=400, error={"message": "bad thing", "type": "x", "param": "p", "code": "c"}
            ),
        ]
    )
    with pytest.raises(openai.InternalServerError) as e503:
        chat(fb, stream=stream)
    assert e503.value.status_code == 503 and "overloaded" in e503.value.message
    with pytest.raises(openai.RateLimitError) as e429:
        chat(fb, stream=stream)
    assert e429.value.response.headers["retry-after"] == "3"
    with pytest.raises(openai.BadRequestError) as e400:
        chat(fb, stream=stream)
    assert e400.value.code == "c" and e400.value.param == "p"


def test_reply_delay_waits_before_answering(fb: FakeBackend) -> None:
    fb.set_replies([Reply("late", delay=0.2)])
    started = time.monotonic()
    assert chat(fb).choices[0].message.content == "late"
    assert time.monotonic() - started >= 0.2


# =========================================================================== faults


@pytest.mark.parametrize("stream", [False, True])
def test_fault_429_with_retry_after(fb: FakeBackend, stream: bool) -> None:
    fb.set_faults(Faults(rate_429=1.0, retry_after=2))
    with pytest.raises(openai.RateLimitError) as info:
        chat(fb, stream=stream)
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.response.headers["x-fake-backend"] == "fb"
    assert info.value.code == "rate_limit_exceeded"
    assert fb.requests[-1].fault == "429"


def test_fault_500(fb: FakeBackend) -> None:
    fb.faults = Faults(rate_500=1.0)
    with pytest.raises(openai.InternalServerError) as info:
        chat(fb)
    assert info.value.status_code == 500
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "server_error"


def test_status_errors_with_rates_and_scripted_bodies(fb: FakeBackend) -> None:
    fb.set_faults(status_errors={502: 1.0})
    with pytest.raises(openai.InternalServerError) as info:
        chat(fb)
    assert info.value.status_code == 502
    fb.set_faults(
        status_errors=[StatusError(403, 1.0, body={"error": "Transfer Agent not allowed"})]
    )
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat(fb)
    assert denied.value.response.json() == {"error": "Transfer Agent not allowed"}
    assert fb.requests[-1].fault == "status_403"


async def test_hang_times_out_the_client_without_blocking_others(fb: FakeBackend) -> None:
    fb.set_faults(rate_hang=1.0)
    async with aclient(fb, timeout=0.3) as hung_client, aclient(fb) as other:
        hung = asyncio.ensure_future(
            hung_client.chat.completions.create(model="fake-model", messages=MESSAGES)
        )
        await asyncio.to_thread(fb.wait_for_requests, 1)
        fb.set_faults(rate_hang=0.0)
        served = await other.chat.completions.create(model="fake-model", messages=MESSAGES)
        assert served.choices[0].message.content == "ok from fb"
        assert not hung.done()
        with pytest.raises(openai.APITimeoutError):
            await hung
    # the client hung up, so the server dropped the hung request and its connection
    await asyncio.to_thread(wait_until, lambda: fb.open_connections == 0)


def test_hang_ends_when_the_server_stops() -> None:
    backend = FakeBackend(faults=Faults(rate_hang=1.0)).start()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(chat, backend)
        backend.wait_for_requests(1)
        backend.stop()
        with pytest.raises(openai.APIConnectionError) as info:
            pending.result(timeout=10)  # the client's own timeout is 10 s: it must end sooner
    assert not isinstance(info.value, openai.APITimeoutError)


@pytest.mark.parametrize("stream", [False, True])
def test_drop_before_response(fb: FakeBackend, stream: bool) -> None:
    fb.set_faults(rate_drop_before=1.0)
    with pytest.raises(openai.APIConnectionError):
        chat(fb, stream=stream)
    assert fb.requests[-1].fault == "drop_before"


def test_drop_mid_stream_after_partial_chunks(fb: FakeBackend) -> None:
    fb.set_faults(rate_drop_mid_stream=1.0)
    fb.set_replies([Reply("one two three four five six seven eight")])
    received: list[str] = []
    with client(fb) as c, pytest.raises(Exception) as info:  # checked below
        stream = c.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert is_transport_error(info.value), repr(info.value)
    text = "".join(received)
    assert text and "one two three four five six seven eight".startswith(text)
    assert text != "one two three four five six seven eight"


def test_drop_mid_json_body(fb: FakeBackend) -> None:
    fb.set_faults(rate_drop_mid_stream=1.0)
    with pytest.raises(openai.APIConnectionError):
        chat(fb)


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_body_makes_the_client_fail(fb: FakeBackend, stream: bool) -> None:
    fb.set_faults(rate_malformed=1.0)
    with pytest.raises((ValueError, openai.APIError)):
        stream_chunks(fb) if stream else chat(fb)
    with client(fb) as c:  # plain HTTP view: 200 and a body that is not JSON
        raw = c.chat.completions.with_raw_response.create(model="fake-model", messages=MESSAGES)
        assert raw.status_code == 200
        with pytest.raises(ValueError):
            json.loads(raw.text)


def test_down_closes_connections_and_control_still_works(fb: FakeBackend) -> None:
    with client(fb) as c:
        c.models.list()  # an idle keep-alive connection now exists
        assert fb.open_connections == 1
        fb.set_faults(down=True)
        wait_until(lambda: fb.open_connections == 0)
        with pytest.raises(openai.APIConnectionError):
            c.chat.completions.create(model="fake-model", messages=MESSAGES)
        status, body = control(fb, "POST", "/_fake/faults", {"down": False})
        assert status == 200 and body["down"] is False
        assert c.chat.completions.create(model="fake-model", messages=MESSAGES).choices


def test_latency_ttft_and_inter_chunk_delay_the_response(fb: FakeBackend) -> None:
    fb.set_faults(latency=0.1, jitter=0.05, ttft=0.1, inter_chunk=0.02)
    started = time.monotonic()
    chat(fb)
    assert time.monotonic() - started >= 0.1
    fb.set_replies([Reply("a b c d e")])
    started = time.monotonic()
    chunks = stream_chunks(fb)
    assert time.monotonic() - started >= 0.1 + 0.1 + 0.02 * (len(chunks) - 1)


def test_errors_answer_without_latency_but_success_waits(fb: FakeBackend) -> None:
    fb.set_faults(latency=5.0, rate_429=1.0)
    with pytest.raises(openai.RateLimitError), client(fb, timeout=2.0) as c:
        c.chat.completions.create(model="fake-model", messages=MESSAGES)


def test_fault_draws_are_seeded_and_follow_the_rates() -> None:
    faults = Faults(rate_500=0.3, rate_429=0.2)
    sequences = []
    for _ in range(2):
        with FakeBackend(faults=faults, seed=42) as backend, client(backend) as c:
            for _ in range(200):
                try:
                    c.models.list()
                except openai.APIStatusError:
                    pass
            sequences.append([r.fault for r in backend.requests])
    assert sequences[0] == sequences[1]
    counts = {k: sequences[0].count(k) for k in ("500", "429", None)}
    assert 40 <= counts["500"] <= 80 and 20 <= counts["429"] <= 60 and counts[None] >= 70


def test_fault_validation_is_clear() -> None:
    with pytest.raises(ValueError, match="rate_429"):
        Faults(rate_429=1.5)
    with pytest.raises(ValueError, match="add up to"):
        Faults(rate_429=0.6, rate_500=0.6)
    with pytest.raises(ValueError, match="latency"):
        Faults(latency=-1)
    with pytest.raises(ValueError, match="unknown Faults field"):
        Faults().replace(rate_404=0.1)
    with pytest.raises(ValueError, match="unknown Faults field"):
        FakeBackend(faults={"latancy": 1})
    with pytest.raises(ValueError, match="models"):
        FakeBackend(models=[])
    with pytest.raises(ValueError, match="400-599"):
        StatusError(200)
    assert Faults.from_dict(Faults(status_errors={503: 0.5}).to_dict()) == Faults(
        status_errors=[StatusError(503, 0.5)]
    )


# =========================================================================== truncate and drip

TRUNCATED_TEXT = "one two three four five six seven eight"


def raw_post(
    connection: http.client.HTTPConnection, path: str, body: Any
) -> http.client.HTTPResponse:
    payload = json.dumps(body).encode()
    connection.request("POST", path, payload, {"content-type": "application/json"})
    return connection.getresponse()


@pytest.mark.parametrize("paced", [False, True])
def test_truncate_ends_a_stream_cleanly_without_its_terminal_events(
    fb: FakeBackend, paced: bool
) -> None:
    fb.set_faults(rate_truncate=1.0, inter_chunk=0.005 if paced else 0.0)
    fb.set_replies([Reply(TRUNCATED_TEXT)])
    chunks = stream_chunks(fb, stream_options={"include_usage": True})  # no error: a clean end
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert all(choice.finish_reason is None for chunk in chunks for choice in chunk.choices)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text and TRUNCATED_TEXT.startswith(text) and text != TRUNCATED_TEXT
    assert fb.requests[-1].fault == "truncate"


def test_truncate_on_the_wire_is_a_proper_chunked_end_and_keeps_the_connection(
    fb: FakeBackend,
) -> None:
    fb.set_faults(rate_truncate=1.0)
    fb.set_replies([Reply(TRUNCATED_TEXT)])
    connection = http.client.HTTPConnection("127.0.0.1", fb.port, timeout=5)
    try:
        body = {"model": "fake-model", "messages": MESSAGES, "stream": True}
        response = raw_post(connection, "/v1/chat/completions", body)
        assert response.status == 200
        assert response.getheader("transfer-encoding") == "chunked"
        data = response.read()  # http.client raises IncompleteRead on a cut chunked body
        assert data.startswith(b"data: ") and data.endswith(b"\n\n")
        assert b"[DONE]" not in data and b'"finish_reason":"stop"' not in data
        assert b'"content":"one' in data
        fb.set_faults(Faults())  # the same keep-alive connection serves the next request
        response = raw_post(connection, "/v1/chat/completions", body)
        assert response.status == 200 and response.read().endswith(b"data: [DONE]\n\n")
    finally:
        connection.close()
    assert fb.request_count == 2


def test_truncate_leaves_json_replies_whole_and_cuts_legacy_streams(fb: FakeBackend) -> None:
    fb.set_faults(rate_truncate=1.0)
    fb.set_replies([Reply(TRUNCATED_TEXT)])
    completion = chat(fb)
    assert completion.choices[0].message.content == TRUNCATED_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert fb.requests[-1].fault == "truncate"  # drawn and recorded, but streams only
    fb.set_replies([Reply(TRUNCATED_TEXT)])
    with client(fb) as c:
        pieces = list(c.completions.create(model="fake-model", prompt="hi", stream=True))
    assert pieces and all(p.choices[0].finish_reason is None for p in pieces)
    text = "".join(p.choices[0].text for p in pieces)
    assert text and TRUNCATED_TEXT.startswith(text) and text != TRUNCATED_TEXT


def test_truncate_keeps_content_for_a_one_word_reply(fb: FakeBackend) -> None:
    fb.set_faults(rate_truncate=1.0)
    fb.set_replies([Reply("x")])
    chunks = stream_chunks(fb)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "x"
    assert all(c.choices[0].finish_reason is None for c in chunks)


def test_body_drip_sends_headers_at_once_then_the_body_in_pieces(fb: FakeBackend) -> None:
    drip = 0.05
    fb.set_faults(body_drip=drip)
    connection = http.client.HTTPConnection("127.0.0.1", fb.port, timeout=5)
    try:
        started = time.monotonic()
        response = raw_post(
            connection, "/v1/chat/completions", {"model": "fake-model", "messages": MESSAGES}
        )
        headers_after = time.monotonic() - started
        assert response.status == 200
        length = int(response.getheader("content-length") or 0)
        assert response.getheader("transfer-encoding") is None
        pieces = []
        while True:
            piece = response.read1(65536)
            if not piece:
                break
            pieces.append(piece)
        elapsed = time.monotonic() - started
    finally:
        connection.close()
    body = b"".join(pieces)
    assert len(body) == length
    assert json.loads(body)["object"] == "chat.completion"
    assert 5 <= len(pieces) <= 10
    assert elapsed >= 10 * drip * 0.9
    assert headers_after < elapsed / 2


def test_body_drip_never_trips_a_per_read_timeout(fb: FakeBackend) -> None:
    fb.set_faults(body_drip=0.08)  # ~0.8 s in all, a piece every 0.08 s
    started = time.monotonic()
    with client(fb, timeout=0.5) as c:  # an httpx timeout is per read, not for the whole body
        completion = c.chat.completions.create(model="fake-model", messages=MESSAGES)
        assert completion.choices[0].message.content == "ok from fb"
        embedding = c.embeddings.create(model="fake-model", input="hello")
        assert len(embedding.data[0].embedding) == 8
    assert time.monotonic() - started >= 2 * 10 * 0.08 * 0.9
    fb.set_faults(body_drip=0.6)  # a piece every 0.6 s: now the per-read timeout fires
    with pytest.raises(openai.APITimeoutError), client(fb, timeout=0.3) as c:
        c.chat.completions.create(model="fake-model", messages=MESSAGES)


def test_body_drip_leaves_streams_errors_and_get_routes_alone(fb: FakeBackend) -> None:
    fb.set_faults(body_drip=5.0)  # were any of these dripped, the 1 s read timeout would fire
    with client(fb, timeout=1.0) as c:
        assert [m.id for m in c.models.list()] == ["fake-model"]
        stream = c.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
        with stream:
            assert "".join(ch.choices[0].delta.content or "" for ch in stream) == "ok from fb"
        fb.set_faults(body_drip=5.0, rate_500=1.0)
        with pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model="fake-model", messages=MESSAGES)
        fb.set_faults(Faults(body_drip=5.0), rate_truncate=1.0)
        fb.set_replies([Reply(status=429, error="scripted")])
        with pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model="fake-model", messages=MESSAGES)


async def test_body_drip_with_the_async_client() -> None:
    async with FakeBackend(faults=Faults(body_drip=0.02)) as backend:
        async with aclient(backend, timeout=0.5) as c:
            completion = await c.chat.completions.create(model="fake-model", messages=MESSAGES)
        assert completion.choices[0].message.content == f"ok from {backend.name}"


def test_truncate_and_drip_fields_validate_round_trip_and_reach_control_and_cli(
    fb: FakeBackend,
) -> None:
    with pytest.raises(ValueError, match="body_drip"):
        Faults(body_drip=-1)
    with pytest.raises(ValueError, match="body_drip"):
        Faults(body_drip=float("inf"))
    with pytest.raises(ValueError, match="rate_truncate"):
        Faults(rate_truncate=2)
    with pytest.raises(ValueError, match="add up to"):
        Faults(rate_truncate=0.6, rate_drop_mid_stream=0.6)
    faults = Faults(rate_truncate=0.25, body_drip=0.5, rate_500=0.25)
    assert faults.to_dict()["rate_truncate"] == 0.25 and faults.to_dict()["body_drip"] == 0.5
    assert Faults.from_dict(json.loads(json.dumps(faults.to_dict()))) == faults
    assert Faults().replace(rate_truncate=1.0).rate_truncate == 1.0
    assert Faults(0.1).latency == 0.1  # new fields come last: positional use is unchanged

    status, body = control(fb, "POST", "/_fake/faults", {"rate_truncate": 1.0})
    assert status == 200 and body["rate_truncate"] == 1.0 and body["body_drip"] == 0
    status, body = control(fb, "POST", "/_fake/faults?merge=true", {"body_drip": 0.01})
    assert status == 200 and body["rate_truncate"] == 1.0 and body["body_drip"] == 0.01
    assert fb.faults == Faults(rate_truncate=1.0, body_drip=0.01)
    assert control(fb, "GET", "/_fake/faults")[1]["body_drip"] == 0.01
    status, error = control(fb, "POST", "/_fake/faults?merge=true", {"body_drip": -2})
    assert status == 400 and "body_drip" in error["error"]["message"]

    parser = fake_cli.build_parser()
    args = parser.parse_args(["--rate-truncate", "0.5", "--body-drip", "0.2"])
    assert fake_cli._faults(args) == Faults(rate_truncate=0.5, body_drip=0.2)
    args = parser.parse_args(["--faults-json", '{"rate_truncate": 1, "body_drip": 0.3}'])
    assert fake_cli._faults(args) == Faults(rate_truncate=1.0, body_drip=0.3)
    assert fake_cli.main(["--body-drip", "-1"]) == 2


# =========================================================================== auth, log, control


def test_api_key_is_required_when_set() -> None:
    secret = "sk-fake-very-secret"
    with FakeBackend(api_key=secret) as backend:
        assert secret not in repr(backend)
        with (
            pytest.raises(openai.AuthenticationError) as info,
            client(backend, api_key="nope") as c,
        ):
            c.chat.completions.create(model="fake-model", messages=MESSAGES)
        assert info.value.code == "invalid_api_key"
        assert "nope" not in str(info.value) and secret not in str(info.value)
        with client(backend, api_key=secret) as c:
            assert c.chat.completions.create(model="fake-model", messages=MESSAGES).choices
        assert control(backend, "GET", "/health")[0] == 200  # health needs no key
        assert [r.fault for r in backend.requests] == ["unauthorized", None, None]
        assert secret not in repr(backend.requests)


def test_request_log(fb: FakeBackend) -> None:
    before = time.time()
    chat(fb, temperature=0.5)
    stream_chunks(fb)
    first, second = fb.requests
    assert (first.method, first.path) == ("POST", "/v1/chat/completions")
    assert first.json["temperature"] == 0.5 and first.model == "fake-model"
    assert first.headers["Content-Type"] == "application/json"  # case-insensitive
    assert first.headers["authorization"] == "Bearer x"
    assert before <= first.time <= second.time <= time.time()
    assert not first.stream and second.stream
    assert first.backend == "fb" and first.fault is None
    assert fb.request_count == 2
    fb.clear()
    assert fb.requests == [] and fb.request_count == 0


def test_request_log_is_thread_safe(fb: FakeBackend) -> None:
    def work(_: int) -> None:
        with client(fb) as c:
            for _ in range(10):
                c.models.list()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert fb.request_count == 80
    assert len(fb.wait_for_requests(80, timeout=1)) == 80
    with pytest.raises(TimeoutError):
        fb.wait_for_requests(81, timeout=0.05)


def test_control_endpoints(fb: FakeBackend) -> None:
    status, faults = control(fb, "POST", "/_fake/faults", {"rate_500": 1.0})
    assert status == 200 and faults["rate_500"] == 1.0
    assert fb.faults.rate_500 == 1.0
    with pytest.raises(openai.InternalServerError):
        chat(fb)
    status, faults = control(fb, "POST", "/_fake/faults?merge=true", {"latency": 0.01})
    assert faults["rate_500"] == 1.0 and faults["latency"] == 0.01
    status, error = control(fb, "POST", "/_fake/faults", {"rate_500": 7})
    assert status == 400 and "rate_500" in error["error"]["message"]
    assert control(fb, "POST", "/_fake/reset")[0] == 200
    assert fb.faults == Faults() and fb.request_count == 0
    assert control(fb, "POST", "/_fake/replies", ["scripted", {"content": "two"}])[0] == 200
    assert chat(fb).choices[0].message.content == "scripted"
    assert chat(fb).choices[0].message.content == "two"
    chat(fb)
    status, log = control(fb, "GET", "/_fake/requests?last=2")
    assert log["count"] == 3 and len(log["requests"]) == 2
    assert log["requests"][-1]["json"]["model"] == "fake-model"
    assert fb.request_count == 3  # control calls are not recorded


def test_restart_keeps_the_port(fb: FakeBackend) -> None:
    url = fb.url
    fb.stop()
    with pytest.raises(openai.APIConnectionError):
        chat(fb)
    fb.start()
    assert fb.url == url
    assert chat(fb).choices


# =========================================================================== fleets and processes


def test_fleet_shares_one_thread() -> None:
    threads_before = threading.active_count()
    specs = [
        FakeBackendSpec(name="a"),
        FakeBackendSpec(name="b", faults=Faults(rate_500=1.0)),
        FakeBackendSpec(name="c", replies=[Reply("from c")], models=["c-model"]),
    ]
    with FakeFleet(specs, seed=1) as fleet:
        assert threading.active_count() == threads_before + 1
        assert len(set(fleet.urls)) == 3
        assert chat(fleet["a"]).choices[0].message.content == "ok from a"
        with pytest.raises(openai.InternalServerError):
            chat(fleet["b"])
        assert chat(fleet[2]).choices[0].message.content == "from c"
        extra = fleet.add(name="d")
        assert chat(extra).choices[0].message.content == "ok from d"
        assert fleet.request_counts() == {"a": 1, "b": 1, "c": 1, "d": 1}
        assert threading.active_count() == threads_before + 1
        with pytest.raises(KeyError, match="names"):
            fleet["missing"]
    assert threading.active_count() == threads_before
    with pytest.raises(ValueError, match="unique"):
        FakeFleet(["x", "x"])


def test_spawned_backend_in_a_child_process() -> None:
    with spawn_fake_backend(name="child", api_key="sk-child-key", models=["m"], seed=3) as handle:
        assert handle.pid != os.getpid()
        with client(handle, api_key="sk-child-key") as c:
            raw = c.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
            assert raw.headers["x-fake-backend"] == "child"
            assert raw.parse().choices[0].message.content == "ok from child"
            handle.set_faults(rate_429=1.0, retry_after=1)
            assert handle.faults.rate_429 == 1.0
            with pytest.raises(openai.RateLimitError):
                c.chat.completions.create(model="m", messages=MESSAGES)
            handle.set_faults(Faults())
            handle.set_replies([Reply("scripted over HTTP")])
            assert (
                c.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content
                == "scripted over HTTP"
            )
        requests = handle.requests
        assert handle.request_count == 3 == len(requests)
        assert [r.fault for r in requests] == [None, "429", None]
        assert requests[0].headers["Authorization"] == "Bearer sk-child-key"
        handle.reset()
        assert handle.request_count == 0
        assert "sk-child-key" not in " ".join(
            handle.process.args
        )  # the key travels in the environment
    assert handle.process.returncode == 0  # SIGTERM is a clean stop


@dataclass
class Port:
    port: int


def test_cli_prints_the_url_first_and_stops_cleanly_on_ctrl_c() -> None:
    command = [sys.executable, "-m", "gonka_mux.testing", "--port", "0", "--name", "cli"]
    command += ["--model", "m1", "--model", "m2", "--rate-429", "1", "--retry-after", "4"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        child = Port(int(url.rsplit(":", 1)[1].split("/")[0]))
        status, body = control(child, "GET", "/v1/models")
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
        assert control(child, "GET", "/_fake/faults")[1]["retry_after"] == 4
        assert control(child, "POST", "/_fake/faults", {})[0] == 200  # no faults
        status, models = control(child, "GET", "/v1/models")
        assert [m["id"] for m in models["data"]] == ["m1", "m2"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    assert b"Traceback" not in process.stderr.read()


def test_cli_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_cli.main(["--rate-429", "2"], prog="gonka-mux fake-backend") == 2
    err = capsys.readouterr().err
    assert "rate_429" in err and err.startswith("usage: gonka-mux fake-backend")
    assert fake_cli.main(["--faults-json", "{not json"]) == 2
    assert fake_cli.main(["--faults-json", "[1]"]) == 2
    assert fake_cli.main(["--replies-json", '{"content": "x"}']) == 2
    assert fake_cli.main(["--help"]) == 0
    parser = fake_cli.build_parser()
    args = parser.parse_args(["--rate-drop", "0.25", "--retry-after", "3", "--ttft", "0.5"])
    faults = fake_cli._faults(args)
    assert (faults.rate_drop_before, faults.retry_after, faults.ttft) == (0.25, 3, 0.5)


def test_testing_package_does_not_import_openai() -> None:
    code = "import sys, gonka_mux.testing; print('openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# =========================================================================== the server core


class CoreServer:
    """An HTTPServer with a small router, for raw-socket tests of the core."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        router = Router()
        router.add("GET", "/hello", self.hello)
        router.add("POST", "/echo", self.echo)
        router.add("GET", "/hang", self.hang)
        router.add("GET", "/abort", self.abort)
        router.add("GET", "/stream", self.stream)
        router.add("GET", "/cut", self.cut)
        router.add("GET", "/files/", self.files, prefix=True)
        router.add("GET", "/boom", self.boom)
        self.server = HTTPServer(router, default_headers={"x-core": "yes"})

    async def hello(self, request: Request) -> Response:
        return Response.json({"hello": request.query.get("name", "world")})

    async def echo(self, request: Request) -> Response:
        return Response(request.body, headers={"x-len": str(len(request.body))})

    async def hang(self, request: Request) -> Response:
        try:
            await hang()
        finally:
            self.cancelled.set()

    async def abort(self, request: Request) -> Response:
        raise Abort

    async def stream(self, request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            for word in ("a", "bb", "ccc"):
                yield word

        return StreamingResponse(chunks(), content_type="text/plain")

    async def cut(self, request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            yield b"partial"
            raise Abort

        return StreamingResponse(chunks())

    async def files(self, request: Request) -> Response:
        return Response(request.path.removeprefix("/files/"))

    async def boom(self, request: Request) -> Response:
        raise RuntimeError("handler bug")


@pytest.fixture
async def core() -> Any:
    server = CoreServer()
    await server.server.start("127.0.0.1", 0)
    yield server
    await server.server.stop()


async def exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1) if until_close else reader.read(65536), 5)
    finally:
        writer.close()


async def test_core_pipelined_keep_alive_requests_answer_in_order(core: CoreServer) -> None:
    data = (
        b"GET /hello?name=one HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    raw = await exchange(core.server.port, data)
    assert raw.count(b"HTTP/1.1 200 OK") == 3
    assert raw.index(b'{"hello":"one"}') < raw.index(b"x-len: 5") < raw.index(b'{"hello":"world"}')
    assert b"x-core: yes" in raw and b"connection: close" in raw


async def test_core_chunked_request_body_and_chunked_response(core: CoreServer) -> None:
    data = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n"
        b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    raw = await exchange(core.server.port, data)
    assert b"x-len: 7\r\n" in raw and raw.count(b"abcdefg") == 1
    assert b"transfer-encoding: chunked" in raw
    assert raw.endswith(b"1\r\na\r\n2\r\nbb\r\n3\r\nccc\r\n0\r\n\r\n")


async def test_core_errors_are_openai_shaped(core: CoreServer) -> None:
    port = core.server.port
    not_found = await exchange(port, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert not_found.startswith(b"HTTP/1.1 404")
    body = json.loads(not_found.split(b"\r\n\r\n", 1)[1])
    assert set(body["error"]) == {"message", "type", "param", "code"}
    wrong_method = await exchange(port, b"DELETE /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert wrong_method.startswith(b"HTTP/1.1 405")
    crashed = await exchange(port, b"GET /boom HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert crashed.startswith(b"HTTP/1.1 500") and b"handler bug" in crashed
    garbage = await exchange(port, b"NONSENSE\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400")
    prefixed = await exchange(port, b"GET /files/a%20b HTTP/1.0\r\n\r\n")  # 1.0: closes
    assert prefixed.endswith(b"\r\n\r\na b")


async def test_core_abort_and_cut_stream(core: CoreServer) -> None:
    port = core.server.port
    assert await exchange(port, b"GET /abort HTTP/1.1\r\n\r\n") == b""
    cut = await exchange(port, b"GET /cut HTTP/1.1\r\n\r\n")
    assert cut.startswith(b"HTTP/1.1 200") and cut.endswith(b"7\r\npartial\r\n")  # no last chunk


async def test_core_hang_is_cancelled_when_the_client_leaves(core: CoreServer) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", core.server.port)
    writer.write(b"GET /hang HTTP/1.1\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    assert core.server.connection_count == 1 and not core.cancelled.is_set()
    writer.close()
    await asyncio.wait_for(core.cancelled.wait(), 5)


async def test_core_stop_ends_hangs_and_close_connections_counts(core: CoreServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", core.server.port)
    writer.write(b"GET /hang HTTP/1.1\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(core.server.stop(), 5)
    assert core.cancelled.is_set()
    assert await asyncio.wait_for(reader.read(-1), 5) == b""
    writer.close()


def test_raw_socket_client_sees_fake_backend_headers(fb: FakeBackend) -> None:
    with socket.create_connection(("127.0.0.1", fb.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"x-fake-backend: fb\r\n" in data and b"content-length: 15\r\n" in data


async def test_core_expect_100_continue(core: CoreServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", core.server.port)
    writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(b"hello")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"x-len: 5" in head
    writer.close()


async def test_serve_runs_on_the_callers_loop() -> None:
    backend = FakeBackend(name="inline")
    started = asyncio.Event()
    task = asyncio.create_task(backend.serve(lambda _: started.set()))
    await asyncio.wait_for(started.wait(), 5)
    async with aclient(backend) as c:
        await c.models.list()
        assert backend.open_connections == 1
        backend.set_faults(down=True)  # on the server's own loop: closes at once
        await asyncio.sleep(0.05)
        assert backend.open_connections == 0
        with pytest.raises(openai.APIConnectionError):
            await c.models.list()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not backend.running
