"""Thin adapters for agent frameworks (no business logic; each needs its framework installed).

* ``gonka_mux.integrations.langchain.ChatMultiplexer``: a LangChain ``BaseChatModel``
  (extra ``langchain``);
* ``gonka_mux.integrations.langgraph.SessionStoreSaver`` / ``BM25Store``: a LangGraph
  checkpointer over gonka_mux's session stores and a ``BaseStore`` over its BM25 memory store
  (extra ``langchain``);
* ``gonka_mux.integrations.crewai.MultiplexerLLM``: a CrewAI ``BaseLLM`` (extra ``crewai``).

Nothing is imported here: the names below load their framework on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ChatMultiplexer": "gonka_mux.integrations.langchain",
    "SessionStoreSaver": "gonka_mux.integrations.langgraph",
    "BM25Store": "gonka_mux.integrations.langgraph",
    "MultiplexerLLM": "gonka_mux.integrations.crewai",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gonka_mux.integrations' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
