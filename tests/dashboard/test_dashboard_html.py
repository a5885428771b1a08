"""The HTML report, rendered by a real headless Chromium: the numbers in the DOM come from the
page's own JavaScript (tables, cards and SVG charts are all drawn by it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tests._usage_data import T0, usage_records

from gonka_mux.dashboard import render_html
from gonka_mux.metering import SqliteUsageStore, UsageQuery, UsageRecord

# Selected only with ``-m browser`` (.ci/run installs Debian's chromium); a missing browser is
# then a failure, not a skip.
CHROMIUM = os.environ.get("GONKA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "embed", "source",
        "track", "wbr"}  # fmt: skip

pytestmark = [pytest.mark.browser, pytest.mark.slow]
WINDOW_WIDTH = 1600


class Node:
    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs, self.text = tag, attrs, ""


class DomIndex(HTMLParser):
    """Every element of a serialized DOM with its attributes and all the text inside it."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.nodes: list[Node] = []
        self._open: list[Node] = []
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.nodes.append(node)
        if tag not in VOID:
            self._open.append(node)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.nodes.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for node in self._open:
            node.text += data

    def find(self, tag: str | None = None, **attrs: str) -> list[Node]:
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [
            n
            for n in self.nodes
            if (tag is None or n.tag == tag) and all(n.attrs.get(k) == v for k, v in wanted.items())
        ]

    def one(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


def dump_dom(page: Path, profile: Path) -> DomIndex:
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW_WIDTH},1000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return DomIndex(result.stdout)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DomIndex]:
    """The known data set, through a real SQLite file, rendered once for the module."""
    tmp = tmp_path_factory.mktemp("report")
    store = SqliteUsageStore(tmp / "usage.sqlite3")
    store.write(usage_records())
    page = render_html(UsageQuery(store), tmp / "report.html", bucket="1h")
    store.close()
    return page, dump_dom(page, tmp / "profile")


def cell(dom: DomIndex, table: str, group: str, column: str) -> str:
    return dom.one("td", data_table=table, data_group=group, data_col=column).text


def test_page_is_self_contained(report) -> None:
    page, _ = report
    text = page.read_text()
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", text)
    urls = set(re.findall(r"https?://[^\s\"')]+", text))
    assert urls == {"http://www.w3.org/2000/svg"}  # the SVG namespace name, never fetched
    assert "default-src 'none'" in text  # the browser itself refuses any network load


def test_cards_show_the_totals(report) -> None:
    _, dom = report
    assert dom.one("body").attrs["data-rendered"] == "true"
    cards = {n.attrs["data-card"]: n.text for n in dom.find("div") if "data-card" in n.attrs}
    assert cards == {
        "requests": "8",
        "errors": "1",
        "total_tokens": "6,575",
        "prompt_tokens": "4,550",
        "completion_tokens": "2,025",
        "cost": "$0.009950",
        "latency_p50": "0.950 s",
        "latency_p95": "3.300 s",
        "latency_p99": "3.860 s",
        "ttft_p50": "0.200 s",
    }


def test_tables_show_the_breakdowns(report) -> None:
    _, dom = report
    assert cell(dom, "model", "strong-k2", "total_tokens") == "5,075"
    assert cell(dom, "model", "strong-k2", "latency_p50") == "1.750 s"
    assert cell(dom, "model", "cheap-8b", "cost") == "$0.000300"
    sessions = [n.attrs["data-group"] for n in dom.find("tr", data_table="session")]
    assert sessions == ["s2", "s1", "s3", "(none)"]
    assert [cell(dom, "session", s, "total_tokens") for s in sessions] == [
        "3,300", "2,250", "950", "75"
    ]  # fmt: skip
    assert cell(dom, "session", "s1", "latency_p95") == "1.860 s"
    assert cell(dom, "key", "bob", "errors") == "1"
    assert cell(dom, "endpoint", "node-a", "prompt_tokens") == "650"
    assert cell(dom, "tiering", "cheap", "strong_cost") == "$0.003000"
    assert cell(dom, "tiering", "(none)", "saved") == "$0.000000"
    assert dom.one(data_metric="tiering_saved").text == "$0.002700"
    assert dom.one(data_metric="tiering_saved_fraction").text == "21.3%"
    assert "at its own prices of $1.0000 per 1M prompt and $4.0000 per 1M completion tokens" in (
        dom.one(id="tiering-summary").text
    )


def test_tokens_over_time_chart(report) -> None:
    _, dom = report
    bars = dom.find("g", **{"class": "bar"})
    assert [(float(b.attrs["data-t"]) - T0, int(b.attrs["data-total"])) for b in bars] == [
        (0, 1950),
        (3600, 3450),
        (7200, 0),
        (10800, 1175),
    ]
    prompt = [int(r.attrs["data-value"]) for r in dom.find("rect", data_kind="prompt")]
    assert prompt == [1300, 2300, 0, 950]
    assert dom.one("text", data_axis="max").text == "3,450"


def test_charts_fill_their_card(report) -> None:
    """Each chart is as wide as its card's inside, as the browser laid the card out: the window
    less the body's margins (24 px each side), the card's border and padding (1 + 8 px each
    side), and a vertical scrollbar if the page has one (at most 20 px)."""
    _, dom = report
    inside = WINDOW_WIDTH - 2 * 24 - 2 * (1 + 8)
    for chart in ("tokens", "latency", "share"):
        width = float(dom.one("svg", data_chart=chart).attrs["width"])
        assert inside - 20 <= width <= inside, (chart, width)


def test_latency_per_model_chart(report) -> None:
    _, dom = report
    assert float(dom.one("rect", data_model="strong-k2", data_pct="p50").attrs["data-value"]) == (
        pytest.approx(1.75)
    )
    assert dom.one("text", data_label="strong-k2:p95").text == "3.70"
    assert dom.one("text", data_label="cheap-8b:p50").text == "0.65"


def test_model_share_per_session_chart(report) -> None:
    _, dom = report
    s2_cheap = dom.one("rect", data_session="s2", data_model="cheap-8b")
    assert (s2_cheap.attrs["data-tokens"], s2_cheap.attrs["data-share"]) == ("300", "0.0909")
    assert dom.one("text", data_share_label="s2:strong-k2").text == "90.9%"
    assert dom.one("text", data_share_label="s1:strong-k2").text == "66.7%"
    assert dom.one("rect", data_session="(none)", data_model="strong-k2").attrs["data-share"] == (
        "1.0000"
    )


def test_hostile_names_are_shown_as_text(tmp_path: Path) -> None:
    evil = '</script><script>document.body.setAttribute("data-pwned","1")</script><b>x'
    records = [
        UsageRecord(model="m<i>", session_id=evil, prompt_tokens=5, latency=0.1, time=T0),
        *usage_records()[:1],
    ]
    page = render_html(records, tmp_path / "evil.html")
    dom = dump_dom(page, tmp_path / "profile")
    body = dom.one("body")
    assert body.attrs["data-rendered"] == "true" and "data-pwned" not in body.attrs
    assert dom.find("tr", data_group=evil)  # the name arrives intact, as text
    assert not dom.find("i") and not dom.find("b")


def test_empty_report_renders(tmp_path: Path) -> None:
    page = render_html([], tmp_path / "empty.html")
    dom = dump_dom(page, tmp_path / "profile")
    assert dom.one("body").attrs["data-rendered"] == "true"
    assert "No requests in this range." in dom.one(id="chart-tokens").text
