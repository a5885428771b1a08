"""One conversation turn of a LangGraph agent, run as its own process by test_agent_restart.py.

``python agent_turn.py <backend url> <session store spec> <memory file> <thread id> <message>``

Builds ``langchain.agents.create_agent`` over ``ChatMultiplexer`` (a real Multiplexer in front of
the fake backend the test runs), with ``SessionStoreSaver`` on the given session store and
``BM25Store`` on the given memory file, streams the turn (``stream_mode="messages"``) and prints
JSON lines: ``{"token": ...}`` per streamed model token, then ``{"final": ..., "messages": n}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from langchain.agents import create_agent
from langchain_core.tools import tool
from langgraph.config import get_store

from gonka_mux import Multiplexer
from gonka_mux.integrations.langchain import ChatMultiplexer
from gonka_mux.integrations.langgraph import BM25Store, SessionStoreSaver

MODEL = "agent-model"
TEMPERATURES_C = {"oslo": 12.0, "rome": 24.0}
MEMORY_NS = ("user", "memories")


@tool
def get_weather(city: str) -> str:
    """Current temperature of a city, in degrees Celsius."""
    return f"{TEMPERATURES_C[city.lower()]:g}"


@tool
def to_fahrenheit(celsius: float) -> str:
    """Convert a temperature from Celsius to Fahrenheit."""
    return f"{celsius * 9 / 5 + 32:g}"


@tool
def remember(fact: str) -> str:
    """Save a fact about the user for later conversations."""
    store = get_store()
    key = f"fact-{len(store.search(MEMORY_NS, limit=1000))}"
    store.put(MEMORY_NS, key, {"fact": fact})
    return f"saved as {key}"


@tool
def recall(query: str) -> str:
    """Search the saved facts."""
    hits = get_store().search(MEMORY_NS, query=query, limit=1)
    return hits[0].value["fact"] if hits else "nothing saved"


def open_session_store(spec: str) -> Any:
    """``disk:<sqlite file>`` or ``redis:<url>``: the persistent session-store backends."""
    kind, _, where = spec.partition(":")
    if kind == "disk":
        from gonka_mux.sessions.disk import DiskSessionStore

        return DiskSessionStore(where)
    if kind == "redis":
        from gonka_mux.sessions.redis import RedisSessionStore

        return RedisSessionStore(where, prefix="agent-restart-test:")
    raise SystemExit(f"unknown session store {spec!r}")


def main(url: str, store_spec: str, memory_path: str, thread_id: str, message: str) -> None:
    saver = SessionStoreSaver(open_session_store(store_spec), close_store=True)
    memory = BM25Store(memory_path)
    with Multiplexer() as mux:
        mux.add_endpoint(url, models=[MODEL], name="fake")
        agent = create_agent(
            ChatMultiplexer(mux=mux, model=MODEL),
            tools=[get_weather, to_fahrenheit, remember, recall],
            system_prompt="You are a weather assistant.",
            checkpointer=saver,
            store=memory,
        )
        config = {"configurable": {"thread_id": thread_id}}
        inputs = {"messages": [{"role": "user", "content": message}]}
        for chunk, meta in agent.stream(inputs, config, stream_mode="messages"):
            if meta.get("langgraph_node") == "model" and chunk.content:
                print(json.dumps({"token": chunk.content}), flush=True)
        state = agent.get_state(config)
        messages = state.values["messages"]
        print(json.dumps({"final": messages[-1].content, "messages": len(messages)}), flush=True)
    memory.close()
    saver.close()


if __name__ == "__main__":
    main(*sys.argv[1:6])
