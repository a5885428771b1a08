"""The Gonka examples run offline (each starts its own fake network) and exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("gonka_*.py"))


def test_every_listed_example_exists() -> None:
    names = {path.stem for path in EXAMPLES}
    assert {
        "gonka_basic_usage",
        "gonka_auto_discovery",
        "gonka_manual_registration",
        "gonka_mixed_providers",
        "gonka_epoch_handling",
    } <= names


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.stem)
def test_example_runs_offline_and_exits_0(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.strip()
    assert "Traceback" not in done.stderr
