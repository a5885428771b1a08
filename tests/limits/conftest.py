from __future__ import annotations

import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

# The shared redis-server fixture lives in tests/_redis.py; make the repository root importable
# when pytest is started without it on sys.path.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests._redis import redis_url  # noqa: E402, F401
from tests.limits._fake_clock import FakeClock  # noqa: E402

from gonka_mux.limits import (  # noqa: E402
    LimitBackend,
    MemoryLimitBackend,
    RedisLimitBackend,
    SqliteLimitBackend,
)

BACKENDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
async def make_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[..., LimitBackend]]:
    """``make_backend(clock=None)``: a fresh backend of the parametrized kind, closed afterwards.

    ``clock=None`` means the backend's real clock (Redis: the server's TIME).
    """
    kind = request.param
    made: list[LimitBackend] = []
    url = request.getfixturevalue("redis_url") if kind == "redis" else None
    prefix = f"test:{uuid.uuid4().hex}:"

    def make(clock: Callable[[], float] | None = None) -> LimitBackend:
        backend: LimitBackend
        if kind == "memory":
            backend = MemoryLimitBackend(clock=clock or time.monotonic)
        elif kind == "sqlite":
            backend = SqliteLimitBackend(tmp_path / "limits.sqlite3", clock=clock or time.time)
        else:
            backend = RedisLimitBackend(url, prefix=prefix, clock=clock)
        made.append(backend)
        return backend

    make.kind = kind  # type: ignore[attr-defined]
    make.url = url  # type: ignore[attr-defined]
    make.prefix = prefix  # type: ignore[attr-defined]
    make.path = tmp_path / "limits.sqlite3"  # type: ignore[attr-defined]
    yield make
    for backend in made:
        await backend.aclose()
