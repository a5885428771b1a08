"""Routing: selection strategies, endpoint health, retry budget and hedging (pure logic)."""

from .budget import RetryBudget
from .ewma import PeakEwma
from .health import EndpointHealth, HealthPolicy
from .hedging import HedgePolicy, LatencyWindow
from .outcome import ErrorPolicy, Failure, parse_retry_after
from .strategies import PowerOfTwoChoices, RoundRobin, Strategy, WeightedRandom, strategy_from_name

__all__ = [
    "EndpointHealth",
    "ErrorPolicy",
    "Failure",
    "HealthPolicy",
    "HedgePolicy",
    "LatencyWindow",
    "PeakEwma",
    "PowerOfTwoChoices",
    "RetryBudget",
    "RoundRobin",
    "Strategy",
    "WeightedRandom",
    "parse_retry_after",
    "strategy_from_name",
]
