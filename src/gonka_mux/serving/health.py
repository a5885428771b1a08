"""The health report (JSON) and the small HTTP sidecar that serves it beside vLLM.

One report shape, whoever builds it::

    {"state": "ready", "ready": true, "profile": ..., "model": ..., "served_model_name": ...,
     "models": [...],
     "vllm": {"url", "pid", "health_http", "version", "max_model_len"},
     "queue": {"running", "waiting", "swapped", "depth", "waiting_by_reason", "kv_cache_usage"},
     "latency": {"time_to_first_token": {"count", "mean", "p50", "p90", "p99"}, ...},
     "latency_recent": {... the same, over the last ``recent_window_s``},
     "tokens": {"prompt_total", "generation_total"}, "metric_names": {...}, "metrics_age_s",
     "gpu": {"available", "driver", "error", "count", "gpus": [...]}, "gpu_indexes": [...],
     "restarts", "uptime_s", "state_since_s", "last_exit", "time"}

With a :class:`~gonka_mux.serving.supervisor.Supervisor` the state is the supervisor's (so
"draining" shows before vLLM stops answering); without one (``gonka-serve health --vllm-url``,
or the client-side node monitor) the state is read off vLLM itself: ``/health`` 200 and the
model listed -> "ready", 503 -> "unhealthy", no answer -> "down".

The sidecar answers ``GET /health`` with 200 only when ready (503 otherwise, so load balancers and
Docker health checks can use it directly) and ``GET /status`` with 200 always.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from gonka_mux.serving.gpu import GpuSnapshot, read_gpus
from gonka_mux.serving.metrics import VllmMetrics
from gonka_mux.serving.supervisor import State, Supervisor

__all__ = ["HealthReporter", "HealthServer", "build_report"]

logger = logging.getLogger("gonka_mux.serving.health")


def build_report(
    *,
    status: dict[str, Any],
    metrics: VllmMetrics | None,
    gpu: GpuSnapshot | None,
    vllm: dict[str, Any],
    recent_since: VllmMetrics | None = None,
    metrics_age_s: float | None = None,
) -> dict[str, Any]:
    """Assemble the health JSON from its parts (pure: no I/O).

    ``metrics_age_s`` says how old the queue and latency numbers are: vLLM's API server can be
    too busy to answer ``/metrics`` for seconds, and then the last good scrape is reported.
    """
    report: dict[str, Any] = {
        "state": status.get("state", "unknown"),
        "ready": status.get("state") == State.READY.value,
        "profile": status.get("profile", ""),
        "model": status.get("model", ""),
        "served_model_name": status.get("served_model_name", ""),
        "models": list(status.get("models", [])),
        "vllm": vllm,
        "queue": metrics.queue_dict()
        if metrics is not None
        else {
            "running": None,
            "waiting": None,
            "swapped": None,
            "depth": None,
            "waiting_by_reason": {},
            "kv_cache_usage": None,
        },
        "latency": metrics.latency_summary() if metrics is not None else {},
        "latency_recent": metrics.latency_summary(since=recent_since)
        if metrics is not None and recent_since is not None
        else None,
        "tokens": {
            "prompt_total": metrics.prompt_tokens if metrics else None,
            "generation_total": metrics.generation_tokens if metrics else None,
            "finished_by_reason": dict(metrics.finished_by_reason) if metrics else {},
        },
        "metric_names": dict(metrics.metric_names) if metrics else {},
        "metrics_age_s": None if metrics_age_s is None else round(metrics_age_s, 3),
        "gpu": gpu.to_dict() if gpu is not None else {"available": False, "error": "not read"},
        "gpu_indexes": list(status.get("gpu_indexes", [])),
        "restarts": status.get("restarts", 0),
        "uptime_s": status.get("uptime_s"),
        "state_since_s": status.get("state_since_s"),
        "last_exit": status.get("last_exit"),
        "time": time.time(),
    }
    return report


class HealthReporter:
    """Builds the health report on demand: live ``/metrics`` and NVML, cached briefly.

    ``nvml`` is passed to :func:`read_gpus` (a fake in tests); ``gpu_reader=None`` skips GPUs
    entirely (the client-side monitor does not need the remote host's GPUs from local NVML).
    """

    def __init__(
        self,
        *,
        supervisor: Supervisor | None = None,
        vllm_url: str | None = None,
        served_model_name: str | None = None,
        nvml: Any = None,
        gpu_reader: Callable[..., GpuSnapshot] | None = read_gpus,
        gpu_cache_s: float = 1.0,
        recent_window_s: float = 60.0,
        timeout_s: float = 3.0,
        api_key: str | None = None,
    ) -> None:
        if supervisor is None and vllm_url is None:
            raise ValueError("HealthReporter needs a supervisor or a vllm_url")
        self.supervisor = supervisor
        base = vllm_url if vllm_url is not None else supervisor.base_url  # type: ignore[union-attr]
        self.vllm_url = base.rstrip("/")
        self.served_model_name = served_model_name
        self._nvml = nvml
        self._gpu_reader = gpu_reader
        self._gpu_cache_s = gpu_cache_s
        self._gpu_cached: tuple[float, GpuSnapshot] | None = None
        self._recent_window_s = recent_window_s
        self._timeout_s = timeout_s
        self._api_key = api_key or os.environ.get("VLLM_API_KEY")
        self._client: Any = None
        # Without a supervisor: our own scrape history for the recent-latency window.
        self._history: list[tuple[float, VllmMetrics]] = []

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> Any:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s)
        return self._client

    async def gpus(self) -> GpuSnapshot | None:
        if self._gpu_reader is None:
            return None
        now = time.monotonic()
        if self._gpu_cached is not None and now - self._gpu_cached[0] < self._gpu_cache_s:
            return self._gpu_cached[1]
        reader = self._gpu_reader
        snapshot = await asyncio.to_thread(reader, self._nvml)  # NVML calls block
        self._gpu_cached = (now, snapshot)
        return snapshot

    async def _get(self, path: str, **kwargs: Any) -> Any:
        try:
            return await self._http().get(self.vllm_url + path, **kwargs)
        except httpx.HTTPError:
            return None

    async def _scrape(self) -> VllmMetrics | None:
        resp = await self._get("/metrics")
        if resp is None or resp.status_code != 200:
            return None
        return VllmMetrics.from_text(resp.text)

    def _recent_base(
        self, history: list[tuple[float, VllmMetrics]], now: float
    ) -> VllmMetrics | None:
        # The oldest scrape still inside the window: "what happened in the last minute or so".
        for at, metrics in history:
            if now - at <= self._recent_window_s:
                return metrics
        return None

    async def report(self) -> dict[str, Any]:
        sup = self.supervisor
        health_http: int | None = None
        metrics: VllmMetrics | None = None
        age: float | None = None
        if sup is not None:
            status = sup.status()
            if sup.state in (State.READY, State.DRAINING) and sup.plan.serves_http:
                resp, metrics = await asyncio.gather(
                    self._get("/health"), sup.scrape_metrics(max_age_s=0.5)
                )
                health_http = resp.status_code if resp is not None else None
                if metrics is None:
                    metrics = sup.latest_metrics  # the last good scrape; its age says so
                if metrics is not None:
                    age = time.monotonic() - sup.scraped_at
            recent = self._recent_base(list(sup.metrics_history), time.monotonic())
            vllm = {
                "url": self.vllm_url,
                "pid": sup.pid,
                "health_http": health_http,
                "version": sup.version,
                "max_model_len": sup.max_model_len,
            }
        else:
            status, metrics, vllm = await self._probe_unsupervised()
            now = time.monotonic()
            if metrics is not None:
                self._history.append((now, metrics))
                self._history = [
                    (t, m) for t, m in self._history if now - t <= 2 * self._recent_window_s
                ]
            recent = self._recent_base(self._history[:-1], now) if metrics is not None else None
            age = 0.0 if metrics is not None else None
        gpu = await self.gpus()
        return build_report(
            status=status,
            metrics=metrics,
            gpu=gpu,
            vllm=vllm,
            recent_since=recent,
            metrics_age_s=age,
        )

    async def _probe_unsupervised(
        self,
    ) -> tuple[dict[str, Any], VllmMetrics | None, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        health, listing, version, metrics = await asyncio.gather(
            self._get("/health"),
            self._get("/v1/models", headers=headers),
            self._get("/version"),
            self._scrape(),
        )
        models: list[str] = []
        max_model_len = None
        if listing is not None and listing.status_code == 200:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                for m in listing.json().get("data", []):
                    if isinstance(m, dict) and isinstance(m.get("id"), str):
                        models.append(m["id"])
                        if max_model_len is None:
                            max_model_len = m.get("max_model_len")
        if health is None:
            state = "down"
        elif health.status_code != 200:
            state = "unhealthy"
        elif not models or (self.served_model_name and self.served_model_name not in models):
            state = "starting"
        else:
            state = State.READY.value
        ver = None
        if version is not None and version.status_code == 200:
            with contextlib.suppress(ValueError, AttributeError):
                ver = version.json().get("version")
        status = {
            "state": state,
            "served_model_name": self.served_model_name or (models[0] if models else ""),
            "models": models,
            "restarts": None,
        }
        vllm = {
            "url": self.vllm_url,
            "pid": None,
            "health_http": health.status_code if health is not None else None,
            "version": ver,
            "max_model_len": max_model_len,
        }
        return status, metrics, vllm


class HealthServer:
    """A minimal HTTP/1.1 server for the health JSON (no framework: one GET, two paths)."""

    def __init__(
        self, reporter: HealthReporter, *, host: str = "127.0.0.1", port: int = 8001
    ) -> None:
        self.reporter = reporter
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]  # the real port when 0 was asked for

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}/health"

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._send(writer, 405, {"error": "only GET is supported"}, method)
            elif path in ("/health", "/status", "/"):
                report = await self.reporter.report()
                code = 200 if (path != "/health" or report["ready"]) else 503
                await self._send(writer, code, report, method)
            else:
                await self._send(writer, 404, {"error": "try /health or /status"}, method)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            pass
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            # The sidecar is stopping with this request in flight. This task is the top of its
            # connection (asyncio's stream protocol owns it), so ending it normally is the whole
            # cleanup; on Python 3.11 a cancelled handler makes asyncio's done-callback log a
            # CancelledError traceback at every clean stop.
            pass
        except Exception:  # a broken report must not kill the sidecar
            logger.exception("health request failed")
            with contextlib.suppress(Exception):
                await self._send(writer, 500, {"error": "health report failed"}, "GET")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, code: int, body: Any, method: str) -> None:
        reason = {
            200: "OK",
            404: "Not Found",
            405: "Method Not Allowed",
            500: "Error",
            503: "Service Unavailable",
        }
        data = json.dumps(body, default=str).encode()
        head = (
            f"HTTP/1.1 {code} {reason.get(code, 'OK')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        writer.write(head if method == "HEAD" else head + data)
        await writer.drain()
