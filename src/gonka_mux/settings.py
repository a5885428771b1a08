"""Routing settings and the per-call options of ``create()``: values, validated when built.

:class:`RoutingSettings` configures a Multiplexer (``AsyncMultiplexer(settings)`` or keyword
overrides, or the ``[routing]`` table of a config file; see docs/configuration.md and
docs/routing.md). :class:`CallOptions` holds gonka_mux's own keyword arguments of one
``create()`` call (``session_id``, ``deadline``, ...), which never go upstream.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .routing.budget import RetryBudget
from .routing.health import HealthPolicy
from .routing.hedging import HedgePolicy
from .routing.stop import StopAfterAttempt, StopCondition, StopWhenBudgetSpent
from .routing.strategies import Strategy, strategy_from_name
from .routing.timeouts import AdaptiveTimeout

__all__ = [
    "DEFAULT_HEDGING",
    "MUX_KWARGS",
    "OPTION_KWARGS",
    "CallOptions",
    "RoutingSettings",
]

# Keyword arguments of create() that belong to gonka_mux, not to the OpenAI request body.
MUX_KWARGS = frozenset(
    {"session_id", "tier", "deadline", "hedge", "caller", "mux_metadata", "route_to", "cache"}
)
# create() keyword arguments that openai turns into request options, not body fields.
OPTION_KWARGS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


# Hedging at defaults: never before 250 ms, so a burst that only queues on a fast fleet does not
# double its own load; a hanging endpoint is hedged at max(250 ms, the pool's p95).
DEFAULT_HEDGING = HedgePolicy(min_delay=0.25)


@dataclass
class RoutingSettings:
    """Routing and retry settings (see docs/configuration.md and docs/routing.md).

    Policies are values: ``strategy`` takes a name (``"p2c"``, ``"weighted_random"``,
    ``"round_robin"``) or a strategy instance; ``stop`` a stop condition (default: at most
    ``max_attempts`` attempts while the retry budget lasts); ``retry_budget`` a
    :class:`RetryBudget` (default: built from the ``retry_budget_*`` numbers). ``hedging`` is
    on by default (it only acts when a pool has a spare endpoint); ``hedging=None`` turns it
    off. ``adaptive_timeout`` shortens the per-attempt first-byte timeout to what the pool's
    own latency says is abnormal; ``first_byte_timeout`` stays the cap. ``latency_decay``
    (seconds) is how fast an endpoint's latency estimate fades when it is not used, so an
    endpoint that answered slowly once is measured again instead of starved.
    """

    strategy: str | Strategy = "p2c"
    first_byte_timeout: float = 60.0
    connect_timeout: float = 10.0
    deadline: float | None = 600.0
    max_attempts: int = 4
    failure_penalty: float = 1.0
    latency_decay: float = 10.0
    default_latency: float = 0.1
    wait_for_capacity: float = 10.0
    retry_budget_ratio: float = 0.2
    retry_budget_min_per_second: float = 10.0
    retry_budget_ttl: float = 10.0
    health: HealthPolicy = field(default_factory=HealthPolicy)
    hedging: HedgePolicy | None = field(default_factory=lambda: DEFAULT_HEDGING)
    adaptive_timeout: AdaptiveTimeout | None = field(default_factory=AdaptiveTimeout)
    context_fallbacks: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    stop: StopCondition | None = None
    retry_budget: RetryBudget | None = None

    def __post_init__(self) -> None:
        for name in ("first_byte_timeout", "connect_timeout", "latency_decay"):
            value = getattr(self, name)
            if not _finite_positive(value):
                raise ValueError(f"{name} must be a finite number > 0 seconds, not {value!r}")
        if self.deadline is not None and not _finite_positive(self.deadline):
            raise ValueError(
                f"deadline must be a finite number > 0 seconds or None, not {self.deadline!r}"
            )
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValueError("max_attempts must be an integer >= 1")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if isinstance(self.strategy, str):
            strategy_from_name(self.strategy)  # fail early on an unknown name
        elif not callable(getattr(self.strategy, "select", None)):
            raise ValueError("strategy must be a name or an object with a select() method")

    def build_strategy(self) -> Strategy:
        if isinstance(self.strategy, str):
            return strategy_from_name(self.strategy, self.seed)
        return self.strategy

    def build_budget(self) -> RetryBudget:
        if self.retry_budget is not None:
            return dataclasses.replace(self.retry_budget)  # a fresh bucket, same numbers
        return RetryBudget(
            ratio=self.retry_budget_ratio,
            min_per_second=self.retry_budget_min_per_second,
            ttl=self.retry_budget_ttl,
        )

    def build_stop(self) -> StopCondition:
        if self.stop is not None:
            return self.stop
        return StopAfterAttempt(self.max_attempts) | StopWhenBudgetSpent()


def _finite_positive(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


@dataclass
class CallOptions:
    """What the caller asked of gonka_mux for one request (the non-OpenAI keyword arguments)."""

    session_id: str | None = None
    tier: str | None = None
    deadline: float | None = None
    hedge: bool | float | None = None
    caller: str | None = None
    metadata: dict[str, Any] | None = None
    route_to: str | None = None  # pin to one endpoint by name (admin probes, tests)
    # the response cache for this call: None (its rules), True (cache even a sampled
    # request), False (neither read nor write), "refresh" (skip the lookup, store the reply)
    cache: bool | str | None = None
