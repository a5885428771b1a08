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
    # It teaches: one line per endpoint on why it got its traffic, Gonka's terms in plain
    # words where they are first used, and where to go next.
    for why in ("- fast-1: fast", "- slow: slow", "- flaky: failing", "- limited: rate-limited"):
        assert why in out
    for term in ("TA (Transfer Agent)", "epoch:", 'phase "Inference"', "switch block"):
        assert term in out
    assert out.index("TA (Transfer Agent)") < out.index("     TA gonka1")
    assert out.rstrip().endswith("Next: docs/quickstart.md (your own endpoints, in five minutes).")


def test_no_command_prints_help():
    result = subprocess.run(
        [sys.executable, "-m", "gonka_mux"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "demo" in result.stdout
