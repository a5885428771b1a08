"""The OpenAI-compatible surface over real HTTP: JSON, SSE, tools, reasoning, errors."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from gonka_mux.testing import Faults, Reply, StatusError, ToolCall

from .conftest import MSG

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
]


def script_all(gateway, replies):
    for backend in gateway.backends:
        backend.set_replies(list(replies))


def assert_openai_error(response, status, code=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not None:
        assert error["code"] == code
    return error


async def test_chat_completion_json_with_reasoning(gateway):
    script_all(gateway, [Reply("the answer", reasoning="let me think")])
    client = gateway.openai()
    result = await client.chat.completions.create(model="m", messages=MSG)
    assert result.choices[0].message.content == "the answer"
    assert result.choices[0].message.model_extra["reasoning"] == "let me think"
    assert result.usage.completion_tokens_details.reasoning_tokens > 0
    assert result.model == "m"


async def test_chat_completion_tool_calls_json(gateway):
    script_all(gateway, [Reply(tool_calls=[ToolCall("read", {"path": "a.txt"})])])
    result = await gateway.openai().chat.completions.create(model="m", messages=MSG, tools=TOOLS)
    call = result.choices[0].message.tool_calls[0]
    assert result.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "read"
    assert json.loads(call.function.arguments) == {"path": "a.txt"}
    # The tools went to the endpoint unchanged.
    sent = [r for b in gateway.backends for r in b.requests][-1].json
    assert sent["tools"] == TOOLS


async def test_stream_relays_chunks_tool_calls_and_done(gateway):
    script_all(gateway, [Reply(tool_calls=[ToolCall("read", {"path": "notes/x.md"})])])
    async with gateway.http.stream(
        "POST",
        "/v1/chat/completions",
        headers=gateway.auth(),
        json={"model": "m", "messages": MSG, "tools": TOOLS, "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [tc for d in deltas for tc in d.get("tool_calls") or []]
    assert all(tc["index"] == 0 for tc in calls)
    assert calls[0]["function"]["name"] == "read" and calls[0]["id"]
    arguments = "".join(tc["function"].get("arguments") or "" for tc in calls)
    assert json.loads(arguments) == {"path": "notes/x.md"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # The client did not ask for usage: the gateway asked the endpoint (for metering) and hid it.
    assert all(c.get("usage") is None for c in chunks)
    sent = [r for b in gateway.backends for r in b.requests][-1].json
    assert sent["stream_options"] == {"include_usage": True}
    (record,) = gateway.records(key=gateway.key_id)
    assert record.completion_tokens > 0 and record.status == "ok"


async def test_stream_with_openai_client_and_usage_chunk(gateway):
    script_all(gateway, [Reply("streamed words here", reasoning="hmm")])
    stream = await gateway.openai().chat.completions.create(
        model="m", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    text, reasoning, usage = [], [], None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            reasoning.append((choice.delta.model_extra or {}).get("reasoning") or "")
    assert "".join(text) == "streamed words here"
    assert "".join(reasoning) == "hmm"
    assert usage is not None and usage.total_tokens > 0
    (record,) = gateway.records(key=gateway.key_id)
    assert record.prompt_tokens == usage.prompt_tokens
    assert record.completion_tokens == usage.completion_tokens


async def test_mid_stream_failure_becomes_an_error_event(gateway):
    for backend in gateway.backends:
        backend.set_faults(rate_drop_mid_stream=1.0)
    script_all(gateway, [Reply("x" * 400)] * 3)
    async with gateway.http.stream(
        "POST",
        "/v1/chat/completions",
        headers=gateway.auth(),
        json={"model": "m", "messages": MSG, "stream": True},
    ) as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line]
    assert "data: [DONE]" not in lines
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["code"] == "stream_interrupted"
    assert "resend" in error["message"]


async def test_client_disconnect_mid_stream_closes_upstream(gateway):
    for backend in gateway.backends:
        backend.set_faults(inter_chunk=0.05)
    script_all(gateway, [Reply("y" * 400)])
    async with gateway.http.stream(
        "POST",
        "/v1/chat/completions",
        headers=gateway.auth(),
        json={"model": "m", "messages": MSG, "stream": True},
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                break  # leave after the first chunk: the connection is closed
    for _ in range(200):
        if all(ep.inflight == 0 for ep in gateway.mux.endpoints):
            break
        await asyncio.sleep(0.02)
    assert all(ep.inflight == 0 for ep in gateway.mux.endpoints)
    (record,) = gateway.records(key=gateway.key_id)
    assert record.status in ("closed", "cancelled", "ok")


async def test_legacy_completions_and_embeddings(gateway):
    client = gateway.openai()
    completion = await client.completions.create(model="m", prompt="Say hi")
    assert completion.choices[0].text
    embedding = await client.embeddings.create(model="m", input=["a", "b"])
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) > 0
    floats = await client.embeddings.create(model="m", input="a", encoding_format="float")
    assert all(isinstance(x, float) for x in floats.data[0].embedding)


async def test_legacy_completions_stream(gateway):
    client = gateway.openai()
    stream = await client.completions.create(model="m", prompt="Say hi", stream=True)
    pieces = [c.choices[0].text async for c in stream if c.choices]
    assert "".join(pieces)


async def test_models_and_health(gateway):
    page = await gateway.openai().models.list()
    assert sorted(m.id for m in page.data) == ["fake-model", "m"]
    model = await gateway.openai().models.retrieve("m")
    assert model.id == "m"
    missing = await gateway.http.get("/v1/models/nope", headers=gateway.auth())
    assert_openai_error(missing, 404, "model_not_found")
    health = await gateway.http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["endpoints"] == {"total": 2, "available": 2}


async def test_health_is_503_when_no_endpoint_is_available(gateway):
    for ep in list(gateway.mux.endpoints):
        gateway.mux.remove_endpoint(ep)
    health = await gateway.http.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable"


async def test_unknown_model_is_404_openai_shaped(gateway):
    with pytest.raises(openai.NotFoundError) as info:
        await gateway.openai().chat.completions.create(model="nope", messages=MSG)
    assert info.value.code == "model_not_found"


async def test_endpoint_400_is_relayed_with_its_body(gateway):
    body = {"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}
    for backend in gateway.backends:
        backend.set_faults(status_errors=[StatusError(400, 1.0, body=body)])
    response = await gateway.http.post(
        "/v1/chat/completions",
        headers=gateway.auth(),
        json={"model": "m", "messages": MSG, "max_tokens": 10**9},
    )
    error = assert_openai_error(response, 400)
    assert error["message"] == "max_tokens is too large"


async def test_all_endpoints_down_is_503_openai_shaped(gateway):
    for backend in gateway.backends:
        backend.set_faults(rate_500=1.0)
    response = await gateway.http.post(
        "/v1/chat/completions", headers=gateway.auth(), json={"model": "m", "messages": MSG}
    )
    assert_openai_error(response, 503, "all_endpoints_failed")


async def test_endpoint_429_everywhere_is_429_with_retry_after(gateway):
    for backend in gateway.backends:
        backend.set_faults(Faults(rate_429=1.0, retry_after=30))
    response = await gateway.http.post(
        "/v1/chat/completions", headers=gateway.auth(), json={"model": "m", "messages": MSG}
    )
    assert_openai_error(response, 429)
    assert int(response.headers["retry-after"]) >= 1


async def test_endpoint_auth_failure_is_not_reported_as_the_callers_401(gateway):
    for backend in gateway.backends:
        backend.set_faults(status_errors={401: 1.0})
    response = await gateway.http.post(
        "/v1/chat/completions", headers=gateway.auth(), json={"model": "m", "messages": MSG}
    )
    assert response.status_code != 401
    assert response.status_code >= 500
    assert_openai_error(response, response.status_code)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        (b'{"model": "m", "messages": [], "x": NaN}', None),
        (json.dumps({"messages": MSG}).encode(), "model"),
        (json.dumps({"model": 5, "messages": MSG}).encode(), "model"),
        (json.dumps({"model": "m"}).encode(), "messages"),
        (json.dumps({"model": "m", "messages": "hi"}).encode(), "messages"),
        (json.dumps({"model": "m", "messages": [{"content": "x"}]}).encode(), "messages[0]"),
        (json.dumps({"model": "m", "messages": MSG, "stream": "yes"}).encode(), "stream"),
        (json.dumps({"model": "m", "messages": MSG, "caller": "other"}).encode(), "caller"),
        (json.dumps({"model": "m", "messages": MSG, "route_to": "a"}).encode(), "route_to"),
        (json.dumps({"model": "m", "messages": MSG, "extra_headers": {}}).encode(), None),
        (json.dumps({"model": "m", "messages": MSG, "session_id": "a b"}).encode(), "session_id"),
        (b"[" * 100_000, None),
    ],
)
async def test_bad_input_is_400_openai_shaped(gateway, body, param):
    response = await gateway.http.post(
        "/v1/chat/completions",
        headers={**gateway.auth(), "Content-Type": "application/json"},
        content=body,
    )
    error = assert_openai_error(response, 400)
    if param is not None:
        assert error["param"] == param
    assert gateway.served() == 0


async def test_body_too_large_is_413(gateway):
    response = await gateway.http.post(
        "/v1/chat/completions",
        headers=gateway.auth(),
        json={"model": "m", "messages": [{"role": "user", "content": "x" * (17 * 1024 * 1024)}]},
    )
    assert_openai_error(response, 413, "request_too_large")


async def test_unknown_path_and_method_are_openai_shaped(gateway):
    assert_openai_error(await gateway.http.get("/v1/nothing-here"), 404, "not_found")
    assert_openai_error(await gateway.http.get("/v1/chat/completions"), 405)


async def test_openapi_document_is_served(gateway):
    response = await gateway.http.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/chat/completions" in doc["paths"]
    assert "/admin/usage" in doc["paths"]


@pytest.mark.parametrize(
    "content",
    [
        b'"\\ud800 lone surrogate"',
        b"[" * 3000 + b"1" + b"]" * 3000,
    ],
    ids=["lone-surrogate", "deep-nesting"],
)
async def test_one_tenants_odd_bytes_do_not_take_the_upstream_offline(gateway, content):
    """Eight requests a no endpoint could serve: each is the tenant's 400, no endpoint is
    blamed, and the next valid request (any tenant's) is served at once."""
    body = b'{"model": "m", "messages": [{"role": "user", "content": ' + content + b"}]}"
    for _ in range(8):
        response = await gateway.http.post(
            "/v1/chat/completions",
            headers={**gateway.auth(), "Content-Type": "application/json"},
            content=body,
        )
        assert_openai_error(response, 400)
    assert gateway.served() == 0  # nothing reached an endpoint
    states = {e["state"] for e in gateway.mux.stats()["endpoints"].values()}
    assert states == {"healthy"}
    result = await gateway.openai().chat.completions.create(model="m", messages=MSG)
    assert result.choices[0].message.content.startswith("ok from")
