"""The usage dashboard: ``gonka-mux usage`` tables and exports, and a self-contained HTML report.

``register(subparsers)`` (in :mod:`gonka_mux.dashboard.cli`) adds the ``usage`` subcommand;
:func:`render_html` writes the report from a query, a store or records.
"""

from __future__ import annotations

from .html import render_html
from .report import report_data

__all__ = ["render_html", "report_data"]
