"""When to stop failing over: small composable values, in the style of tenacity's ``stop``.

A stop condition is called with the request's routing state (``RouteState``) before each
extra attempt (a failover; the first attempt is always made) and returns ``None`` to go on or
a short reason to stop. Combine them with ``|`` (stop when either says so)::

    RoutingSettings(stop=StopAfterAttempt(3) | StopWhenBudgetSpent())

The caller's deadline is not a stop condition: it always applies, and raises
``DeadlineExceeded`` rather than "all endpoints failed".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["StopAfterAttempt", "StopAny", "StopCondition", "StopWhenBudgetSpent"]


class StopCondition(Protocol):
    def __call__(self, state: Any) -> str | None: ...


class _Combinable:
    def __or__(self, other: StopCondition) -> StopAny:
        return StopAny((self, other))  # type: ignore[arg-type]


@dataclass(frozen=True)
class StopAny(_Combinable):
    """Stop as soon as one of ``conditions`` says so (evaluated in order)."""

    conditions: tuple[StopCondition, ...]

    def __or__(self, other: StopCondition) -> StopAny:
        return StopAny((*self.conditions, other))

    def __call__(self, state: Any) -> str | None:
        for condition in self.conditions:
            reason = condition(state)
            if reason:
                return reason
        return None


@dataclass(frozen=True)
class StopAfterAttempt(_Combinable):
    """At most ``max_attempts`` attempts per request (hedges are not counted here: they draw
    on the retry budget)."""

    max_attempts: int

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError("StopAfterAttempt.max_attempts must be an integer")
        if self.max_attempts < 1:
            raise ValueError("StopAfterAttempt.max_attempts must be >= 1")

    def __call__(self, state: Any) -> str | None:
        if state.attempt_number >= self.max_attempts:
            return f"the attempt limit (max_attempts={self.max_attempts}) was reached"
        return None


@dataclass(frozen=True)
class StopWhenBudgetSpent(_Combinable):
    """Stop when the Multiplexer's retry budget has no token left; takes one when it lets the
    failover through (so a failing fleet cannot turn every request into N requests)."""

    def __call__(self, state: Any) -> str | None:
        if state.budget.try_withdraw(state.now):
            return None
        return "the retry budget was spent (too many retries across requests right now)"
