"""``Task(output_json=...)``/``output_pydantic`` through the Multiplexer, with a real Crew.

CrewAI's default converter builds its own OpenAI client from the LLM's attributes; with a
MultiplexerLLM it failed and the crew reported success with ``json_dict=None``. The scripted
model here uses a tool and then answers in prose, so CrewAI must convert the answer: the
conversion request must reach the fake backend through the Multiplexer (with the task's model as
its ``response_format``), and a model that never fits the schema must fail the crew loudly.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from crewai import Agent, Crew, Task
from crewai.tools import tool
from crewai.utilities.converter import Converter, ConverterError
from pydantic import BaseModel

from gonka_mux import Multiplexer
from gonka_mux.integrations.crewai import MultiplexerConverter, MultiplexerLLM
from gonka_mux.testing import FakeBackend, RecordedRequest, Reply, ToolCall

MODEL = "crew-model"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
PARIS = {"name": "Paris", "population": 2_100_000}


class City(BaseModel):
    name: str
    population: int


class Geographer:
    """The fake model: looks the country up with the tool, answers in prose, and answers JSON
    only when a request carries a ``response_format`` (as a real server honouring it would)."""

    def __init__(self, structured: dict | str = PARIS) -> None:
        self.structured = structured
        self.conversions: list[RecordedRequest] = []

    def __call__(self, request: RecordedRequest) -> Reply:
        if "response_format" in request.json:
            self.conversions.append(request)
            body = self.structured
            return Reply(body if isinstance(body, str) else json.dumps(body))
        if not any(m["role"] == "tool" for m in request.messages):
            return Reply(tool_calls=[ToolCall("lookup", {"country": "France"})])
        return Reply("Thought: I know it now.\nFinal Answer: Paris, about 2.1 million people.")


@tool("lookup")
def lookup(country: str) -> str:
    """Look a country's capital up."""
    return f"{country}: capital Paris, population 2.1 million"


def run_crew(
    script: Geographer,
    *,
    kind: str = "output_json",
    converter_cls: type | None = None,
    native_async: bool = False,
) -> tuple[Task, object]:
    with FakeBackend(name="fb", replies=script) as backend:
        mux = Multiplexer()
        try:
            mux.add_endpoint(backend.url, models=[MODEL], name="fb")
            agent = Agent(
                role="Geographer",
                goal="Answer questions about cities",
                backstory="You look facts up before answering.",
                llm=MultiplexerLLM(mux=mux, model=MODEL),
                tools=[lookup],
                max_iter=4,
            )
            task = Task(
                description="What is the capital of France, and how many people live there?",
                expected_output="The city and its population",
                agent=agent,
                converter_cls=converter_cls,
                **{kind: City},
            )
            crew = Crew(agents=[agent], tasks=[task])
            # akickoff: CrewAI's native async path (acall, and the converter's ato_json).
            result = asyncio.run(crew.akickoff()) if native_async else crew.kickoff()
            return task, result
        finally:
            mux.close()


def test_output_json_is_filled_through_the_multiplexer():
    script = Geographer()
    task, result = run_crew(script)
    assert result.json_dict == PARIS
    assert task.output.json_dict == PARIS
    assert task.converter_cls is MultiplexerConverter
    # The conversion was one more request through the Multiplexer, asking for the schema.
    [conversion] = script.conversions
    schema = conversion.json["response_format"]["json_schema"]
    assert schema["name"] == "City"
    assert set(schema["schema"]["required"]) == {"name", "population"}
    assert "Paris, about 2.1 million" in json.dumps(conversion.messages)


def test_output_json_is_filled_on_the_native_async_path_too():
    script = Geographer()
    task, result = run_crew(script, native_async=True)
    assert result.json_dict == PARIS
    assert task.converter_cls is MultiplexerConverter
    assert len(script.conversions) == 1


def test_output_pydantic_is_filled_through_the_multiplexer():
    script = Geographer()
    task, result = run_crew(script, kind="output_pydantic")
    assert result.pydantic == City(**PARIS)
    assert task.output.pydantic == City(**PARIS)
    assert len(script.conversions) == 1


def test_a_model_that_never_fits_the_schema_fails_loudly():
    script = Geographer(structured='{"name": "Paris"}')  # population missing, every time
    with pytest.raises(ConverterError, match="population"):
        run_crew(script)
    assert len(script.conversions) == 3  # CrewAI's max_attempts, then the error


def test_a_json_answer_is_used_without_another_request():
    converter = MultiplexerConverter(
        llm=None, text=f"Final Answer: {json.dumps(PARIS)}", model=City, instructions=""
    )
    assert json.loads(converter.to_json()) == PARIS  # llm=None: no call could have been made


def test_a_task_that_names_its_own_converter_keeps_it():
    class Mine(Converter):
        def to_json(self, current_attempt: int = 1) -> str:
            return json.dumps({"name": "Lyon", "population": 500_000})

    task, result = run_crew(Geographer(), converter_cls=Mine)
    assert task.converter_cls is Mine
    assert result.json_dict == {"name": "Lyon", "population": 500_000}
