"""Chat sessions: stored history for ``create(..., session_id=...)``, trimmed to the model's
context window, expired after inactivity, on an in-memory, on-disk (default), Redis or
PostgreSQL store.

The store (:class:`SessionStore`) is also an ordered key-value space per session, which the
LangGraph checkpointer builds on.
"""

from __future__ import annotations

from gonka_mux.sessions.base import (
    InvalidSessionData,
    SessionError,
    SessionExists,
    SessionStore,
)
from gonka_mux.sessions.disk import DiskSessionStore
from gonka_mux.sessions.history import estimate_tokens, trim_history
from gonka_mux.sessions.manager import (
    PreparedTurn,
    SessionManager,
    SessionNotFound,
    session_ttl_from_env,
)
from gonka_mux.sessions.memory import MemorySessionStore
from gonka_mux.sessions.postgres import PostgresSessionStore  # imports psycopg only when used
from gonka_mux.sessions.redis import RedisSessionStore  # imports redis only when first used

__all__ = [
    "DiskSessionStore",
    "InvalidSessionData",
    "MemorySessionStore",
    "PostgresSessionStore",
    "PreparedTurn",
    "RedisSessionStore",
    "SessionError",
    "SessionExists",
    "SessionManager",
    "SessionNotFound",
    "SessionStore",
    "estimate_tokens",
    "session_ttl_from_env",
    "trim_history",
]
