"""PostgreSQL backends, against a real server started by the session (tests/_postgres.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The shared fixtures live in tests/_postgres.py and tests/_redis.py; make the repository root
# importable for them.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests._postgres import postgres_server, postgres_url  # noqa: F401
from tests._redis import redis_url  # noqa: F401

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test in this folder needs the server (the hook sees the whole session's items).
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.postgres)
