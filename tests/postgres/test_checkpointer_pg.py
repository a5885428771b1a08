"""SessionStoreSaver on PostgreSQL: LangGraph's conformance suite and the real-graph tests of
tests/integrations/langgraph, run here with a ``make_store`` that hands out PostgreSQL stores
(each on a fresh database), plus ``from_conn_string`` with a ``postgresql://`` URL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from tests._postgres import PostgresServer

# The shared tests, collected here too: their ``make_store`` fixture resolves to the one below.
from tests.integrations.langgraph.test_checkpointer import (  # noqa: F401
    saver_for,
    test_async_graph_and_threads_are_isolated,
    test_conformance_suite,
    test_graph_state_survives_a_new_saver_on_the_same_store,
    test_sessions_are_namespaced_away_from_mux_sessions,
)

from gonka_mux.integrations.langgraph import SessionStoreSaver
from gonka_mux.sessions import PostgresSessionStore


@pytest.fixture
def make_store(postgres_server: PostgresServer) -> Iterator[Any]:
    """``make_store()``: a fresh, empty PostgreSQL session store (its own database)."""
    made: list[PostgresSessionStore] = []

    def make() -> PostgresSessionStore:
        made.append(PostgresSessionStore(postgres_server.fresh_database()))
        return made[-1]

    make.kind = "postgres"  # type: ignore[attr-defined]
    yield make
    for store in made:
        asyncio.run(store.aclose())


def test_from_conn_string_takes_a_postgres_url(postgres_url: str) -> None:
    config = {"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}
    with SessionStoreSaver.from_conn_string(postgres_url) as saver:
        assert isinstance(saver.store, PostgresSessionStore)
        saver.put(config, empty_checkpoint(), {"source": "input", "step": 0}, {})
        assert saver.get_tuple(config) is not None
    with SessionStoreSaver.from_conn_string(postgres_url) as again:  # persisted in the database
        assert again.get_tuple(config) is not None
