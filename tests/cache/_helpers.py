"""Shared by the cache tests (imported as tests.cache._helpers)."""

from __future__ import annotations

from gonka_mux.testing import FakeBackend

__all__ = ["MSG", "FakeBackend", "upstream"]

MSG = [{"role": "user", "content": "plan the next tool call"}]


def upstream(fb: FakeBackend, path: str = "") -> int:
    """Requests the fake backend served on its /v1 routes (what the cache should save)."""
    return sum(1 for r in fb.requests if r.path.startswith("/v1/") and r.path.endswith(path))
