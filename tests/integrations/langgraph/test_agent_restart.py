"""TEST-03: a LangGraph agent resumes its thread from the persisted checkpoint after a restart.

Each turn runs in a fresh Python process (``agent_turn.py``): ``langchain.agents.create_agent``
over ``ChatMultiplexer`` and a real Multiplexer, ``SessionStoreSaver`` on a persistent session
store (a SQLite file, or a real redis-server) and ``BM25Store`` on a SQLite file, streaming
with ``stream_mode="messages"``. The model is a scripted fake backend in this process; it
answers from what each request carries, so the second turn can only succeed if the first
turn's history came back from the checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gonka_mux.testing import FakeBackend, RecordedRequest, Reply, ToolCall

AGENT = Path(__file__).with_name("agent_turn.py")
NETGUARD = Path(__file__).parents[1] / "_netguard.py"  # runs the child with the socket guard
QUESTION = "What's the weather in Oslo, in Fahrenheit? Please remember it."
FOLLOW_UP = "What do you remember about Oslo?"


def tool_names(messages: list[dict[str, Any]]) -> dict[str, str]:
    """tool_call_id -> tool name, from the assistant turns."""
    return {
        call["id"]: call["function"]["name"]
        for m in messages
        if m["role"] == "assistant"
        for call in m.get("tool_calls") or ()
    }


class WeatherModel:
    """The scripted LLM. Decides from the current turn's messages; records what it saw."""

    def __init__(self) -> None:
        self.history_at_follow_up: list[dict[str, Any]] | None = None

    def __call__(self, request: RecordedRequest) -> Reply:
        messages = request.messages
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        question = messages[last_user]["content"]
        names = tool_names(messages)
        results = [
            (names[m["tool_call_id"]], m["content"])
            for m in messages[last_user:]
            if m["role"] == "tool"
        ]
        last = results[-1] if results else (None, None)
        if question == QUESTION:
            if not results:
                return Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo"})])
            if last[0] == "get_weather":
                return Reply(tool_calls=[ToolCall("to_fahrenheit", {"celsius": float(last[1])})])
            if last[0] == "to_fahrenheit":
                fact = f"Oslo was {last[1]} F when the user asked."
                return Reply(tool_calls=[ToolCall("remember", {"fact": fact})])
            fahrenheit = dict(results)["to_fahrenheit"]
            return Reply(f"It is {fahrenheit} F in Oslo right now. I saved that.")
        if question == FOLLOW_UP:
            if not results:
                self.history_at_follow_up = messages[:last_user]
                return Reply(tool_calls=[ToolCall("recall", {"query": "Oslo weather"})])
            return Reply(f"You asked about Oslo before. I remember: {last[1]}")
        raise AssertionError(f"unexpected question {question!r}")


def run_turn(url: str, store: str, memory: Path, thread: str, message: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(NETGUARD), str(AGENT), url, store, str(memory), thread, message],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {
        "tokens": [x["token"] for x in lines if "token" in x],
        "final": lines[-1]["final"],
        "messages": lines[-1]["messages"],
    }


@pytest.fixture(params=["disk", pytest.param("redis", marks=pytest.mark.redis)])
def session_store_spec(request, tmp_path) -> str:
    if request.param == "disk":
        return f"disk:{tmp_path / 'sessions.sqlite3'}"
    return "redis:" + request.getfixturevalue("redis_url")


@pytest.mark.slow
def test_agent_resumes_thread_after_process_restart(session_store_spec: str, tmp_path: Path):
    model = WeatherModel()
    memory = tmp_path / "memory.sqlite3"
    thread = f"thread-{tmp_path.name}"
    with FakeBackend(models=["agent-model"], replies=model) as fb:
        first = run_turn(fb.url, session_store_spec, memory, thread, QUESTION)
        first_requests = fb.request_count
        second = run_turn(fb.url, session_store_spec, memory, thread, FOLLOW_UP)
        requests = fb.requests

    # Turn 1: three tool steps (weather, conversion, memory write), streamed token by token.
    assert first["final"] == "It is 53.6 F in Oslo right now. I saved that."
    assert "".join(first["tokens"]) == first["final"] and len(first["tokens"]) > 1
    assert first_requests == 4 and first["messages"] == 8
    assert all(r.stream for r in requests)

    # Turn 2, in a new process: the history came back from the checkpoint, and the fact the
    # first process saved in the BM25 store was found by the second.
    assert second["final"] == (
        "You asked about Oslo before. I remember: Oslo was 53.6 F when the user asked."
    )
    seen = model.history_at_follow_up
    assert seen is not None
    assert [m["role"] for m in seen] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert seen[1]["content"] == QUESTION and seen[-1]["content"] == first["final"]
    assert second["messages"] == 12 and len(requests) == 6
