"""The gonka-mux CLI: the demo runs offline and reports; bad usage exits non-zero."""

from __future__ import annotations

import subprocess
import sys

from gonka_mux.cli import main


def test_demo_runs_offline_and_prints_the_report(capsys):
    code = main(["demo", "--requests", "60", "--concurrency", "8"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "multi-turn conversation" in out
    assert "success 60/60" in out
    for name in ("fast-1", "fast-2", "slow", "flaky", "limited"):
        assert name in out
    assert "p99" in out


def test_no_command_prints_help():
    result = subprocess.run(
        [sys.executable, "-m", "gonka_mux"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "demo" in result.stdout
