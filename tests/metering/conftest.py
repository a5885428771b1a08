from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Shared helpers live in tests/ (tests/_usage_data.py); make the repository root importable.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from gonka_mux.metering import MemoryUsageStore, SqliteUsageStore, UsageStore  # noqa: E402


@pytest.fixture(params=["memory", "sqlite"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], UsageStore]]:
    """``make_store()``: a store of the parametrized kind; SQLite ones share one file, so a second
    call reopens what the first wrote (memory ones share one instance)."""
    made: list[UsageStore] = []
    memory = MemoryUsageStore()

    def make() -> UsageStore:
        store: UsageStore = (
            memory if request.param == "memory" else SqliteUsageStore(tmp_path / "usage.sqlite3")
        )
        made.append(store)
        return store

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for store in made:
        store.close()
