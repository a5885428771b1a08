"""examples/langgraph_example.py runs offline end to end (a fresh process, as a user runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "langgraph_example.py"
NETGUARD = Path(__file__).resolve().parents[1] / "_netguard.py"  # the socket guard, in the child


@pytest.mark.slow
def test_langgraph_example_runs_offline(tmp_path):
    done = subprocess.run(
        [sys.executable, str(NETGUARD), str(EXAMPLE)],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[:4] == [
        "> Remember the wifi password is tea-for-two",
        "< Noted.",
        "> What is the wifi password?",
        "< From my notes: the wifi password is tea-for-two (1 earlier message(s) in this thread)",
    ]
    assert [line.split(":")[0] for line in lines[4:]] == ["node-a", "node-b"]
