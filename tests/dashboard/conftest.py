from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Shared helpers live in tests/ (tests/_usage_data.py); make the repository root importable.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests._usage_data import usage_records  # noqa: E402

from gonka_mux.metering import SqliteUsageStore  # noqa: E402


@pytest.fixture
def usage_db(tmp_path: Path) -> Path:
    """A real usage database holding the hand-checked data set."""
    path = tmp_path / "usage.sqlite3"
    store = SqliteUsageStore(path)
    store.write(usage_records())
    store.close()
    return path
