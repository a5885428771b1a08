"""Watch a vLLM node from the client side: its models, readiness and load.

:class:`VllmNodeMonitor` polls a node every ``interval`` seconds and keeps the latest
:class:`NodeSnapshot`. With ``health_url`` it reads the gonka-serve health sidecar (which knows
about draining before vLLM does); without one it reads vLLM's own ``/health``, ``/v1/models`` and
``/metrics``. Either way the snapshot has the same fields, and ``on_update(snapshot)`` is called
after every poll, so the multiplexer can copy the node's queue depth into the endpoint's
``external_load`` and stop routing to a node that is not ready.

:class:`VllmNodeSource` is the node as an :class:`~gonka_mux.sources.EndpointSource`: it owns a
monitor, adds the node's endpoint once the node first reports its models (a node that is down at
start keeps being polled in the background and joins when it answers), and maps every poll to
the Multiplexer's public lifecycle: ready -> ``mark_ready`` (back in rotation at once, also after
an ejection), draining -> ``mark_draining``, anything else -> ``mark_down``.
``mux.add_vllm_node(...)`` and the ``[vllm]`` config section are doors over it.

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

from gonka_mux._exceptions import ConfigError

__all__ = [
    "DEFAULT_VLLM_BASE_URL",
    "NodeSnapshot",
    "VllmNodeMonitor",
    "VllmNodeSource",
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
        # Lazy: httpx adds ~100 ms to `import gonka_mux.config`, which imports this module.
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        assert self.health_url is not None
        resp = await self._client.get(self.health_url)
        report = resp.json()  # the sidecar answers JSON with 200 (ready) and 503 (not ready)
        return self._from_report(report)

    async def _poll_vllm(self) -> NodeSnapshot:
        if self._reporter is None:
            # Lazy: serving.health (httpx, supervisor) adds ~115 ms to `import gonka_mux.config`.
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


def _openai_base(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1`` (what the OpenAI client is given)."""
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


class VllmNodeSource:
    """One vLLM node as an endpoint source: ``mux.add_source(VllmNodeSource(url, ...))``.

    ``start(mux)`` polls the node once and never fails because the node is down: the monitor
    keeps polling every ``interval`` seconds in the background, and the endpoint is added (kind
    ``"vllm"``, named ``name``) the first time the node reports its models. With ``models=``
    the endpoint is added at once and stays out of rotation until the node is ready. After
    that, each poll is mapped to the lifecycle: ready -> ``mux.mark_ready`` (only when it was
    out of rotation or ejected, so a restarted node gets traffic within one poll of being
    ready), draining -> ``mux.mark_draining`` (no new requests; in-flight ones finish),
    starting / down / unhealthy -> ``mux.mark_down``; the node's queue depth goes to the
    endpoint's ``external_load``. ``url=None`` reads ``GONKA_VLLM_BASE_URL`` /
    ``GONKA_VLLM_HEALTH_URL``. Other keyword arguments go to ``mux.add_endpoint``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        health_url: str | None = None,
        name: str | None = None,
        api_key: str | None = None,
        interval: float = 2.0,
        models: list[str] | tuple[str, ...] | None = None,
        environ: Mapping[str, str] | None = None,
        **endpoint_options: Any,
    ) -> None:
        if url is None:
            url, env_health = node_from_env(environ)
            health_url = health_url or env_health
        self.url = url
        self.health_url = health_url
        self.name = name
        self.models = tuple(models) if models else ()
        self._api_key = api_key
        self._endpoint_options = endpoint_options
        self.monitor = VllmNodeMonitor(
            url,
            health_url=health_url,
            interval=interval,
            on_update=self._on_update,
            api_key=api_key,
        )
        self.endpoint: Any = None
        self._mux: Any = None
        self._joined = asyncio.Event()  # binds to a loop only when first awaited
        self._said_down = False

    def __repr__(self) -> str:  # never show the API key
        return (
            f"VllmNodeSource({self.url!r}, health_url={self.health_url!r}, "
            f"endpoint={getattr(self.endpoint, 'name', None)!r}, state={self.monitor.state!r})"
        )

    @property
    def state(self) -> str:
        """The node's last reported state (``unknown`` before the first poll)."""
        return self.monitor.state

    async def start(self, mux: Any) -> None:
        """Poll once and keep polling in the background; add the endpoint when the node first
        reports its models (at once with ``models=``). Never raises for a node that is down."""
        self._mux = mux
        if self.models:
            self._add_endpoint(self.models)
        await self.monitor.start()

    async def aclose(self) -> None:
        await self.monitor.aclose()

    async def wait_joined(self, timeout: float | None = None) -> Any:
        """Wait until the endpoint has been added (the node reported its models); return it."""
        await asyncio.wait_for(self._joined.wait(), timeout)
        return self.endpoint

    # ---------------------------------------------------------------- poll -> lifecycle

    def _add_endpoint(self, models: tuple[str, ...]) -> None:
        mux = self._mux
        self.endpoint = mux.add_endpoint(
            _openai_base(self.url),
            models=list(models),
            name=self.name,
            api_key=self._api_key,
            kind="vllm",
            **self._endpoint_options,
        )
        mux.mark_down(self.endpoint)  # until a poll says it is ready
        self._joined.set()
        logger.info(
            "vLLM node %s joined as endpoint %s serving %s",
            self.url,
            self.endpoint.name,
            ", ".join(models),
        )

    def _on_update(self, snapshot: NodeSnapshot) -> None:
        mux = self._mux
        if mux is None:
            return
        if self.endpoint is None:
            if not snapshot.models:
                if not self._said_down:
                    self._said_down = True
                    logger.warning(
                        "vLLM node %s is not serving yet (%s%s); polling it every %g s and "
                        "adding it when it reports its models",
                        self.url,
                        snapshot.state,
                        f": {snapshot.error}" if snapshot.error else "",
                        self.monitor.interval,
                    )
                return
            self._add_endpoint(snapshot.models)
        ep = self.endpoint
        if ep.removed:
            return  # taken out by someone else (mark_gone, remove_endpoint): leave it be
        ep.external_load = snapshot.queue_depth
        if snapshot.ready:
            # Back from a restart: traffic now, not after an ejection runs out (its health report
            # is newer than the failures that ejected it; a 429 cooldown is the node's own word
            # and is left to run out).
            state = ep.health.state(time.monotonic())
            if ep.lifecycle != "active" or state in ("ejected", "probing"):
                mux.mark_ready(ep)
        elif snapshot.state == "draining":
            if ep.lifecycle != "draining":
                mux.mark_draining(ep)  # in-flight requests finish; no new ones
        elif ep.lifecycle != "down":
            mux.mark_down(ep)  # starting, unhealthy or unreachable
