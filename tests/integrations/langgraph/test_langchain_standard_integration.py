"""LangChain's own standard *integration* tests (``langchain-tests``) for ChatMultiplexer.

The suite drives a real model: here ``ChatMultiplexer`` -> ``Multiplexer`` -> a real loopback
``FakeBackend`` whose replies come from :class:`ScriptedModel`, a tiny rule-based "model" that
answers the way a tool-calling, JSON-capable OpenAI-compatible server does: it calls a tool when
tools are offered (the forced one, or the one the question names), takes its arguments from the
question (quoted strings, numbers), answers a ``response_format`` with a JSON object built from
its schema, and answers in text once the tool results are in. What the fake cannot honestly do
(images, PDFs, audio, Anthropic-format inputs) is turned off with the suite's own
``supports_*`` properties, which the suite uses to deselect those tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from gonka_mux import Multiplexer
from gonka_mux.integrations.langchain import ChatMultiplexer
from gonka_mux.testing import FakeBackend, RecordedRequest, Reply, ToolCall

MODEL = "fake-model"
OTHER_MODEL = "fake-model-small"  # served too: the suite overrides the model per call
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return ""


def _from_schema(schema: dict[str, Any], question: str, defs: dict[str, Any]) -> Any:
    """A value fitting ``schema``, taken from the question where it says one."""
    if "$ref" in schema:
        return _from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], question, defs)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return _from_schema(options[0], question, defs)
    kind = schema.get("type", "object")
    if kind == "object":
        props = schema.get("properties", {})
        numbers = [float(n) for n in _NUMBER.findall(question)]
        quoted = [a or b for a, b in _QUOTED.findall(question)]
        out: dict[str, Any] = {}
        for name, prop in props.items():
            prop_kind = prop.get("type")
            if prop_kind in ("integer", "number") and numbers:
                value = numbers.pop(0)
                out[name] = int(value) if prop_kind == "integer" else value
            elif prop_kind == "string" and quoted:
                out[name] = quoted.pop(0)
            else:
                out[name] = _from_schema(prop, question, defs)
        return out
    if kind == "array":
        return [_from_schema(schema.get("items", {}), question, defs)]
    return {"string": "why did the cat sit on the keyboard", "integer": 1, "number": 1.5}.get(
        kind, True
    )


class ScriptedModel:
    """Answers one chat completion request as a small, obedient model would."""

    def __call__(self, request: RecordedRequest) -> Reply:
        body = request.json
        messages = body["messages"]
        last = messages[-1]
        question = next(
            (_text(m.get("content")) for m in reversed(messages) if m["role"] == "user"), ""
        )
        tools = [t["function"] for t in body.get("tools") or ()]
        choice = body.get("tool_choice")
        if tools and choice != "none" and last["role"] != "tool":
            return Reply(tool_calls=[self._call(tools, choice, question)])
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            schema = response_format["json_schema"]["schema"]
            return Reply(json.dumps(_from_schema(schema, question, schema.get("$defs", {}))))
        if response_format.get("type") == "json_object":
            return Reply(json.dumps({"setup": "Why the cat?", "punchline": "To keep an eye."}))
        if last["role"] == "tool":
            return Reply(f"The tool says: {_text(last.get('content'))}.")
        return Reply("Hello! I am a scripted model.")

    @staticmethod
    def _call(tools: list[dict[str, Any]], choice: Any, question: str) -> ToolCall:
        if isinstance(choice, dict):  # {"type": "function", "function": {"name": ...}}
            tool = next(t for t in tools if t["name"] == choice["function"]["name"])
        else:
            named = [t for t in tools if t["name"] in question]
            related = [t for t in tools if any(w in question.lower() for w in t["name"].split("_"))]
            tool = (named or related or tools)[0]
        parameters = tool.get("parameters") or {"type": "object", "properties": {}}
        args = _from_schema(parameters, question, parameters.get("$defs", {}))
        return ToolCall(tool["name"], args)


_STATE: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _served() -> Iterator[None]:
    models = [MODEL, OTHER_MODEL]
    with FakeBackend(name="scripted", models=models, replies=ScriptedModel()) as backend:
        mux = Multiplexer()
        mux.add_endpoint(backend.url, models=models, name="scripted")
        _STATE.update(backend=backend, mux=mux)
        try:
            yield
        finally:
            mux.close()
            _STATE.clear()


class TestChatMultiplexerIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatMultiplexer]:
        return ChatMultiplexer

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = super().standard_chat_model_params
        params.pop("api_key", None)  # keys belong to the Multiplexer's endpoints
        return params

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"mux": _STATE["mux"], "model": MODEL, "temperature": 0}

    @property
    def model_override_value(self) -> str:
        return OTHER_MODEL

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    # The fake reads text only: no images, PDFs, audio or Anthropic content blocks.
    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestChatMultiplexerIntegrationJsonSchema(TestChatMultiplexerIntegration):
    """The suite again with ``with_structured_output(method="json_schema")``: the schema goes
    as a ``response_format`` instead of a forced tool call."""

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        return {"method": "json_schema"}


def test_the_suite_went_through_the_multiplexer_to_the_fake() -> None:
    """The suite above really talked to the scripted backend: tools, schemas, streams, models.

    Runs after the class (pytest keeps file order); on its own it drives one request itself.
    """
    backend: FakeBackend = _STATE["backend"]
    ChatMultiplexer(mux=_STATE["mux"], model=MODEL).invoke("hi")
    sent = [r.json for r in backend.requests if r.path == "/v1/chat/completions"]
    assert sent
    if len(sent) > 1:  # the whole module ran
        assert any(body.get("tools") for body in sent)
        assert any(body.get("stream") for body in sent)
        formats = {(body.get("response_format") or {}).get("type") for body in sent}
        assert {"json_schema", "json_object"} <= formats
        assert {body["model"] for body in sent} == {MODEL, OTHER_MODEL}
