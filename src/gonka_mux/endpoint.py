"""One OpenAI-compatible endpoint: its client, the models it serves and its live state."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from .routing.ewma import PeakEwma
from .routing.health import EndpointHealth, HealthPolicy

if TYPE_CHECKING:
    from .routing.outcome import ErrorPolicy

__all__ = ["Endpoint", "EndpointTier", "normalize_models", "shown_url"]

EndpointTier = Literal["primary", "fallback"]

_anon = itertools.count(1)


def shown_url(url: str) -> str:
    """A URL fit for a name that logs and errors show: no user:password, query or fragment
    (``https://user:key@host/v1?api_key=...`` -> ``https://host/v1``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "endpoint"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    if ":" in (parts.hostname or "") and not host.startswith("["):
        host = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, host, parts.path, "", "")) if parts.scheme else url


def normalize_models(models: str | Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """Public model name -> the name sent to this endpoint."""
    if isinstance(models, str):
        return {models: models}
    if isinstance(models, Mapping):
        out = {str(k): str(v) for k, v in models.items()}
    else:
        out = {str(m): str(m) for m in models}
    if not out:
        raise ValueError("an endpoint needs at least one model: pass models=['name', ...]")
    for public, upstream in out.items():
        if not public or not upstream:
            raise ValueError("model names must be non-empty strings")
    return out


class Endpoint:
    """An upstream endpoint. Created by ``mux.add_endpoint``; read its state via ``mux.stats()``.

    ``client`` is an ``openai.AsyncOpenAI`` (with the SDK's own retries off: the Multiplexer owns
    retries). ``external_load`` is an extra load signal (a vLLM node's queue depth) that the
    router adds to the endpoint's in-flight count.
    """

    __slots__ = (
        "client",
        "context_window",
        "default_params",
        "error_policy",
        "ewma",
        "external_load",
        "failures",
        "group",
        "health",
        "inflight",
        "kind",
        "last_error",
        "lifecycle",
        "max_concurrent",
        "models",
        "name",
        "on_release",
        "removed",
        "requests",
        "successes",
        "tier",
        "weight",
        "withdrawn",
    )

    def __init__(
        self,
        client: Any,
        *,
        models: str | Sequence[str] | Mapping[str, str],
        name: str | None = None,
        weight: float = 1.0,
        max_concurrent: int | None = None,
        tier: EndpointTier = "primary",
        group: str | None = None,
        kind: str = "openai",
        context_window: int | None = None,
        health_policy: HealthPolicy | None = None,
        error_policy: ErrorPolicy | None = None,
        ewma_tau: float = 2.0,
        penalty_tau: float = 10.0,
        default_params: Mapping[str, Any] | None = None,
    ) -> None:
        if tier not in ("primary", "fallback"):
            raise ValueError(f"tier must be 'primary' or 'fallback', not {tier!r}")
        if not weight or weight <= 0:
            raise ValueError(f"weight must be > 0 (got {weight!r})")
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1 or None (got {max_concurrent!r})")
        self.client = client
        self.models = normalize_models(models)
        self.name = name or f"endpoint-{next(_anon)}"
        self.weight = float(weight)
        self.max_concurrent = max_concurrent
        self.tier: EndpointTier = tier
        self.group = group
        self.kind = kind
        self.context_window = context_window
        # body fields sent when the request lacks them (Gonka: max_tokens, or the network
        # escrows 5000 tokens)
        self.default_params = dict(default_params) if default_params else None
        self.health = EndpointHealth(health_policy or HealthPolicy())
        self.error_policy = error_policy
        self.ewma = PeakEwma(tau=ewma_tau, penalty_tau=penalty_tau)
        self.external_load = 0.0
        self.inflight = 0
        self.removed = False
        # what the endpoint's source (or a 404/410) says: "active", "draining" (no new
        # requests; in-flight ones finish), "down" (starting or unreachable) or "gone" (404/410):
        # only "active" endpoints are selected; mark_ready makes any of them active again
        self.lifecycle = "active"
        # public model -> upstream name, for models this endpoint answered 404 for
        self.withdrawn: dict[str, str] = {}
        self.requests = 0
        self.successes = 0
        self.failures: dict[str, int] = {}
        self.last_error: str | None = None
        self.on_release: Callable[[Endpoint], None] | None = None

    def __repr__(self) -> str:  # never shows the client (it may hold a key)
        return (
            f"Endpoint(name={self.name!r}, models={sorted(self.models)!r}, weight={self.weight:g}, "
            f"tier={self.tier!r}, inflight={self.inflight})"
        )

    @property
    def base_url(self) -> str:
        """The client's base URL without credentials or query (safe to show)."""
        return shown_url(str(getattr(self.client, "base_url", "")))

    def is_full(self) -> bool:
        return self.max_concurrent is not None and self.inflight >= self.max_concurrent

    def selectable(self, now: float) -> bool:
        return (
            not self.removed
            and self.lifecycle == "active"
            and (self.max_concurrent is None or self.inflight < self.max_concurrent)
            and self.health.selectable(now)
        )

    def score(self, default_cost: float, now: float) -> float:
        """Lower is better: peak-EWMA latency (plus failure penalty) x (load + 1).

        Weight is not part of the score: dividing by it let the heaviest endpoint win every
        comparison at light load (it took everything instead of its share). Strategies use
        weight as a *share* among endpoints whose scores are about equal instead.
        """
        return self.unit_cost(default_cost, now) * (self.inflight + self.external_load + 1.0)

    def unit_cost(self, default_cost: float, now: float) -> float:
        """The expected cost of one request here: latency estimate plus failure penalty.

        An endpoint with no latency sample yet costs 0 while idle, so every new endpoint is
        tried once (exploration); once it has requests in flight it costs ``default_cost``,
        so a new endpoint that hangs cannot pull in all the traffic.
        """
        if self.ewma.known:
            return self.ewma.current(now)
        if self.inflight + self.external_load <= 0:
            return 0.0
        return default_cost

    def is_stale(self, now: float) -> bool:
        """Its latency estimate is old (and no failure penalty is left): routing lets it
        compete as an equal, so it is measured again instead of starved."""
        ewma = self.ewma
        return ewma.stale(now) and ewma.penalty(now) <= 0.1 * ewma.cost + 1e-3

    def count_failure(self, kind: str, message: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1
        self.last_error = message

    def snapshot(self, now: float) -> dict[str, Any]:
        h = self.health
        return {
            "name": self.name,
            "base_url": self.base_url,
            "models": dict(self.models),
            "tier": self.tier,
            "group": self.group,
            "kind": self.kind,
            "weight": self.weight,
            "requests": self.requests,
            "successes": self.successes,
            "failures": dict(self.failures),
            "last_error": self.last_error,
            "ewma_latency_s": round(self.ewma.cost, 6) if self.ewma.samples else None,
            "failure_penalty_s": round(self.ewma.penalty(now), 6),
            "inflight": self.inflight,
            "max_concurrent": self.max_concurrent,
            "external_load": self.external_load,
            "state": h.state(now) if self.lifecycle == "active" else self.lifecycle,
            "quarantine_reason": h.quarantine_reason,
            "withdrawn_models": sorted(self.withdrawn),
            "cooldown_remaining_s": round(max(0.0, h.available_at(now) - now), 3),
            "consecutive_failures": h.consecutive_failures,
            "removed": self.removed,
        }
