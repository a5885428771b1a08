"""The Prometheus exporter: exposition text, ASGI/WSGI apps and its own HTTP server."""

from __future__ import annotations

import urllib.request
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from tests._redis import free_port
from tests._usage_data import usage_records

from gonka_mux.metering import MemoryUsageStore, Meter
from gonka_mux.metering.prometheus import PrometheusExporter


@pytest.fixture
def exporter() -> PrometheusExporter:
    exporter = PrometheusExporter(CollectorRegistry())
    with Meter(MemoryUsageStore(), sinks=[exporter]) as meter:
        for record in usage_records():
            meter.record(record)
    return exporter


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_exposition_counts_the_data_set(exporter: PrometheusExporter) -> None:
    text = exporter.exposition()
    got = samples(text)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    strong_b = {"model": "strong-k2", "endpoint": "node-b"}
    assert value("gonka_mux_requests_total", **strong_b, status="ok") == 2
    assert value("gonka_mux_requests_total", **strong_b, status="error") == 1
    assert value("gonka_mux_tokens_total", **strong_b, kind="prompt") == 3500
    assert value("gonka_mux_tokens_total", **strong_b, kind="completion") == 1500
    assert value("gonka_mux_tokens_total", **strong_b, kind="reasoning") == 600
    cheap_a = {"model": "cheap-8b", "endpoint": "node-a"}
    assert value("gonka_mux_tokens_total", **cheap_a, kind="prompt") == 600
    # Latency histogram: 0.5, 0.7 and 0.9 s on cheap-8b/node-a.
    assert value("gonka_mux_request_latency_seconds_count", **cheap_a) == 3
    assert value("gonka_mux_request_latency_seconds_sum", **cheap_a) == pytest.approx(2.1)
    assert value("gonka_mux_request_latency_seconds_bucket", **cheap_a, le="0.5") == 1
    assert value("gonka_mux_request_latency_seconds_bucket", **cheap_a, le="1.0") == 3
    assert value("gonka_mux_time_to_first_token_seconds_count", **cheap_a) == 2
    assert value("gonka_mux_attempts_total", **strong_b) == 6
    assert value("gonka_mux_hedged_requests_total", **strong_b) == 1
    assert value("gonka_mux_failed_over_requests_total", **strong_b) == 1
    assert value("gonka_mux_cost_total", **strong_b) == pytest.approx(0.0095)
    assert "# TYPE gonka_mux_request_latency_seconds histogram" in text
    # Unbounded labels stay out.
    assert "alice" not in text and "s1" not in text


async def test_asgi_app_serves_the_metrics(exporter: PrometheusExporter) -> None:
    app = exporter.asgi_app()
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"",
             "headers": []}  # fmt: skip
    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    assert "gonka_mux_requests_total" in body


def test_wsgi_app_serves_the_metrics(exporter: PrometheusExporter) -> None:
    environ: dict = {}
    setup_testing_defaults(environ)
    statuses: list[str] = []
    body = b"".join(exporter.wsgi_app()(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["200 OK"]
    assert b"gonka_mux_tokens_total" in body


def test_start_http_server_on_loopback(exporter: PrometheusExporter) -> None:
    port = free_port()
    server, thread = exporter.start_http_server(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert (
        samples(text)[
            (
                "gonka_mux_requests_total",
                (("endpoint", "node-a"), ("model", "strong-k2"), ("status", "ok")),
            )
        ]
        == 1
    )


def test_prometheus_client_is_not_imported_by_the_package() -> None:
    import subprocess
    import sys

    code = "import sys, gonka_mux.metering; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
