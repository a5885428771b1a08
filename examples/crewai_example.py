"""A CrewAI crew whose agents reach their model through a gonka_mux Multiplexer.

Runs offline: it starts two fake OpenAI-compatible endpoints (``gonka_mux.testing``) playing a
scripted model, one of which rate-limits a third of its requests, and routes the crew over both.
Point ``add_endpoint`` at real endpoints (Gonka participants, vLLM nodes, providers) instead and
drop the fake fleet to use it for real.

    pip install "gonka-mux[crewai]"       # CrewAI pins openai<3
    python examples/crewai_example.py
"""

from __future__ import annotations

import os
import tempfile

# CrewAI phones home (telemetry, tracing, a version check) unless told not to.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_DISABLE_TRACKING", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_DISABLE_VERSION_CHECK", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("CREWAI_TESTING", "true")  # no first-run "enable tracing?" prompt
os.environ.setdefault("CREWAI_STORAGE_DIR", tempfile.mkdtemp(prefix="crewai-example-"))

from crewai import Agent, Crew, Process, Task
from crewai.tools import tool

from gonka_mux import Multiplexer
from gonka_mux.integrations.crewai import MultiplexerLLM
from gonka_mux.testing import FakeBackendSpec, FakeFleet, Faults, RecordedRequest, Reply, ToolCall

MODEL = "kimi-k2.5"
PRICES = {"tea": 4.5, "coffee": 3.0, "cake": 6.25}


@tool("price_lookup")
def price_lookup(item: str) -> str:
    """Return the price of one menu item in euros."""
    return f"{PRICES.get(item.lower(), 0.0):.2f}"


def scripted_model(request: RecordedRequest) -> Reply:
    """Plays the LLM: the analyst looks prices up, the lead delegates and reports."""
    tools = [t["function"]["name"] for t in request.json.get("tools") or ()]
    results = [m["content"] for m in request.messages if m["role"] == "tool"]
    if "price_lookup" in tools:  # the analyst
        if len(results) < 2:
            item = ["tea", "cake"][len(results)]
            return Reply(tool_calls=[ToolCall("price_lookup", {"item": item})])
        total = sum(float(r) for r in results)
        return Reply(f"Tea costs {results[0]} EUR and cake {results[1]} EUR: {total:.2f} EUR.")
    delegate = next(t for t in tools if t.startswith("delegate"))
    if not results:
        args = {
            "task": "Price a tea and a cake.",
            "context": "Use price_lookup.",
            "coworker": "Analyst",
        }
        return Reply(tool_calls=[ToolCall(delegate, args)])
    return Reply(f"Report: {results[-1]}")


def main() -> None:
    fleet = FakeFleet(
        [
            FakeBackendSpec(name="node-a", replies=scripted_model, seed=1),
            FakeBackendSpec(
                name="node-b",
                replies=scripted_model,
                faults=Faults(rate_429=0.33, retry_after=0.05),
                seed=2,
            ),
        ]
    )
    with fleet, Multiplexer() as mux:
        for backend in fleet.backends:
            mux.add_endpoint(backend.url, models=[MODEL], name=backend.name)
        llm = MultiplexerLLM(mux=mux, model=MODEL, session_id="cafe-report", temperature=0.2)
        lead = Agent(
            role="Lead",
            goal="Write short, correct reports",
            backstory="You delegate the arithmetic.",
            llm=llm,
            allow_delegation=True,
        )
        analyst = Agent(
            role="Analyst",
            goal="Look up prices precisely",
            backstory="You always check the price list.",
            llm=llm,
            tools=[price_lookup],
        )
        task = Task(
            description="How much do a tea and a cake cost together?",
            expected_output="One sentence with the total.",
            agent=lead,
        )
        result = Crew(agents=[lead, analyst], tasks=[task], process=Process.sequential).kickoff()
        print(result.raw)
        for name, ep in mux.stats()["endpoints"].items():
            print(f"{name}: {ep['successes']} ok, failures {ep['failures'] or '{}'}")


if __name__ == "__main__":
    main()
