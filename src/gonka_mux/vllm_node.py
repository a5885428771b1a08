"""Watch a vLLM node from the client side: its models, readiness and load.

:class:`VllmNodeMonitor` polls a node every ``interval`` seconds and keeps the latest
:class:`NodeSnapshot`. With ``health_url`` it reads the gonka-serve health sidecar (which knows
about draining before vLLM does); without one it reads vLLM's own ``/health``, ``/v1/models`` and
``/metrics``. Either way the snapshot has the same fields, and ``on_update(snapshot)`` is called
after every poll, so the multiplexer can copy the node's queue depth into the endpoint's
``external_load`` and stop routing to a node that is not ready.

``GONKA_VLLM_BASE_URL`` (default ``http://localhost:8000``) and ``GONKA_VLLM_HEALTH_URL`` name a
node from the environment: see :func:`node_from_env`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "DEFAULT_VLLM_BASE_URL",
    "NodeSnapshot",
    "VllmNodeMonitor",
    "node_from_env",
]

logger = logging.getLogger("gonka_mux.vllm_node")

DEFAULT_VLLM_BASE_URL = "http://localhost:8000"
BASE_URL_ENV = "GONKA_VLLM_BASE_URL"
HEALTH_URL_ENV = "GONKA_VLLM_HEALTH_URL"


def node_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """``(base_url, health_url)`` from ``GONKA_VLLM_BASE_URL`` / ``GONKA_VLLM_HEALTH_URL``."""
    env = os.environ if environ is None else environ
    base = env.get(BASE_URL_ENV, "").strip() or DEFAULT_VLLM_BASE_URL
    health = env.get(HEALTH_URL_ENV, "").strip() or None
    return base, health


def _server_root(url: str) -> str:
    """``http://host:8000/v1`` (an OpenAI base_url) -> ``http://host:8000``."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass(frozen=True)
class NodeSnapshot:
    """One observation of a vLLM node. ``None`` fields were not reported."""

    state: str
    models: tuple[str, ...] = ()
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None
    at: float = field(default_factory=time.time)
    error: str | None = None
    report: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def queue_depth(self) -> float:
        """Requests the node holds (running + waiting); 0 when unknown."""
        return (self.running or 0.0) + (self.waiting or 0.0)

    @property
    def load(self) -> float:
        """The load signal for routing: queue depth, ``inf`` when the node is not ready."""
        return self.queue_depth if self.ready else math.inf


class VllmNodeMonitor:
    """Poll a vLLM node (or its gonka-serve sidecar) and expose its models and load.

    >>> monitor = VllmNodeMonitor("http://gpu-1:8000", health_url="http://gpu-1:8001/health")
    >>> await monitor.start()          # first poll happens before start() returns
    >>> monitor.models, monitor.queue_depth, monitor.ready
    >>> await monitor.aclose()
    """

    def __init__(
        self,
        base_url: str,
        health_url: str | None = None,
        interval: float = 2.0,
        *,
        on_update: Callable[[NodeSnapshot], Awaitable[None] | None] | None = None,
        api_key: str | None = None,
        timeout: float = 3.0,
    ) -> None:
        if interval <= 0:
            from gonka_mux._exceptions import ConfigError

            raise ConfigError(f"interval must be positive, got {interval}", expected="seconds > 0")
        self.base_url = _server_root(base_url)
        self.health_url = health_url
        self.interval = interval
        self.on_update = on_update
        self._api_key = api_key
        self._timeout = timeout
        self._snapshot = NodeSnapshot(state="unknown")
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._reporter: Any = None

    def __repr__(self) -> str:  # never show the API key
        return (
            f"VllmNodeMonitor({self.base_url!r}, health_url={self.health_url!r}, "
            f"state={self._snapshot.state!r})"
        )

    # ---------------------------------------------------------------- the latest observation

    @property
    def snapshot(self) -> NodeSnapshot:
        return self._snapshot

    @property
    def models(self) -> list[str]:
        return list(self._snapshot.models)

    @property
    def ready(self) -> bool:
        return self._snapshot.ready

    @property
    def state(self) -> str:
        return self._snapshot.state

    @property
    def queue_depth(self) -> float:
        return self._snapshot.queue_depth

    @property
    def kv_cache_usage(self) -> float | None:
        return self._snapshot.kv_cache_usage

    @property
    def load(self) -> float:
        return self._snapshot.load

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> NodeSnapshot:
        """Poll once (so ``models`` is known), then keep polling in the background."""
        snapshot = await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"vllm-node {self.base_url}")
        return snapshot

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._reporter is not None:
            await self._reporter.aclose()
            self._reporter = None

    async def __aenter__(self) -> VllmNodeMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # a poller must outlive any one bad answer
                logger.exception("polling %s failed", self.base_url)

    # ---------------------------------------------------------------- polling

    async def refresh(self) -> NodeSnapshot:
        """Poll the node now and return (and keep) the new snapshot."""
        try:
            if self.health_url:
                snapshot = await self._poll_sidecar()
            else:
                snapshot = await self._poll_vllm()
        except Exception as exc:  # network errors, bad JSON: the node is "down" for now
            snapshot = NodeSnapshot(state="down", error=f"{type(exc).__name__}: {exc}")
        if snapshot.state == "down":
            # Keep the last known models and queue: a missed poll is no evidence the queue emptied.
            last = self._snapshot
            snapshot = replace(
                snapshot,
                models=snapshot.models or last.models,
                running=last.running if snapshot.running is None else snapshot.running,
                waiting=last.waiting if snapshot.waiting is None else snapshot.waiting,
                kv_cache_usage=(
                    last.kv_cache_usage
                    if snapshot.kv_cache_usage is None
                    else snapshot.kv_cache_usage
                ),
                error=snapshot.error or "the node did not answer",
            )
        if snapshot.state != self._snapshot.state:
            logger.info(
                "vLLM node %s: %s -> %s", self.base_url, self._snapshot.state, snapshot.state
            )
        self._snapshot = snapshot
        if self.on_update is not None:
            result = self.on_update(snapshot)
            if asyncio.iscoroutine(result):
                await result
        return snapshot

    async def _poll_sidecar(self) -> NodeSnapshot:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        assert self.health_url is not None
        resp = await self._client.get(self.health_url)
        report = resp.json()  # the sidecar answers JSON with 200 (ready) and 503 (not ready)
        return self._from_report(report)

    async def _poll_vllm(self) -> NodeSnapshot:
        if self._reporter is None:
            from gonka_mux.serving.health import HealthReporter

            self._reporter = HealthReporter(
                vllm_url=self.base_url,
                gpu_reader=None,  # the node's GPUs are not this machine's
                timeout_s=self._timeout,
                api_key=self._api_key,
            )
        return self._from_report(await self._reporter.report())

    @staticmethod
    def _from_report(report: Mapping[str, Any]) -> NodeSnapshot:
        queue = report.get("queue") or {}
        models = report.get("models") or []
        served = report.get("served_model_name")
        if not models and served:
            models = [served]

        def num(value: Any) -> float | None:
            return float(value) if isinstance(value, (int, float)) else None

        waiting = num(queue.get("waiting"))
        if waiting is not None:
            waiting += num(queue.get("swapped")) or 0.0  # V0's preempted-to-CPU requests
        return NodeSnapshot(
            state=str(report.get("state", "unknown")),
            models=tuple(m for m in models if isinstance(m, str)),
            running=num(queue.get("running")),
            waiting=waiting,
            kv_cache_usage=num(queue.get("kv_cache_usage")),
            report=report,
        )
