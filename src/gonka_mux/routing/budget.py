"""Retry budget: extra attempts are bounded by a fraction of requests plus a small floor."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["RetryBudget"]


@dataclass
class RetryBudget:
    """A token bucket in the spirit of Finagle's and Envoy's retry budgets.

    Each request deposits ``ratio`` tokens and time deposits ``min_per_second`` tokens per
    second (the floor that lets a quiet client still retry); each retry or hedge withdraws one.
    The balance is capped at what ``ttl`` seconds of traffic would deposit, so a burst of
    failures after a quiet period cannot turn into a retry storm.
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    ttl: float = 10.0
    _balance: float = field(default=0.0, init=False, repr=False)
    _stamp: float = field(default_factory=time.monotonic, init=False, repr=False)
    _cap: float = field(default=0.0, init=False, repr=False)
    _recent_requests: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.ratio < 0 or self.min_per_second < 0 or self.ttl <= 0:
            raise ValueError("RetryBudget needs ratio >= 0, min_per_second >= 0 and ttl > 0")
        self._balance = self.min_per_second * self.ttl

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed > 0:
            self._stamp = now
            # Requests seen recently decay over the ttl, so the cap follows the current rate.
            decay = max(0.0, 1.0 - elapsed / self.ttl)
            self._recent_requests *= decay
            self._balance += elapsed * self.min_per_second
        cap = self.min_per_second * self.ttl + self._recent_requests * self.ratio
        if self._balance > cap:
            self._balance = cap

    def deposit(self, now: float | None = None) -> None:
        """Record one new request."""
        self._recent_requests += 1.0
        self._balance += self.ratio
        self._refill(time.monotonic() if now is None else now)

    def try_withdraw(self, now: float | None = None) -> bool:
        """Take one token for a retry or hedge; False when the budget is spent."""
        self._refill(time.monotonic() if now is None else now)
        if self._balance >= 1.0 - 1e-9:  # float sums of ratio deposits
            self._balance -= 1.0
            return True
        return False

    @property
    def balance(self) -> float:
        return self._balance
