"""Routing: strategies, endpoint health, retry budget, hedging, adaptive timeouts (pure logic)."""

from .budget import RetryBudget
from .ewma import PeakEwma
from .health import EndpointHealth, HealthPolicy
from .hedging import HedgePolicy, LatencyWindow
from .outcome import ErrorPolicy, Failure, Fault, parse_retry_after
from .stop import StopAfterAttempt, StopAny, StopCondition, StopWhenBudgetSpent
from .strategies import PowerOfTwoChoices, RoundRobin, Strategy, WeightedRandom, strategy_from_name
from .timeouts import AdaptiveTimeout

__all__ = [
    "AdaptiveTimeout",
    "EndpointHealth",
    "ErrorPolicy",
    "Failure",
    "Fault",
    "HealthPolicy",
    "HedgePolicy",
    "LatencyWindow",
    "PeakEwma",
    "PowerOfTwoChoices",
    "RetryBudget",
    "RoundRobin",
    "StopAfterAttempt",
    "StopAny",
    "StopCondition",
    "StopWhenBudgetSpent",
    "Strategy",
    "WeightedRandom",
    "parse_retry_after",
    "strategy_from_name",
]
