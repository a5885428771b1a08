"""Peak-EWMA latency estimate (Finagle/Linkerd style) plus a decaying failure penalty."""

from __future__ import annotations

import math

__all__ = ["PeakEwma"]


class PeakEwma:
    """Latency estimate that jumps up at once on a slow sample and decays back over ``tau``.

    Failures do not count as latency samples; they add a *penalty* (at least ``penalty``
    seconds) that fades with time constant ``penalty_tau``. So a fast 429 or 500 makes the
    endpoint look expensive (plain EWMA would send more traffic to the endpoint that fails
    fastest), and an endpoint that stopped failing is tried again after a few ``penalty_tau``
    without anyone having to probe it. Measured latency itself does not fade: a slow endpoint
    stays slow until a new sample says otherwise (the load term of the score sends it traffic
    when the others are busy).
    """

    __slots__ = ("_penalty", "_penalty_stamp", "_stamp", "cost", "penalty_tau", "samples", "tau")

    def __init__(self, tau: float = 2.0, initial: float = 0.0, penalty_tau: float = 10.0) -> None:
        self.tau = tau
        self.penalty_tau = penalty_tau
        self.cost = initial
        self.samples = 0
        self._stamp = 0.0
        self._penalty = 0.0
        self._penalty_stamp = 0.0

    def observe(self, rtt: float, now: float) -> None:
        if self.samples == 0 or rtt > self.cost:
            self.cost = rtt
        else:
            elapsed = now - self._stamp
            w = math.exp(-elapsed / self.tau) if elapsed > 0 else 1.0
            self.cost = self.cost * w + rtt * (1.0 - w)
        self._stamp = now
        self.samples += 1

    def observe_at_least(self, elapsed: float, now: float) -> None:
        """An attempt was abandoned after ``elapsed`` seconds (a hedge that lost, a caller that
        gave up): its latency is at least that. Without this, an endpoint whose requests are
        always cancelled would never be measured and would keep looking new."""
        if self.samples == 0 or elapsed > self.cost:
            self.observe(elapsed, now)

    def penalty(self, now: float) -> float:
        if not self._penalty:
            return 0.0
        elapsed = now - self._penalty_stamp
        if elapsed <= 0:
            return self._penalty
        return self._penalty * math.exp(-elapsed / self.penalty_tau)

    def observe_failure(self, elapsed: float, now: float, penalty: float) -> None:
        self._penalty = max(self.penalty(now), elapsed, penalty)
        self._penalty_stamp = now

    @property
    def known(self) -> bool:
        """True once the endpoint has answered or failed at least once."""
        return self.samples > 0 or self._penalty > 0

    def current(self, now: float) -> float:
        """Latency estimate plus what is left of the failure penalty."""
        return self.cost + self.penalty(now)
