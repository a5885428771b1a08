"""Peak-EWMA latency estimate (Finagle/Linkerd style) with a failure penalty."""

from __future__ import annotations

import math

__all__ = ["PeakEwma"]


class PeakEwma:
    """Latency estimate that jumps up at once on a slow sample and decays back over ``tau``.

    Failures are observed as a sample of at least ``penalty`` seconds: a fast 429 or 500 must
    look expensive, or the router would send more traffic to the endpoint that fails fastest.
    """

    __slots__ = ("_stamp", "cost", "samples", "tau")

    def __init__(self, tau: float = 10.0, initial: float = 0.0) -> None:
        self.tau = tau
        self.cost = initial
        self.samples = 0
        self._stamp = 0.0

    def observe(self, rtt: float, now: float) -> None:
        if self.samples == 0 or rtt > self.cost:
            self.cost = rtt
        else:
            elapsed = now - self._stamp
            w = math.exp(-elapsed / self.tau) if elapsed > 0 else 1.0
            self.cost = self.cost * w + rtt * (1.0 - w)
        self._stamp = now
        self.samples += 1

    def observe_failure(self, elapsed: float, now: float, penalty: float) -> None:
        self.observe(max(elapsed, penalty), now)
