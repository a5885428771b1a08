"""LangGraph tests: the shared redis-server fixture (tests/_redis.py) for the Redis backends."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests._redis import redis_url  # noqa: E402, F401
