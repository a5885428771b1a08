"""A self-contained HTML usage report: one file, inline CSS, inline SVG charts drawn by inline JS.

The page (``static/report.html`` with ``report.css`` and ``report.js`` inlined into it) embeds
the report data as JSON and renders summary cards, three charts (tokens over time, latency
percentiles per model, model share per session) and the tables in the browser. It loads nothing
from the network (a Content-Security-Policy forbids it), so it opens offline.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from gonka_mux.metering import UsageQuery, UsageRecord, UsageStore

from .report import report_data

__all__ = ["render_html", "render_html_text"]


def render_html(
    source: UsageQuery | UsageStore | Iterable[UsageRecord],
    path: str | os.PathLike[str],
    *,
    since: Any = None,
    until: Any = None,
    bucket: str | float | None = None,
    strong_tier: str | None = None,
    title: str = "gonka_mux usage",
) -> Path:
    """Write the report for ``source`` (a query, a store or records) to ``path``; returns it."""
    text = render_html_text(
        report_data(
            source, since=since, until=until, bucket=bucket, strong_tier=strong_tier, title=title
        )
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


def render_html_text(data: dict[str, Any]) -> str:
    # "<" is escaped so no value can close the <script> element that carries the data.
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    static = resources.files(__package__) / "static"
    page = (static / "report.html").read_text(encoding="utf-8")
    return (
        page.replace("__TITLE__", html.escape(str(data.get("title", "usage"))))
        .replace("__STYLE__", (static / "report.css").read_text(encoding="utf-8"))
        .replace("__SCRIPT__", (static / "report.js").read_text(encoding="utf-8"))
        .replace("__DATA__", payload)
    )
