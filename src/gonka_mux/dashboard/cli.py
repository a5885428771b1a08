"""``gonka-mux usage``: usage tables, JSON/CSV exports, the tiering report and the HTML page.

::

    gonka-mux usage                          # totals, per-model and per-session tables
    gonka-mux usage --by session --since 24h
    gonka-mux usage --by model --json        # or --csv
    gonka-mux usage --tiering                # requests, tokens, cost per tier; saving vs strong
    gonka-mux usage --html report.html       # self-contained page with charts
    gonka-mux usage --db /path/usage.sqlite3 # default: the state directory's usage.sqlite3
    gonka-mux usage --db postgresql://user:pw@db/usage   # the fleet's shared usage table

Tables use rich when it is installed (the ``dashboard`` extra) and plain text otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from gonka_mux._exceptions import StoreUnavailableError
from gonka_mux.metering import TieringReport, UsageQuery, UsageSummary
from gonka_mux.metering.stores import open_usage_store

from .html import render_html
from .report import (
    SUMMARY_COLUMNS,
    fmt_cost,
    fmt_int,
    fmt_seconds,
    group_label,
    summary_columns,
    summary_rows,
)

__all__ = ["BY_CHOICES", "build_parser", "main", "register", "run_usage"]

BY_CHOICES = ("session", "model", "key", "endpoint", "tier")
_DEFAULT_VIEWS = ("model", "session")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``usage`` subcommand to an argparse ``subparsers`` object; it sets
    ``func=run_usage`` (call ``args.func(args)``, which returns the exit code)."""
    parser = subparsers.add_parser(
        "usage",
        help="show recorded usage: tokens, latency, models, sessions, tiering",
        description="Show the usage recorded by gonka_mux's meter.",
    )
    parser.add_argument(
        "--db",
        metavar="PATH_OR_URL",
        help="usage database: a SQLite file or a postgresql:// URL (default: usage.sqlite3 in "
        "$GONKA_MUX_STATE_DIR, $XDG_STATE_HOME/gonka_mux or ~/.local/state/gonka_mux)",
    )
    parser.add_argument(
        "--since",
        default=None,
        help="start: a duration back from now (30m, 24h, 7d), an ISO date or 'all' (default)",
    )
    parser.add_argument("--until", default=None, help="end, in the same forms as --since")
    parser.add_argument("--by", choices=BY_CHOICES, help="one breakdown instead of model+session")
    for name in ("key", "session", "model", "endpoint"):
        parser.add_argument(f"--{name}", dest=f"filter_{name}", help=f"only this {name}")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    fmt.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    parser.add_argument(
        "--tiering", action="store_true", help="requests, tokens and cost saved per tier"
    )
    parser.add_argument(
        "--strong-tier", help="tier to compare against (default: 'strong' or the priciest)"
    )
    parser.add_argument("--bucket", help="time bucket of the HTML chart (5m, 1h, 1d; default auto)")
    parser.add_argument("--limit", type=int, default=20, help="rows per table (default 20)")
    parser.set_defaults(func=run_usage)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gonka-mux")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from gonka_mux.cli import quiet_on_broken_pipe

    args = build_parser().parse_args(argv)
    return quiet_on_broken_pipe(lambda: int(args.func(args)))


def run_usage(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        store = open_usage_store(args.db, readonly=True)
    except (ValueError, ImportError) as exc:
        print(f"gonka-mux usage: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args, UsageQuery(store), out)
    except (ValueError, FileNotFoundError, StoreUnavailableError) as exc:
        print(f"gonka-mux usage: error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _run(args: argparse.Namespace, query: UsageQuery, out: TextIO) -> int:
    filters = {
        "key": args.filter_key,
        "session_id": args.filter_session,
        "model": args.filter_model,
        "endpoint": args.filter_endpoint,
    }
    window = {"since": args.since, "until": args.until, **filters}
    if args.html:
        records = query.records(**window)
        path = render_html(records, args.html, bucket=args.bucket, strong_tier=args.strong_tier)
        print(f"wrote {path} ({len(records)} requests)", file=out)
        return 0
    if args.tiering:
        report = query.tiering(strong_tier=args.strong_tier, **window)
        _print_tiering(report, args, out)
        return 0
    views = (args.by,) if args.by else _DEFAULT_VIEWS
    totals = query.totals(**window)
    breakdowns = {by: query.breakdown(by=by, **window) for by in views}
    if args.json:
        payload = {
            "since": args.since,
            "until": args.until,
            "totals": summary_columns(totals),
            "breakdowns": {by: summary_rows(rows) for by, rows in breakdowns.items()},
            "cache": _cache_totals(totals),
        }
        json.dump(payload, out, indent=2)
        out.write("\n")
    elif args.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["by", "group", *SUMMARY_COLUMNS])
        writer.writerow(["total", "", *_csv_values(totals)])
        for by, rows in breakdowns.items():
            for s in rows:
                writer.writerow([by, group_label(s.group), *_csv_values(s)])
    else:
        _print_tables(totals, breakdowns, args.limit, out)
        line = _cache_line(totals)
        if line:
            print(line, file=out)
    return 0


def _cache_totals(totals: UsageSummary) -> dict[str, Any]:
    """The response cache's totals: hits, misses, hit rate, tokens and cost the hits saved."""
    return {
        "hits": totals.cache_hits,
        "misses": totals.cache_misses,
        "hit_rate": totals.cache_hit_rate,
        "saved_tokens": totals.saved_tokens,
        "saved_cost": totals.saved_cost,
    }


def _cache_line(totals: UsageSummary) -> str | None:
    rate = totals.cache_hit_rate
    if rate is None:
        return None  # the response cache was never asked: say nothing
    looked = totals.cache_hits + totals.cache_misses
    # a saving of 0 with tokens saved means no prices were configured: no cost to claim
    cost = f" and {fmt_cost(totals.saved_cost)}" if totals.saved_cost else ""
    return (
        f"Response cache: {fmt_int(totals.cache_hits)} hit(s) of {fmt_int(looked)} lookup(s) "
        f"({rate:.1%} hit rate), {fmt_int(totals.saved_tokens)} tokens{cost} saved."
    )


def _csv_values(summary: UsageSummary) -> list[Any]:
    return ["" if value is None else value for value in summary_columns(summary).values()]


# -- tables

_TABLE_COLUMNS = (
    ("Requests", lambda s: fmt_int(s.requests)),
    ("Errors", lambda s: fmt_int(s.errors)),
    ("Prompt", lambda s: fmt_int(s.prompt_tokens)),
    ("Completion", lambda s: fmt_int(s.completion_tokens)),
    ("Total tokens", lambda s: fmt_int(s.total_tokens)),
    ("Cost", lambda s: fmt_cost(s.cost if s.priced_requests else None)),
    ("p50", lambda s: fmt_seconds(s.latency_p50)),
    ("p95", lambda s: fmt_seconds(s.latency_p95)),
    ("p99", lambda s: fmt_seconds(s.latency_p99)),
    ("TTFT p50", lambda s: fmt_seconds(s.ttft_p50)),
)


def _print_tables(
    totals: UsageSummary, breakdowns: dict[str, list[UsageSummary]], limit: int, out: TextIO
) -> None:
    headers = [name for name, _ in _TABLE_COLUMNS]
    tables = [("Totals", "", [("all", totals)])]
    for by, rows in breakdowns.items():
        shown = [(group_label(s.group), s) for s in rows[:limit]]
        title = f"By {by}" + (f" (top {limit} of {len(rows)})" if len(rows) > limit else "")
        tables.append((title, by.capitalize(), shown))
    for title, first, rows in tables:
        body = [[label, *(cell(s) for _, cell in _TABLE_COLUMNS)] for label, s in rows]
        _print_table(title, [first, *headers], body, out)


def _print_tiering(report: TieringReport, args: argparse.Namespace, out: TextIO) -> None:
    columns = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost",
               "strong_cost", "saved")  # fmt: skip
    if args.json:
        json.dump(report.to_dict(), out, indent=2)
        out.write("\n")
        return
    if args.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["tier", *columns])
        for row in report.rows:
            values = (getattr(row, c) for c in columns)
            writer.writerow([row.tier, *("" if v is None else v for v in values)])
        return
    body = [
        [
            row.tier,
            fmt_int(row.requests),
            fmt_int(row.prompt_tokens),
            fmt_int(row.completion_tokens),
            fmt_int(row.total_tokens),
            fmt_cost(row.cost),
            fmt_cost(row.strong_cost),
            fmt_cost(row.saved),
        ]
        for row in report.rows
    ]
    headers = ["Tier", "Requests", "Prompt", "Completion", "Total tokens", "Cost",
               "At strong prices", "Saved"]  # fmt: skip
    _print_table("Tiering", headers, body, out)
    if report.saved is None:
        print("No saving estimate: no priced requests on a strong tier.", file=out)
    else:
        fraction = f" ({report.saved_fraction:.1%})" if report.saved_fraction is not None else ""
        print(
            f"Estimated saving against all-{report.strong_tier}: {fmt_cost(report.saved)}"
            f"{fraction} at {fmt_cost(report.strong_rate_per_1m)} per 1M tokens.",
            file=out,
        )
    if report.unpriced_requests:
        print(f"{report.unpriced_requests} request(s) had no price and are left out of the costs.",
              file=out)  # fmt: skip


def _print_table(title: str, headers: list[str], rows: list[list[str]], out: TextIO) -> None:
    try:  # optional extra: dashboard (rich)
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # the dashboard extra is not installed: plain columns
        _print_plain(title, headers, rows, out)
        return
    table = Table(title=title, title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    Console(file=out, width=max(120, _width(headers, rows))).print(table)


def _column_widths(headers: list[str], rows: list[list[str]]) -> list[int]:
    return [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]


def _width(headers: list[str], rows: list[list[str]]) -> int:
    widths = _column_widths(headers, rows)
    return sum(widths) + 3 * len(widths) + 1


def _print_plain(title: str, headers: list[str], rows: list[list[str]], out: TextIO) -> None:
    widths = _column_widths(headers, rows)
    print(title, file=out)
    for cells in (headers, *rows):
        padded = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        print("  ".join(padded), file=out)
    print(file=out)
