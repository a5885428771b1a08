"""TEST-02: a real CrewAI crew through the Multiplexer against scripted fake endpoints, offline.

Real: CrewAI's Agent/Task/Crew with delegation, a real ``@tool``, ``MultiplexerLLM``, the sync
Multiplexer, and two fake OpenAI backends on loopback (one of which dies mid-run). The scripted
model decides from each request it receives (which agent is asking, which tools it offers, which
tool results it carries), so the test also proves what CrewAI sent through the Multiplexer.
"""

from __future__ import annotations

from typing import Any

import pytest
from crewai import Agent, Crew, Process, Task
from crewai.tools import tool

from gonka_mux import Multiplexer
from gonka_mux.integrations.crewai import MultiplexerLLM
from gonka_mux.testing import (
    FakeBackend,
    FakeBackendSpec,
    FakeFleet,
    RecordedRequest,
    Reply,
    ToolCall,
)

MODEL = "crew-model"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class SessionRecorder:
    """A Multiplexer extension that records the gonka_mux options each request carried."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, dict[str, Any] | None]] = []

    async def before(self, ctx: Any) -> None:
        self.seen.append((ctx.options.session_id, ctx.options.metadata))

    async def after(self, ctx: Any) -> None:
        return None


class Script:
    """The fake model: a lead agent that delegates, a calculator agent that uses its tool."""

    def __init__(self) -> None:
        self.tool_results_seen: list[str] = []

    def __call__(self, request: RecordedRequest) -> Reply:
        messages = request.messages
        tools = [t["function"]["name"] for t in request.json.get("tools") or ()]
        results = [m for m in messages if m["role"] == "tool"]
        if results:
            # The tool result must follow the assistant turn that asked for it, with its id.
            calls = [m for m in messages if m["role"] == "assistant" and m.get("tool_calls")]
            assert calls, "a tool result arrived without the assistant tool_calls turn"
            asked = {c["id"] for c in calls[-1]["tool_calls"]}
            assert results[-1]["tool_call_id"] in asked
            self.tool_results_seen.append(results[-1]["content"])
        if "multiply" in tools:  # the calculator agent
            if not results:
                return Reply(tool_calls=[ToolCall("multiply", {"a": 6, "b": 7})])
            return Reply(f"The product of 6 and 7 is {results[-1]['content']}.")
        delegate = [t for t in tools if t.startswith("delegate")]
        assert delegate, f"unexpected request: tools={tools}"
        if not results:
            args = {
                "task": "Multiply 6 by 7 with the multiply tool.",
                "context": "The user asked what 6 times 7 is.",
                "coworker": "Calculator",
            }
            return Reply(tool_calls=[ToolCall(delegate[0], args)])
        return Reply(f"Final report: {results[-1]['content']} Verified by the calculator.")


class DiesAfterFirst:
    """Backend "a": answers its first request, then crashes: later connections are reset."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.backend: FakeBackend | None = None

    def __call__(self, request: RecordedRequest) -> Reply:
        assert self.backend is not None
        self.backend.set_faults(rate_drop_before=1.0)  # from the next request on
        return self.script(request)


@pytest.fixture
def crew_setup():
    script = Script()
    dying = DiesAfterFirst(script)
    with FakeFleet(
        [FakeBackendSpec(name="a", replies=dying), FakeBackendSpec(name="b", replies=script)]
    ) as fleet:
        dying.backend = fleet["a"]
        mux = Multiplexer(strategy="round_robin")
        for fb in fleet.backends:
            mux.add_endpoint(fb.url, models=[MODEL], name=fb.name)
        recorder = SessionRecorder()
        mux.add_extension(recorder)
        runs: list[tuple[int, int]] = []
        yield script, fleet, mux, recorder, runs
        mux.close()


def make_crew(mux: Multiplexer, runs: list[tuple[int, int]], **llm_options: Any) -> Crew:
    @tool("multiply")
    def multiply(a: int, b: int) -> int:
        """Multiply two integers and return the product."""
        runs.append((a, b))
        return a * b

    llm = MultiplexerLLM(mux=mux, model=MODEL, session_id="crew-run-1", **llm_options)
    lead = Agent(
        role="Lead",
        goal="Answer the user's question accurately",
        backstory="You coordinate specialists.",
        llm=llm,
        allow_delegation=True,
        verbose=False,
    )
    calculator = Agent(
        role="Calculator",
        goal="Compute exact arithmetic results",
        backstory="You always use your tools.",
        llm=llm,
        tools=[multiply],
        allow_delegation=False,
        verbose=False,
    )
    task = Task(
        description="What is 6 times 7? Ask the calculator.",
        expected_output="A short report with the number.",
        agent=lead,
    )
    return Crew(agents=[lead, calculator], tasks=[task], process=Process.sequential, verbose=False)


def check_run(result: Any, script: Script, fleet: FakeFleet, mux: Multiplexer, recorder, runs):
    assert result.raw == "Final report: The product of 6 and 7 is 42. Verified by the calculator."
    assert runs == [(6, 7)]  # the real tool ran once, with the model's arguments
    # The endpoints saw both tool results: the tool's output and the delegated agent's answer.
    assert script.tool_results_seen == ["42", "The product of 6 and 7 is 42."]
    a, b = fleet["a"], fleet["b"]
    # "a" served the first call, then crashed mid-run: the mux saw the failure and failed over.
    assert [r.fault for r in a.requests][:2] == [None, "drop_before"]
    assert sum(mux.stats()["endpoints"]["a"]["failures"].values()) >= 1
    # Every request reached the model through the mux with the adapter's session options.
    assert recorder.seen and all(
        s == ("crew-run-1", {"session_mode": "affinity"}) for s in recorder.seen
    )
    # Everything after the crash went to the surviving endpoint, including the retried call.
    assert len(b.requests) == 3
    assert a.requests[1].messages in [r.messages for r in b.requests]
    multiply_schema = next(
        t["function"]
        for r in b.requests
        for t in r.json["tools"]
        if t["function"]["name"] == "multiply"
    )
    assert set(multiply_schema["parameters"]["properties"]) == {"a", "b"}


def test_crew_with_delegation_and_tool_survives_an_endpoint_crash(crew_setup):
    script, fleet, mux, recorder, runs = crew_setup
    result = make_crew(mux, runs).kickoff()
    check_run(result, script, fleet, mux, recorder, runs)


async def test_crew_kickoff_async_streaming(crew_setup):
    script, fleet, mux, recorder, runs = crew_setup
    result = await make_crew(mux, runs, stream=True).kickoff_async()
    check_run(result, script, fleet, mux, recorder, runs)
    assert any(r.stream for r in fleet["b"].requests)
