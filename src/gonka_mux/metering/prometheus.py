"""Prometheus metrics for usage (the ``prometheus`` extra: ``pip install gonka-mux[prometheus]``).

Pass the exporter to the meter as a sink; it counts every stored record::

    exporter = PrometheusExporter()
    meter = Meter(SqliteUsageStore(), sinks=[exporter])
    exporter.start_http_server(9464)          # or mount exporter.asgi_app() / exporter.wsgi_app()

Metrics (labels ``model`` = the model that served, ``endpoint``; caller keys and sessions are left
out on purpose, their number is unbounded):

- ``gonka_mux_requests_total{model,endpoint,status}``
- ``gonka_mux_tokens_total{model,endpoint,kind}`` with ``kind`` = prompt | completion | reasoning
  (reasoning tokens are also part of completion)
- ``gonka_mux_request_latency_seconds{model,endpoint}`` (histogram)
- ``gonka_mux_time_to_first_token_seconds{model,endpoint}`` (histogram, streams)
- ``gonka_mux_attempts_total{model,endpoint}``, ``gonka_mux_hedged_requests_total{model,endpoint}``,
  ``gonka_mux_failed_over_requests_total{model,endpoint}``
- ``gonka_mux_cost_total{model,endpoint}`` (estimated, in the prices' currency)
- ``gonka_mux_cache_requests_total{model,result}`` with ``result`` = hit | miss (the response
  cache's lookups), ``gonka_mux_cache_saved_cost_total{model}`` (what the hits did not spend)

prometheus_client is imported here only, so the rest of gonka_mux never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram

from .records import UsageRecord

__all__ = ["LATENCY_BUCKETS", "PrometheusExporter"]

#: Seconds; LLM calls run from tens of milliseconds to minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
_LABELS = ("model", "endpoint")


class PrometheusExporter:
    """Counts usage records into Prometheus metrics; a :class:`~gonka_mux.metering.Meter` sink.

    ``registry`` defaults to prometheus_client's global one (what ``start_http_server`` and
    most integrations serve); give your own to keep several exporters apart.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "gonka_mux",
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.registry = registry if registry is not None else prometheus_client.REGISTRY
        common: dict[str, Any] = {"namespace": namespace, "registry": self.registry}
        self.requests = Counter("requests", "Requests served.", [*_LABELS, "status"], **common)
        self.tokens = Counter("tokens", "Tokens used.", [*_LABELS, "kind"], **common)
        self.latency = Histogram(
            "request_latency_seconds",
            "Request latency in seconds.",
            _LABELS,
            buckets=latency_buckets,
            **common,
        )
        self.ttft = Histogram(
            "time_to_first_token_seconds",
            "Time to the first token of a stream, in seconds.",
            _LABELS,
            buckets=latency_buckets,
            **common,
        )
        self.attempts = Counter("attempts", "Upstream attempts.", _LABELS, **common)
        self.hedged = Counter("hedged_requests", "Requests that raced a hedge.", _LABELS, **common)
        self.failed_over = Counter(
            "failed_over_requests", "Requests that moved to another endpoint.", _LABELS, **common
        )
        self.cost = Counter("cost", "Estimated cost.", _LABELS, **common)
        self.cache = Counter(
            "cache_requests", "Response cache lookups.", ["model", "result"], **common
        )
        self.cache_saved_cost = Counter(
            "cache_saved_cost", "Estimated cost the cache hits saved.", ["model"], **common
        )

    def write(self, records: Sequence[UsageRecord]) -> None:
        """The sink interface: observe a stored batch."""
        for record in records:
            self.observe(record)

    def observe(self, record: UsageRecord) -> None:
        labels = (record.effective_model, record.endpoint or "none")
        self.requests.labels(*labels, record.status).inc()
        for kind, count in (
            ("prompt", record.prompt_tokens),
            ("completion", record.completion_tokens),
            ("reasoning", record.reasoning_tokens),
        ):
            if count:
                self.tokens.labels(*labels, kind).inc(count)
        if record.latency is not None:
            self.latency.labels(*labels).observe(record.latency)
        if record.ttft is not None:
            self.ttft.labels(*labels).observe(record.ttft)
        self.attempts.labels(*labels).inc(record.attempts)
        if record.hedged:
            self.hedged.labels(*labels).inc()
        if record.failed_over:
            self.failed_over.labels(*labels).inc()
        if record.cost:
            self.cost.labels(*labels).inc(record.cost)
        if record.cache in ("hit", "miss"):
            self.cache.labels(record.effective_model, record.cache).inc()
            if record.saved_cost:
                self.cache_saved_cost.labels(record.effective_model).inc(record.saved_cost)

    def exposition(self) -> str:
        """The metrics in Prometheus text format."""
        return prometheus_client.generate_latest(self.registry).decode()

    def asgi_app(self) -> Any:
        """An ASGI app serving the metrics (mount it at ``/metrics``)."""
        return prometheus_client.make_asgi_app(registry=self.registry)

    def wsgi_app(self) -> Any:
        """A WSGI app serving the metrics."""
        return prometheus_client.make_wsgi_app(registry=self.registry)

    def start_http_server(self, port: int, addr: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` from a daemon thread; returns prometheus_client's ``(server,
        thread)`` (call ``server.shutdown()`` to stop it)."""
        return prometheus_client.start_http_server(port, addr=addr, registry=self.registry)
