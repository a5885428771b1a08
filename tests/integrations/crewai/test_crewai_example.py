"""examples/crewai_example.py runs offline end to end (a fresh process, as a user runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "crewai_example.py"
NETGUARD = Path(__file__).resolve().parents[1] / "_netguard.py"  # the socket guard, in the child


@pytest.mark.slow
def test_crewai_example_runs_offline(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CREWAI_STORAGE_DIR": str(tmp_path / "crewai"),
    }
    done = subprocess.run(
        [sys.executable, str(NETGUARD), str(EXAMPLE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "Report: Tea costs 4.50 EUR and cake 6.25 EUR: 10.75 EUR."
    assert [line.split(":")[0] for line in lines[1:]] == ["node-a", "node-b"]
