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

from typing import TYPE_CHECKING

from gonka_mux._exports import lazy_exports

if TYPE_CHECKING:
    from .crewai import MultiplexerLLM
    from .langchain import ChatMultiplexer
    from .langgraph import BM25Store, SessionStoreSaver

_EXPORTS = {
    "ChatMultiplexer": ".langchain",
    "SessionStoreSaver": ".langgraph",
    "BM25Store": ".langgraph",
    "MultiplexerLLM": ".crewai",
}

__all__ = ["BM25Store", "ChatMultiplexer", "MultiplexerLLM", "SessionStoreSaver"]

__getattr__, __dir__ = lazy_exports(
    globals(),
    _EXPORTS,
    extras={".langchain": "langchain", ".langgraph": "langchain", ".crewai": "crewai"},
)
