"""``gonka-mux usage``: JSON, CSV, tables, tiering, HTML and errors, on a real usage database."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gonka_mux.dashboard import cli


def usage(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command in a subprocess (``python -m gonka_mux.dashboard``)."""
    return subprocess.run(
        [sys.executable, "-m", "gonka_mux.dashboard", "usage", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_json_output(usage_db: Path) -> None:
    result = usage("--db", str(usage_db), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["totals"]["total_tokens"] == 6575
    assert data["totals"]["requests"] == 8
    assert data["totals"]["latency_p50"] == pytest.approx(0.95)
    assert data["totals"]["cost"] == pytest.approx(0.00995)
    models = {row["group"]: row["total_tokens"] for row in data["breakdowns"]["model"]}
    assert models == {"strong-k2": 5075, "cheap-8b": 1500}
    sessions = [(row["group"], row["total_tokens"]) for row in data["breakdowns"]["session"]]
    assert sessions == [("s2", 3300), ("s1", 2250), ("s3", 950), ("(none)", 75)]


def test_csv_by_session(usage_db: Path) -> None:
    result = usage("--db", str(usage_db), "--by", "session", "--csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["by"], r["group"], r["total_tokens"]) for r in rows] == [
        ("total", "", "6575"),
        ("session", "s2", "3300"),
        ("session", "s1", "2250"),
        ("session", "s3", "950"),
        ("session", "(none)", "75"),
    ]
    s1 = rows[2]
    assert (s1["requests"], s1["prompt_tokens"], s1["completion_tokens"]) == ("3", "1500", "750")
    assert float(s1["latency_p50"]) == pytest.approx(0.6)
    assert rows[3]["ttft_p50"] == ""  # s3 has no streaming request: empty, not "None"


def test_filters_and_since(usage_db: Path) -> None:
    result = usage("--db", str(usage_db), "--json", "--by", "endpoint", "--key", "alice",
                   "--since", "2026-01-01T01:00:00+00:00")  # fmt: skip
    data = json.loads(result.stdout)
    # alice after 01:00: req-5 (node-a, 450 tokens) and req-7 (node-b, 600 tokens)
    rows = {r["group"]: r["total_tokens"] for r in data["breakdowns"]["endpoint"]}
    assert rows == {"node-b": 600, "node-a": 450}
    recent = json.loads(usage("--db", str(usage_db), "--json", "--since", "24h").stdout)
    assert recent["totals"]["requests"] == 0  # the data set is from January 2026


def test_rich_tables(usage_db: Path) -> None:
    result = usage("--db", str(usage_db))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "By model" in out and "By session" in out
    for text in ("6,575", "$0.009950", "0.950 s", "3.860 s", "strong-k2", "s2", "3,300"):
        assert text in out
    assert "─" in out or "━" in out  # drawn by rich


def test_plain_tables_without_rich(usage_db: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)  # as if the extra were not installed
    out = io.StringIO()
    args = cli.build_parser().parse_args(["usage", "--db", str(usage_db), "--by", "model"])
    assert cli.run_usage(args, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "Totals"
    assert any(line.startswith("strong-k2") and "5,075" in line for line in lines)
    assert "─" not in out.getvalue()


def test_tiering(usage_db: Path) -> None:
    data = json.loads(usage("--db", str(usage_db), "--tiering", "--json").stdout)
    assert data["strong_tier"] == "strong"
    # at the strong model's own prices (1.0 / 4.0 per 1M): see tests/metering tiering tests
    assert data["saved"] == pytest.approx(0.0027)
    assert data["strong_pricing"] == "fitted"
    assert {r["tier"]: r["requests"] for r in data["rows"]} == {
        "cheap": 4,
        "strong": 3,
        "(none)": 1,
    }
    table = usage("--db", str(usage_db), "--tiering").stdout
    assert "$0.003000" in table and "Estimated saving against all-strong: $0.002700" in table
    assert "(21.3%)" in table
    rows = list(
        csv.DictReader(io.StringIO(usage("--db", str(usage_db), "--tiering", "--csv").stdout))
    )
    assert [r["tier"] for r in rows] == ["(none)", "cheap", "strong"]
    assert float(rows[1]["saved"]) == pytest.approx(0.0027)


def test_html_option_writes_the_report(usage_db: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    result = usage("--db", str(usage_db), "--html", str(target), "--bucket", "1h")
    assert result.returncode == 0, result.stderr
    assert f"wrote {target} (8 requests)" in result.stdout
    assert '"total_tokens":6575' in target.read_text()


def test_default_db_from_the_state_dir(usage_db: Path) -> None:
    import os

    env = {**os.environ, "GONKA_MUX_STATE_DIR": str(usage_db.parent)}
    data = json.loads(usage("--json", env=env).stdout)
    assert data["totals"]["requests"] == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last tuesday"], "invalid time 'last tuesday'"),
        (["--db", "/nonexistent/usage.sqlite3"], "no usage database at"),
    ],
)
def test_errors_are_clear(usage_db: Path, args: list[str], message: str) -> None:
    full = ["--db", str(usage_db), *args] if "--db" not in args else args
    result = usage(*full)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_register_into_another_parser(usage_db: Path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="gonka-mux")
    subparsers = parser.add_subparsers(dest="command")
    cli.register(subparsers)
    args = parser.parse_args(["usage", "--db", str(usage_db), "--by", "key", "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["group"] for r in data["breakdowns"]["key"]] == ["bob", "alice", "(none)"]


@pytest.mark.parametrize("module", ["gonka_mux.dashboard", "gonka_mux.cli"])
def test_closed_pipe_exits_quietly(usage_db: Path, module: str) -> None:
    """`gonka-mux usage --json | head`: the reader is gone, so no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away before the first write (as `head` does)
    try:
        result = subprocess.run(
            [sys.executable, "-m", module, "usage", "--db", str(usage_db), "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 1
