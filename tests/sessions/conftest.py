"""Session-store fixtures: the same tests run against the memory, disk (SQLite), Redis and
PostgreSQL backends; Redis is a real redis-server started on a free port (tests/_redis.py),
PostgreSQL a real server with a fresh database per test (tests/_postgres.py)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

# The shared redis-server fixture lives in tests/_redis.py; make the repository root importable
# when pytest is started without it on sys.path.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from _session_support import FakeClock, StoreFactory  # noqa: E402
from tests._postgres import postgres_server, postgres_url  # noqa: E402, F401
from tests._redis import redis_url  # noqa: E402, F401

from gonka_mux.sessions import (  # noqa: E402
    DiskSessionStore,
    MemorySessionStore,
    PostgresSessionStore,
    RedisSessionStore,
    SessionStore,
)

BACKENDS = [
    "memory",
    "disk",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]
PERSISTENT = [
    "disk",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def _factory(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """``make_store(clock=None)``: a store of the given kind; every store made by one test
    shares the same file / Redis prefix / database, so a second one is a "reopen" of the first.
    ``clock=None`` means the real clock (Redis and PostgreSQL: the server's)."""
    url = None
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif kind == "postgres":
        url = request.getfixturevalue("postgres_url")
    prefix = f"test:{uuid.uuid4().hex}:"
    path = tmp_path / "sessions.sqlite3"
    made: list[SessionStore] = []

    def make(clock: Callable[[], float] | None = None) -> SessionStore:
        store: SessionStore
        if kind == "memory":
            store = MemorySessionStore(**({"clock": clock} if clock else {}))
        elif kind == "disk":
            store = DiskSessionStore(path, **({"clock": clock} if clock else {}))
        elif kind == "postgres":
            assert url is not None
            store = PostgresSessionStore(url, clock=clock)
        else:
            store = RedisSessionStore(url, prefix=prefix, clock=clock)
        made.append(store)
        return store

    make.kind = kind  # type: ignore[attr-defined]
    make.url = url  # type: ignore[attr-defined]
    make.prefix = prefix  # type: ignore[attr-defined]
    make.path = path  # type: ignore[attr-defined]
    yield make
    for store in made:
        await store.aclose()


@pytest.fixture(params=BACKENDS)
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    async for make in _factory(request.param, request, tmp_path):
        yield make


@pytest.fixture(params=PERSISTENT)
async def make_persistent_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    async for make in _factory(request.param, request, tmp_path):
        yield make
