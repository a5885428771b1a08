"""ChatMultiplexer (LangChain BaseChatModel) through a real Multiplexer and a fake backend."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from pydantic import BaseModel

from gonka_mux import AsyncMultiplexer, Multiplexer
from gonka_mux.integrations.langchain import ChatMultiplexer
from gonka_mux.testing import FakeBackend, Reply, ToolCall

MODEL = "lc-model"


class Recorder:
    """A Multiplexer extension that records the gonka_mux options of every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    async def before(self, ctx: Any) -> None:
        self.seen.append((ctx.options.session_id, ctx.options.metadata, ctx.options.tier))

    async def after(self, ctx: Any) -> None:
        return None


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Answer(BaseModel):
    city: str
    temp: float


@pytest.fixture
def backend():
    with FakeBackend(name="lc") as fb:
        yield fb


@pytest.fixture
def mux(backend):
    m = Multiplexer()
    m.add_endpoint(backend.url, models=[MODEL], name="lc")
    yield m
    m.close()


def sent(backend: FakeBackend) -> dict[str, Any]:
    return backend.requests[-1].json


def test_invoke_maps_messages_and_response(backend, mux):
    backend.set_replies(
        [Reply("Hi there.", usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12})]
    )
    model = ChatMultiplexer(mux=mux, model=MODEL, temperature=0.1, max_tokens=50)
    history = [
        SystemMessage("be brief"),
        HumanMessage("add 1 and 2"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
        ToolMessage("3", tool_call_id="c1"),
    ]
    out = model.invoke(history)
    assert isinstance(out, AIMessage) and out.content == "Hi there."
    usage = out.usage_metadata
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (9, 3, 12)
    assert out.response_metadata["finish_reason"] == "stop"
    body = sent(backend)
    assert body["model"] == MODEL and body["temperature"] == 0.1 and body["max_tokens"] == 50
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "add 1 and 2"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "type": "function",
                    "id": "c1",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "3"},
    ]
    assert "stream" not in body


def test_bind_tools_and_tool_calls(backend, mux):
    backend.set_replies([Reply(tool_calls=[ToolCall("add", {"a": 2, "b": 5}, id="call_x")])])
    model = ChatMultiplexer(mux=mux, model=MODEL).bind_tools([add], tool_choice="any")
    out = model.invoke("what is 2+5?")
    assert out.tool_calls == [
        {"name": "add", "args": {"a": 2, "b": 5}, "id": "call_x", "type": "tool_call"}
    ]
    body = sent(backend)
    assert body["tool_choice"] == "required"
    assert body["tools"][0]["function"]["name"] == "add"
    assert set(body["tools"][0]["function"]["parameters"]["properties"]) == {"a", "b"}


def test_bind_tools_choice_by_name_and_unknown_name(mux):
    model = ChatMultiplexer(mux=mux, model=MODEL)
    bound = model.bind_tools([add], tool_choice="add")
    assert bound.kwargs["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    with pytest.raises(ValueError, match="not one of the bound tools"):
        model.bind_tools([add], tool_choice="nope")


def test_invalid_tool_arguments_become_invalid_tool_calls(backend, mux):
    backend.set_replies([Reply(tool_calls=[ToolCall("add", '{"a": 1,')])])
    out = ChatMultiplexer(mux=mux, model=MODEL).bind_tools([add]).invoke("x")
    assert out.tool_calls == [] and out.invalid_tool_calls[0]["name"] == "add"


def test_stream_yields_text_tool_chunks_and_usage(backend, mux):
    backend.set_replies(
        [Reply("one two three"), Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 1})])]
    )
    model = ChatMultiplexer(mux=mux, model=MODEL)
    chunks = list(model.stream("count"))
    assert "".join(c.content for c in chunks) == "one two three"
    assert sum(1 for c in chunks if c.content) >= 2  # really streamed, not one blob
    assert sent(backend)["stream"] is True
    assert sent(backend)["stream_options"] == {"include_usage": True}
    assert any(c.usage_metadata for c in chunks)
    full = None
    for chunk in model.bind_tools([add]).stream("add"):
        full = chunk if full is None else full + chunk
    assert full.tool_calls[0]["name"] == "add" and full.tool_calls[0]["args"] == {"a": 1, "b": 1}
    assert full.response_metadata["finish_reason"] == "tool_calls"


async def test_async_paths_on_the_sync_multiplexer(backend, mux):
    backend.set_replies([Reply("async hello"), Reply("async stream here")])
    model = ChatMultiplexer(mux=mux, model=MODEL)
    out = await model.ainvoke("x")
    assert out.content == "async hello"
    pieces = [c.content async for c in model.astream("y")]
    assert "".join(pieces) == "async stream here" and len([p for p in pieces if p]) >= 2


async def test_async_multiplexer_serves_async_and_refuses_sync(backend):
    amux = AsyncMultiplexer()
    amux.add_endpoint(backend.url, models=[MODEL], name="lc")
    backend.set_replies([Reply("from async mux")])
    model = ChatMultiplexer(mux=amux, model=MODEL)
    try:
        assert (await model.ainvoke("x")).content == "from async mux"
        with pytest.raises(TypeError, match="only serves async calls"):
            await asyncio.to_thread(model.invoke, "x")
    finally:
        await amux.aclose()


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output(backend, mux, method: str):
    if method == "function_calling":
        backend.set_replies([Reply(tool_calls=[ToolCall("Answer", {"city": "Oslo", "temp": 4.5})])])
    else:
        backend.set_replies([Reply('{"city": "Oslo", "temp": 4.5}')])
    model = ChatMultiplexer(mux=mux, model=MODEL)
    result = model.with_structured_output(Answer, method=method).invoke("weather?")
    assert result == Answer(city="Oslo", temp=4.5)
    body = sent(backend)
    if method == "function_calling":
        assert body["tool_choice"] == {"type": "function", "function": {"name": "Answer"}}
        assert body["parallel_tool_calls"] is False
    elif method == "json_schema":
        schema = body["response_format"]["json_schema"]
        assert body["response_format"]["type"] == "json_schema" and schema["name"] == "Answer"
        assert set(schema["schema"]["properties"]) == {"city", "temp"}
    else:
        assert body["response_format"] == {"type": "json_object"}


def test_structured_output_include_raw_keeps_parsing_errors(backend, mux):
    backend.set_replies([Reply("not json")])
    model = ChatMultiplexer(mux=mux, model=MODEL)
    out = model.with_structured_output(Answer, method="json_mode", include_raw=True).invoke("q")
    assert out["parsed"] is None and out["parsing_error"] is not None
    assert out["raw"].content == "not json"


def test_dict_schema_gives_dicts(backend, mux):
    schema = {
        "title": "pick",
        "description": "Pick a number.",
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
    }
    backend.set_replies([Reply(tool_calls=[ToolCall("pick", {"n": 4})])])
    out = ChatMultiplexer(mux=mux, model=MODEL).with_structured_output(schema).invoke("q")
    assert out == {"n": 4}


def test_n_choices_become_generations(backend, mux):
    backend.set_replies([Reply("same")])
    model = ChatMultiplexer(mux=mux, model=MODEL, n=3)
    result = model.generate([[HumanMessage("x")]])
    assert [g.text for g in result.generations[0]] == ["same", "same", "same"]
    assert sent(backend)["n"] == 3


def test_stop_and_model_kwargs_are_sent(backend, mux):
    backend.set_replies([Reply("ok")])
    model = ChatMultiplexer(mux=mux, model=MODEL, model_kwargs={"top_k": 4}, stop=["END"])
    model.invoke("x", seed=3)
    body = sent(backend)
    assert body["stop"] == ["END"] and body["top_k"] == 4 and body["seed"] == 3


def test_errors_are_openai_errors(backend, mux):
    backend.set_replies([Reply(status=400, error={"message": "bad input", "code": "bad"})])
    with pytest.raises(openai.BadRequestError, match="bad input"):
        ChatMultiplexer(mux=mux, model=MODEL).invoke("x")


def test_thread_id_is_forwarded_as_session_id_in_affinity_mode(backend, mux):
    recorder = Recorder()
    mux.add_extension(recorder)
    backend.set_replies([Reply("first"), Reply("second"), Reply("third"), Reply("fourth")])
    model = ChatMultiplexer(mux=mux, model=MODEL, tier="gold")

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    app = graph.compile()
    app.invoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "t-42"}})
    history_model = ChatMultiplexer(mux=mux, model=MODEL, session_mode="history")
    history_model.invoke("x", session_id="explicit")
    fixed = ChatMultiplexer(mux=mux, model=MODEL, session_id="fixed")
    fixed.invoke("x")
    ChatMultiplexer(mux=mux, model=MODEL).invoke("no session")
    assert recorder.seen == [
        ("t-42", {"session_mode": "affinity"}, "gold"),
        ("explicit", {"session_mode": "history"}, None),
        ("fixed", {"session_mode": "affinity"}, None),
        (None, None, None),
    ]


def test_plain_openai_client_works_without_mux_options(backend):
    client = openai.OpenAI(base_url=backend.url, api_key="x", max_retries=0)
    backend.set_replies([Reply("direct")])
    try:
        out = ChatMultiplexer(mux=client, model=MODEL, session_id="ignored").invoke("x")
    finally:
        client.close()
    assert out.content == "direct"
    assert "session_id" not in sent(backend) and "mux_metadata" not in sent(backend)


def test_bad_arguments_fail_clearly(mux):
    with pytest.raises(ValueError, match="session_mode"):
        ChatMultiplexer(mux=mux, model=MODEL, session_mode="bogus")
    with pytest.raises(TypeError, match=r"chat\.completions\.create"):
        ChatMultiplexer(mux=object(), model=MODEL)


def test_tool_loop_in_a_graph_streams_messages(backend, mux):
    """StateGraph + ToolNode, stream_mode="messages": tokens arrive as they stream."""
    from langgraph.prebuilt import ToolNode, tools_condition

    def script(request) -> Reply:
        tool_results = [m for m in request.messages if m["role"] == "tool"]
        if not tool_results:
            return Reply(tool_calls=[ToolCall("add", {"a": 20, "b": 22})])
        return Reply(f"The sum is {tool_results[-1]['content']}, computed by the tool.")

    backend.set_replies(script)
    model = ChatMultiplexer(mux=mux, model=MODEL).bind_tools([add])
    graph = StateGraph(MessagesState)
    graph.add_node("agent", lambda s: {"messages": [model.invoke(s["messages"])]})
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    app = graph.compile()
    tokens = [
        chunk.content
        for chunk, meta in app.stream(
            {"messages": [HumanMessage("add 20 and 22")]}, stream_mode="messages"
        )
        if meta["langgraph_node"] == "agent" and chunk.content
    ]
    assert "".join(tokens) == "The sum is 42, computed by the tool."
    assert len(tokens) > 1
    assert all(r.stream for r in backend.requests)
    second = backend.requests[1].json["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "tool"]
    assert json.loads(second[1]["tool_calls"][0]["function"]["arguments"]) == {"a": 20, "b": 22}
