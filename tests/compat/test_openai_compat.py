"""OpenAI API compatibility: the official client's calls behave the same through the Multiplexer.

Every scenario sends the same call twice to one fake backend (a real loopback server): once with
the official ``openai`` client pointed straight at it, once through a Multiplexer whose only
endpoint is that backend. The backend must receive the same request body both times, and the
caller must get the same result (ids and timestamps aside) or the same kind of error. Both faces
are covered: ``openai.AsyncOpenAI`` vs ``AsyncMultiplexer`` and ``openai.OpenAI`` vs
``Multiplexer``. This file runs under openai 3.x (the main venv) and openai 2.x (``.venv-oa2``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from gonka_mux import AllEndpointsFailed, AllEndpointsRateLimited, AsyncMultiplexer, Multiplexer
from gonka_mux.testing import FakeBackend, Reply, ToolCall

MODEL = "fake-model"
KEY = "sk-compat-test"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Local time in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
]


def _scrub(value: Any) -> Any:
    """Drop what differs between two identical calls: ids and creation times."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in ("id", "created")}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


@dataclass
class Pair:
    """The direct client and the Multiplexer over the same backend, for one face."""

    face: str
    backend: FakeBackend
    direct: Any
    mux: Any

    async def call(self, client: Any, resource: str = "chat.completions", **kw: Any) -> Any:
        """Call ``resource.create`` and return a plain result (a stream is read to the end)."""
        target = client
        for part in resource.split("."):
            target = getattr(target, part)
        if self.face == "async":
            result = await target.create(**kw)
            if kw.get("stream"):
                async with result as stream:
                    return [c.model_dump(mode="json") async for c in stream]
            return result.model_dump(mode="json")

        def sync() -> Any:
            result = target.create(**kw)
            if kw.get("stream"):
                with result as stream:
                    return [c.model_dump(mode="json") for c in stream]
            return result.model_dump(mode="json")

        return await asyncio.to_thread(sync)

    async def both(self, reply: Reply | None = None, **kw: Any) -> tuple[Any, Any]:
        """The same call, direct then through the mux; asserts the backend saw the same body."""
        if reply is not None:
            self.backend.set_replies([reply, reply])
        before = self.backend.request_count
        direct = await self.call(self.direct, **kw)
        via_mux = await self.call(self.mux, **kw)
        seen = self.backend.requests[-2:]
        assert self.backend.request_count == before + 2
        assert seen[0].json == seen[1].json, "the Multiplexer changed the request body"
        return direct, via_mux

    async def errors(self, reply: Reply | None = None, **kw: Any) -> tuple[Exception, Exception]:
        if reply is not None:
            self.backend.set_replies([reply, reply])
        caught = []
        for client in (self.direct, self.mux):
            with pytest.raises(openai.APIError) as info:
                await self.call(client, **kw)
            caught.append(info.value)
        return caught[0], caught[1]


@pytest.fixture(scope="module")
def _server():
    with FakeBackend(models=[MODEL, "other-model"], name="compat", api_key=KEY) as fb:
        yield fb


@pytest.fixture
def backend(_server: FakeBackend) -> FakeBackend:
    _server.reset()
    _server.set_replies(None)
    _server.strict_models = False
    return _server


@pytest.fixture(params=["async", "sync"])
async def pair(request, backend) -> AsyncIterator[Pair]:
    if request.param == "async":
        direct: Any = openai.AsyncOpenAI(base_url=backend.url, api_key=KEY, max_retries=0)
        mux: Any = AsyncMultiplexer()
    else:
        direct = openai.OpenAI(base_url=backend.url, api_key=KEY, max_retries=0)
        mux = Multiplexer()
    mux.add_endpoint(backend.url, models=[MODEL, "other-model"], name="compat", api_key=KEY)
    yield Pair(request.param, backend, direct, mux)
    if request.param == "async":
        await direct.close()
        await mux.aclose()
    else:
        direct.close()
        await asyncio.to_thread(mux.close)


# ------------------------------------------------------------------------------- success


async def test_chat_completion_same_object(pair: Pair):
    direct, via_mux = await pair.both(
        Reply("Hello there, friend."),
        model=MODEL,
        messages=MESSAGES,
        temperature=0.3,
        top_p=0.9,
        max_tokens=32,
        seed=7,
        stop=["\n\n"],
        user="u-1",
        metadata={"k": "v"},
    )
    assert _scrub(direct) == _scrub(via_mux)
    assert via_mux["object"] == "chat.completion"
    assert via_mux["choices"][0]["message"]["content"] == "Hello there, friend."
    assert via_mux["usage"]["total_tokens"] == direct["usage"]["total_tokens"] > 0


async def test_returned_types_are_openai_types(pair: Pair):
    pair.backend.set_replies([Reply("typed")])
    create = pair.mux.chat.completions.create
    if pair.face == "async":
        result = await create(model=MODEL, messages=MESSAGES)
    else:
        result = await asyncio.to_thread(create, model=MODEL, messages=MESSAGES)
    assert isinstance(result, openai.types.chat.ChatCompletion)
    assert isinstance(result.choices[0].message, openai.types.chat.ChatCompletionMessage)


@pytest.mark.parametrize("include_usage", [False, True])
async def test_stream_same_chunks(pair: Pair, include_usage: bool):
    kw: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "stream": True}
    if include_usage:
        kw["stream_options"] = {"include_usage": True}
    direct, via_mux = await pair.both(Reply("one two three four five six"), **kw)
    assert _scrub(direct) == _scrub(via_mux)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in via_mux if c["choices"])
    assert text == "one two three four five six"
    assert all(c["object"] == "chat.completion.chunk" for c in via_mux)
    last = via_mux[-1]
    if include_usage:  # the usage-only chunk ends the stream
        assert last["choices"] == [] and last["usage"]["total_tokens"] > 0
    else:
        assert last["choices"][0]["finish_reason"] == "stop"
        assert all(c.get("usage") is None for c in via_mux)


async def test_tool_calls_same(pair: Pair):
    reply = Reply(
        tool_calls=[
            ToolCall("get_weather", {"city": "Oslo"}),
            ToolCall("get_time", {"city": "Rome"}),
        ]
    )
    direct, via_mux = await pair.both(
        reply, model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="auto"
    )
    assert _scrub(direct) == _scrub(via_mux)
    message = via_mux["choices"][0]["message"]
    assert via_mux["choices"][0]["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather", "get_time"]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert all(c["id"] for c in message["tool_calls"])
    assert pair.backend.requests[-1].json["tools"] == TOOLS


async def test_tool_call_streaming_same_deltas(pair: Pair):
    reply = Reply(
        tool_calls=[
            ToolCall("get_weather", {"city": "Oslo"}),
            ToolCall("get_time", {"city": "Rome"}),
        ]
    )
    direct, via_mux = await pair.both(
        reply,
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert _scrub(direct) == _scrub(via_mux)
    # Reassemble by index, as agent frameworks do: name and id first, arguments in fragments.
    calls: dict[int, dict[str, str]] = {}
    fragments = 0
    for chunk in via_mux:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or ():
                slot = calls.setdefault(delta["index"], {"id": "", "name": "", "args": ""})
                slot["id"] += delta.get("id") or ""
                function = delta.get("function") or {}
                slot["name"] += function.get("name") or ""
                if function.get("arguments"):
                    fragments += 1
                    slot["args"] += function["arguments"]
    assert sorted(calls) == [0, 1]
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["args"]) == {"city": "Oslo"}
    assert calls[1]["name"] == "get_time" and json.loads(calls[1]["args"]) == {"city": "Rome"}
    assert calls[0]["id"] and calls[1]["id"] and fragments > 2


async def test_tool_results_round_trip_unchanged(pair: Pair):
    """assistant(tool_calls, content=None) and tool messages reach the backend as sent."""
    history = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"},
        {"role": "user", "content": [{"type": "text", "text": "And so?"}]},
    ]
    direct, via_mux = await pair.both(Reply("Bring an umbrella."), model=MODEL, messages=history)
    assert _scrub(direct) == _scrub(via_mux)
    assert pair.backend.requests[-1].json["messages"] == history


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
                    "required": ["city", "temp"],
                    "additionalProperties": False,
                },
            },
        },
    ],
    ids=["json_object", "json_schema"],
)
async def test_response_format_passes_through(pair: Pair, response_format: dict[str, Any]):
    content = '{"city": "Oslo", "temp": 12.5}'
    direct, via_mux = await pair.both(
        Reply(content), model=MODEL, messages=MESSAGES, response_format=response_format
    )
    assert _scrub(direct) == _scrub(via_mux)
    assert json.loads(via_mux["choices"][0]["message"]["content"]) == {"city": "Oslo", "temp": 12.5}
    assert pair.backend.requests[-1].json["response_format"] == response_format


@pytest.mark.parametrize("stream", [False, True])
async def test_n_greater_than_one(pair: Pair, stream: bool):
    direct, via_mux = await pair.both(
        Reply("alpha beta"), model=MODEL, messages=MESSAGES, n=3, stream=stream
    )
    assert _scrub(direct) == _scrub(via_mux)
    if stream:
        indexes = {c["choices"][0]["index"] for c in via_mux if c["choices"]}
        assert indexes == {0, 1, 2}
    else:
        assert [c["index"] for c in via_mux["choices"]] == [0, 1, 2]


async def test_extra_body_and_extra_headers(pair: Pair):
    direct, via_mux = await pair.both(
        Reply("ok"),
        model=MODEL,
        messages=MESSAGES,
        extra_body={"top_k": 5, "chat_template_kwargs": {"thinking": False}},
        extra_headers={"X-Trace": "t-1"},
    )
    assert _scrub(direct) == _scrub(via_mux)
    last_two = pair.backend.requests[-2:]
    assert all(r.json["top_k"] == 5 for r in last_two)
    assert [r.headers.get("x-trace") for r in last_two] == ["t-1", "t-1"]


async def test_other_model_and_reasoning_field(pair: Pair):
    direct, via_mux = await pair.both(
        Reply("42", reasoning="think think"), model="other-model", messages=MESSAGES
    )
    assert _scrub(direct) == _scrub(via_mux)
    assert via_mux["model"] == "other-model"
    assert via_mux["choices"][0]["message"]["reasoning"] == "think think"


async def test_legacy_completions_and_embeddings(pair: Pair):
    pair.backend.set_replies([Reply("text out"), Reply("text out")])
    kw = {"model": MODEL, "prompt": "Once upon", "max_tokens": 5}
    direct = await pair.call(pair.direct, "completions", **kw)
    via_mux = await pair.call(pair.mux, "completions", **kw)
    assert _scrub(direct) == _scrub(via_mux)
    kw = {"model": MODEL, "input": ["a", "b"], "dimensions": 4}
    direct = await pair.call(pair.direct, "embeddings", **kw)
    via_mux = await pair.call(pair.mux, "embeddings", **kw)
    # Like the SDK, the Multiplexer asks for base64 float32 when no encoding_format is given
    # and decodes it, so the request bodies and the vectors are identical.
    assert direct == via_mux
    assert [len(d["embedding"]) for d in via_mux["data"]] == [4, 4]
    assert pair.backend.requests[-1].json["encoding_format"] == "base64"


async def test_models_list_same_ids(pair: Pair):
    if pair.face == "async":
        direct = await pair.direct.models.list()
        via_mux = await pair.mux.models.list()
    else:
        direct = await asyncio.to_thread(pair.direct.models.list)
        via_mux = await asyncio.to_thread(pair.mux.models.list)
    assert sorted(m.id for m in direct.data) == sorted(m.id for m in via_mux.data)
    assert all(isinstance(m, openai.types.Model) for m in via_mux.data)


# ------------------------------------------------------------------------------- errors

_CLIENT_ERRORS: list[tuple[int, type[openai.APIStatusError], str]] = [
    (400, openai.BadRequestError, "invalid_value"),
    (422, openai.UnprocessableEntityError, "unprocessable"),
]
# The endpoint's own faults (its credentials, a model it does not serve): another endpoint is
# tried, so the error is the Multiplexer's (naming the endpoints), of the same openai class
# and with the upstream's code.
_ENDPOINT_ERRORS: list[tuple[int, type[openai.APIStatusError], str]] = [
    (403, openai.PermissionDeniedError, "forbidden"),
    (404, openai.NotFoundError, "not_found"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("status", "cls", "code"), _CLIENT_ERRORS)
async def test_client_errors_are_the_same_exception(
    pair: Pair, status: int, cls: type[Exception], code: str, stream: bool
):
    error = {"message": f"scripted {status}", "type": "invalid_request_error", "code": code}
    direct, via_mux = await pair.errors(
        Reply(status=status, error=error), model=MODEL, messages=MESSAGES, stream=stream
    )
    assert type(direct) is cls and isinstance(via_mux, cls)
    assert isinstance(direct, openai.APIStatusError) and isinstance(via_mux, openai.APIStatusError)
    assert via_mux.status_code == direct.status_code == status
    assert via_mux.code == direct.code == code
    assert via_mux.message == direct.message
    assert via_mux.body == direct.body
    assert pair.backend.request_count == 2  # a client error is never retried


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("status", "cls", "code"), _ENDPOINT_ERRORS)
async def test_endpoint_errors_keep_the_openai_class(
    pair: Pair, status: int, cls: type[Exception], code: str, stream: bool
):
    error = {"message": f"scripted {status}", "type": "invalid_request_error", "code": code}
    direct, via_mux = await pair.errors(
        Reply(status=status, error=error), model=MODEL, messages=MESSAGES, stream=stream
    )
    assert type(direct) is cls and isinstance(via_mux, cls)
    assert via_mux.status_code == direct.status_code == status
    assert via_mux.code == direct.code == code
    assert "compat" in via_mux.message  # the endpoint is named
    assert pair.backend.request_count == 2


async def test_unknown_model_is_not_found(pair: Pair):
    """Direct: the backend's 404; mux: its own ModelNotFound, the same openai class and code."""
    pair.backend.strict_models = True
    direct, via_mux = await pair.errors(model="no-such-model", messages=MESSAGES)
    assert isinstance(direct, openai.NotFoundError) and isinstance(via_mux, openai.NotFoundError)
    assert direct.status_code == via_mux.status_code == 404
    assert direct.code == via_mux.code == "model_not_found"
    assert pair.backend.request_count == 1  # the mux knew no endpoint serves it


async def test_authentication_error(backend: FakeBackend, pair: Pair):
    if pair.face == "async":
        direct: Any = openai.AsyncOpenAI(base_url=backend.url, api_key="wrong", max_retries=0)
        mux: Any = AsyncMultiplexer()
    else:
        direct = openai.OpenAI(base_url=backend.url, api_key="wrong", max_retries=0)
        mux = Multiplexer()
    mux.add_endpoint(backend.url, models=[MODEL], api_key="wrong")
    bad = Pair(pair.face, backend, direct, mux)
    try:
        e_direct, e_mux = await bad.errors(model=MODEL, messages=MESSAGES)
    finally:
        if pair.face == "async":
            await mux.aclose()
        else:
            await asyncio.to_thread(mux.close)
    assert type(e_direct) is openai.AuthenticationError
    assert isinstance(e_mux, openai.AuthenticationError)
    assert e_mux.status_code == 401 and e_mux.code == e_direct.code == "invalid_api_key"
    assert "wrong" not in str(e_mux)  # the key never reaches the message


async def test_rate_limit_is_a_rate_limit_error(pair: Pair):
    """Retryable statuses: the mux tries every endpoint, then raises an openai subclass."""
    reply = Reply(status=429, error="slow down", headers={"retry-after": "1"})
    direct, via_mux = await pair.errors(reply, model=MODEL, messages=MESSAGES)
    assert type(direct) is openai.RateLimitError
    assert isinstance(via_mux, openai.RateLimitError)
    assert isinstance(via_mux, AllEndpointsRateLimited)
    assert via_mux.status_code == 429
    assert via_mux.attempts[0].status == 429


async def test_server_error_is_an_internal_server_error(pair: Pair):
    direct, via_mux = await pair.errors(
        Reply(status=500, error="boom"), model=MODEL, messages=MESSAGES
    )
    assert type(direct) is openai.InternalServerError
    assert isinstance(via_mux, openai.InternalServerError)
    assert isinstance(via_mux, AllEndpointsFailed)
    assert via_mux.attempts[0].status == 500


async def test_connection_failure_is_an_api_error(pair: Pair):
    """Direct: APIConnectionError. Mux: AllEndpointsFailed (an InternalServerError, status 503)
    listing the failed attempt; both are openai.APIError, which is what callers catch."""
    pair.backend.set_faults(rate_drop_before=1.0)
    try:
        direct, via_mux = await pair.errors(model=MODEL, messages=MESSAGES)
    finally:
        pair.backend.set_faults(rate_drop_before=0.0)
    assert isinstance(direct, openai.APIConnectionError)
    assert isinstance(via_mux, AllEndpointsFailed) and via_mux.status_code == 503
    assert via_mux.attempts and via_mux.attempts[0].status is None


async def test_stream_objects_are_context_managers_and_iterators(pair: Pair):
    pair.backend.set_replies([Reply("a b c d")])
    create = pair.mux.chat.completions.create
    kw = {"model": MODEL, "messages": MESSAGES, "stream": True}
    if pair.face == "async":
        stream = await create(**kw)
        assert hasattr(stream, "__aenter__") and hasattr(stream, "__aiter__")
        async with stream:
            first = await stream.__anext__()
        assert isinstance(first, openai.types.chat.ChatCompletionChunk)
    else:

        def read() -> Any:
            stream = create(**kw)
            assert hasattr(stream, "__enter__") and hasattr(stream, "__iter__")
            with stream:
                return next(iter(stream))

        first = await asyncio.to_thread(read)
        assert isinstance(first, openai.types.chat.ChatCompletionChunk)
