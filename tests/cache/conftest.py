"""Response-cache tests: real fake backends on loopback (upstream requests are counted there),
real diskcache directories in tmp_path and, for the ``redis`` marker, a real redis-server."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests._redis import redis_url  # noqa: E402, F401
from tests.cache._helpers import FakeBackend  # noqa: E402

STORES = ["memory", "disk", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(name="up") as fb:
        yield fb


@pytest.fixture(params=STORES)
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """``enable_cache`` arguments for each store kind (Redis: a fresh key prefix per test)."""
    kind = request.param
    if kind == "memory":
        return {"store": "memory"}
    if kind == "disk":
        return {"store": "disk", "path": tmp_path / "cache"}
    from gonka_mux.cache import RedisCacheStore

    url = request.getfixturevalue("redis_url")
    return {"store": RedisCacheStore(url, prefix=f"test:{uuid.uuid4().hex}:")}
