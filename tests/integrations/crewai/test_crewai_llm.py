"""MultiplexerLLM unit behaviour: what it sends, what it returns to CrewAI, sync and async."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.llm_events import LLMStreamChunkEvent
from crewai.utilities.exceptions.context_window_exceeding_exception import (
    LLMContextLengthExceededError,
)
from pydantic import BaseModel

from gonka_mux import AsyncMultiplexer, Multiplexer
from gonka_mux.integrations.crewai import MultiplexerLLM
from gonka_mux.testing import FakeBackend, Reply, ToolCall

MODEL = "m"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
    },
}


class Weather(BaseModel):
    city: str
    temp: float


@pytest.fixture
def backend():
    with FakeBackend(name="fb") as fb:
        yield fb


@pytest.fixture
def mux(backend: FakeBackend):
    m = Multiplexer()
    m.add_endpoint(backend.url, models=[MODEL], name="fb")
    yield m
    m.close()


def test_text_reply_stop_words_applied_locally_and_not_sent(backend, mux):
    backend.set_replies([Reply("Thought: done\nObservation: leaked"), Reply("a STOP b")])
    llm = MultiplexerLLM(mux=mux, model=MODEL, stop=["\nObservation:"], temperature=0.2)
    assert llm.call("hello") == "Thought: done"
    sent = backend.requests[-1].json
    assert "stop" not in sent and sent["temperature"] == 0.2
    assert sent["messages"] == [{"role": "user", "content": "hello"}]
    eager = MultiplexerLLM(mux=mux, model=MODEL, stop=["STOP"], send_stop=True)
    assert eager.call("x") == "a"
    assert backend.requests[-1].json["stop"] == ["STOP"]


def test_native_tool_calls_are_returned_not_run(backend, mux):
    backend.set_replies([Reply(tool_calls=[ToolCall("lookup", {"word": "mux"})])])
    llm = MultiplexerLLM(mux=mux, model=MODEL)
    assert llm.supports_function_calling()
    calls = llm.call([{"role": "user", "content": "define mux"}], tools=[TOOL])
    assert isinstance(calls, list) and len(calls) == 1
    assert calls[0].function.name == "lookup"
    assert json.loads(calls[0].function.arguments) == {"word": "mux"}
    sent = backend.requests[-1].json
    assert sent["tools"] == [TOOL] and sent["tool_choice"] == "auto"


def test_flat_tool_schemas_are_converted(backend, mux):
    backend.set_replies([Reply("ok")])
    flat = {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": TOOL["function"]["parameters"],
    }
    MultiplexerLLM(mux=mux, model=MODEL).call("x", tools=[flat])
    assert backend.requests[-1].json["tools"] == [TOOL]


def test_legacy_available_functions_runs_the_tool(backend, mux):
    backend.set_replies([Reply(tool_calls=[ToolCall("lookup", {"word": "mux"})])])
    ran: list[str] = []

    def lookup(word: str) -> str:
        ran.append(word)
        return f"{word}: a multiplexer"

    out = MultiplexerLLM(mux=mux, model=MODEL).call(
        "define mux", tools=[TOOL], available_functions={"lookup": lookup}
    )
    assert out == "mux: a multiplexer" and ran == ["mux"]


def test_response_model_is_sent_as_json_schema_and_validated(backend, mux):
    backend.set_replies([Reply('{"city": "Oslo", "temp": 3.5}'), Reply("not json at all")])
    llm = MultiplexerLLM(mux=mux, model=MODEL)
    result = llm.call("weather?", response_model=Weather)
    assert result == Weather(city="Oslo", temp=3.5)
    fmt = backend.requests[-1].json["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Weather"
    assert set(fmt["json_schema"]["schema"]["properties"]) == {"city", "temp"}
    with pytest.raises(ValueError, match="Weather"):
        llm.call("weather?", response_model=Weather)


def test_stream_mode_assembles_tool_calls_and_emits_chunk_events(backend, mux):
    backend.set_replies(
        [Reply(tool_calls=[ToolCall("lookup", {"word": "a"}), ToolCall("lookup", {"word": "b"})])]
    )
    events: list[LLMStreamChunkEvent] = []
    done = threading.Event()
    with crewai_event_bus.scoped_handlers():

        @crewai_event_bus.on(LLMStreamChunkEvent)
        def on_chunk(source: Any, event: LLMStreamChunkEvent) -> None:
            events.append(event)
            done.set()

        calls = MultiplexerLLM(mux=mux, model=MODEL, stream=True).call("x", tools=[TOOL])
        done.wait(5)
    assert backend.requests[-1].json["stream"] is True
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"word": "a"}, {"word": "b"}]
    assert all(c["id"] and c["function"]["name"] == "lookup" for c in calls)
    assert events and any(e.tool_call is not None for e in events)


def test_usage_is_tracked(backend, mux):
    backend.set_replies(
        [Reply("one", usage={"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16})]
    )
    llm = MultiplexerLLM(mux=mux, model=MODEL)
    llm.call("x")
    summary = llm.get_token_usage_summary()
    assert (summary.prompt_tokens, summary.completion_tokens, summary.successful_requests) == (
        11,
        5,
        1,
    )


def test_context_length_error_becomes_crewai_exception(backend, mux):
    error = {
        "message": "This model's maximum context length is 8 tokens",
        "code": "context_length_exceeded",
    }
    backend.set_replies([Reply(status=400, error=error)])
    with pytest.raises(LLMContextLengthExceededError):
        MultiplexerLLM(mux=mux, model=MODEL).call("x")


def test_session_options_reach_the_multiplexer(backend, mux):
    seen: list[Any] = []

    class Recorder:
        async def before(self, ctx: Any) -> None:
            seen.append((ctx.options.session_id, ctx.options.metadata, ctx.options.tier))

        async def after(self, ctx: Any) -> None:
            return None

    mux.add_extension(Recorder())
    backend.set_replies([Reply("a"), Reply("b")])
    MultiplexerLLM(mux=mux, model=MODEL, session_id="s-1", tier="gold").call("x")
    MultiplexerLLM(mux=mux, model=MODEL, session_id="s-2", session_mode="history").call("x")
    assert seen == [
        ("s-1", {"session_mode": "affinity"}, "gold"),
        ("s-2", {"session_mode": "history"}, None),
    ]


async def test_acall_on_sync_multiplexer_does_not_block_the_loop(backend, mux):
    backend.set_replies([Reply("slow answer", delay=0.3)])
    llm = MultiplexerLLM(mux=mux, model=MODEL)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        assert await llm.acall("x") == "slow answer"
    finally:
        task.cancel()
    assert ticks >= 5  # the caller's loop kept running while the request was in flight


async def test_async_multiplexer_serves_acall_and_refuses_call(backend):
    amux = AsyncMultiplexer()
    amux.add_endpoint(backend.url, models=[MODEL], name="fb")
    backend.set_replies([Reply("streamed async text")])
    llm = MultiplexerLLM(mux=amux, model=MODEL, stream=True)
    try:
        assert await llm.acall("x") == "streamed async text"
        with pytest.raises(TypeError, match=r"Pass a gonka_mux\.Multiplexer"):
            llm.call("x")
    finally:
        await amux.aclose()


def test_context_window_and_token_estimate(mux):
    llm = MultiplexerLLM(mux=mux, model=MODEL, context_window=10_000)
    assert llm.get_context_window_size() == 8_500
    assert llm.get_input_tokens_count("abcdefgh") == 2
    with pytest.raises(ValueError, match="context_window"):
        MultiplexerLLM(mux=mux, model=MODEL, context_window=0)


def test_client_options_are_refused_and_max_retries_is_not_sent(backend, mux):
    """Constructor kwargs that configure a client never reach the request body."""
    with pytest.raises(TypeError, match="api_key"):
        MultiplexerLLM(mux=mux, model=MODEL, api_key="sk-not-for-the-body")
    llm = MultiplexerLLM(mux=mux, model=MODEL, max_retries=1, top_k=5)
    llm.call("hi")
    body = backend.requests[-1].json
    assert "max_retries" not in body and body["top_k"] == 5
