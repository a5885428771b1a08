"""A LangGraph agent (examples/langgraph_example.py: two turns, tool calls, streamed) re-run on
fresh agent state through one diskcache response cache makes no upstream request at all."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langgraph")

from gonka_mux import Multiplexer
from gonka_mux.integrations.langchain import ChatMultiplexer
from gonka_mux.testing import FakeBackendSpec, FakeFleet

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "langgraph_example.py"


def load_example(monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location("langgraph_example_cached", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    # the example's model asked for repeatable answers: what makes its requests cacheable
    monkeypatch.setattr(
        module, "ChatMultiplexer", lambda **kw: ChatMultiplexer(**kw, temperature=0)
    )
    return module


def test_agent_rerun_makes_no_upstream_request(tmp_path, monkeypatch, capsys):
    example = load_example(monkeypatch)
    specs = [
        FakeBackendSpec(name="node-a", replies=example.scripted_model, seed=1),
        FakeBackendSpec(name="node-b", replies=example.scripted_model, seed=2),
    ]
    made, answers = [], []
    with FakeFleet(specs) as fleet:
        for run in (1, 2):
            before = sum(b.request_count for b in fleet.backends)
            with Multiplexer() as mux:
                for backend in fleet.backends:
                    mux.add_endpoint(backend.url, models=[example.MODEL], name=backend.name)
                mux.enable_cache(path=tmp_path / "cache")
                graph, saver, store = example.build_graph(mux, tmp_path / f"agent-{run}")
                example.turn(graph, "Remember the wifi password is tea-for-two", "kitchen")
                example.turn(graph, "What is the wifi password?", "kitchen")
                saver.close()
                store.close()
            made.append(sum(b.request_count for b in fleet.backends) - before)
            answers.append(capsys.readouterr().out)
    assert made[0] >= 4 and made[1] == 0
    assert "tea-for-two" in answers[1].split("What is the wifi password?")[1]
    assert answers[1] == answers[0]
