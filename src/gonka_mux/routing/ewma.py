"""Peak-EWMA latency estimate (Finagle/Linkerd/tower style) plus a decaying failure penalty."""

from __future__ import annotations

from math import exp

__all__ = ["PeakEwma"]


class PeakEwma:
    """Latency estimate that jumps up at once on a slow sample and decays toward zero with time.

    Samples: a sample above the current (decayed) estimate replaces it at once (the *peak*), so
    one slow answer makes an endpoint look slow right away; a lower sample is blended in with
    time constant ``tau``. Time: when no sample arrives the estimate decays toward zero with
    time constant ``decay_tau`` (as tower's ``PeakEwma`` does). Without this decay an endpoint
    that answered once slowly (a cold connection) would look slow for ever at light load, never
    be picked and so never be measured again; with it, an idle endpoint looks cheaper and cheaper
    until it is tried again, and the new sample says whether it is still slow. A 10x slower
    endpoint is re-measured about every ``decay_tau * ln(10 / 1.5)`` (~19 s at the default),
    which at light load is a few requests in a thousand.

    Failures do not count as latency samples; they add a *penalty* (at least ``penalty``
    seconds) that fades with time constant ``penalty_tau``. So a fast 429 or 500 makes the
    endpoint look expensive (plain EWMA would send more traffic to the endpoint that fails
    fastest), and an endpoint that stopped failing is tried again after a few ``penalty_tau``
    without anyone having to probe it.

    ``cost`` is the estimate as of the last sample (what stats show); ``estimate(now)`` is the
    decayed value and ``current(now)`` adds what is left of the penalty (what routing uses).
    """

    __slots__ = (
        "_penalty",
        "_penalty_stamp",
        "_stamp",
        "cost",
        "decay_tau",
        "penalty_tau",
        "samples",
        "tau",
    )

    def __init__(
        self,
        tau: float = 2.0,
        initial: float = 0.0,
        penalty_tau: float = 10.0,
        decay_tau: float = 10.0,
    ) -> None:
        for label, value in (("tau", tau), ("penalty_tau", penalty_tau), ("decay_tau", decay_tau)):
            if not value > 0:  # also rejects NaN; float('inf') turns the decay off
                raise ValueError(f"PeakEwma.{label} must be > 0 seconds (got {value!r})")
        self.tau = tau
        self.penalty_tau = penalty_tau
        self.decay_tau = decay_tau
        self.cost = initial
        self.samples = 0
        self._stamp = 0.0
        self._penalty = 0.0
        self._penalty_stamp = 0.0

    def estimate(self, now: float) -> float:
        """The latency estimate at ``now``: ``cost`` decayed toward zero since the last sample."""
        cost = self.cost
        elapsed = now - self._stamp
        if elapsed <= 0 or not cost:
            return cost
        return cost * exp(-elapsed / self.decay_tau)

    def observe(self, rtt: float, now: float) -> None:
        """A measured latency. It starts from the decayed estimate: above it, it replaces it."""
        if self.samples == 0:
            self.cost = rtt
        else:
            base = self.estimate(now)
            if rtt > base:
                self.cost = rtt
            else:
                elapsed = now - self._stamp
                w = exp(-elapsed / self.tau) if elapsed > 0 else 1.0
                self.cost = base * w + rtt * (1.0 - w)
        self._stamp = now
        self.samples += 1

    def observe_at_least(self, elapsed: float, now: float) -> None:
        """An attempt was abandoned after ``elapsed`` seconds (a hedge that lost, a caller that
        gave up): its latency is at least that. Without this, an endpoint whose requests are
        always cancelled would never be measured and would keep looking new. A lower bound
        below the current estimate says nothing, so it leaves the estimate (and its decay)
        alone."""
        if self.samples == 0 or elapsed > self.estimate(now):
            self.observe(elapsed, now)

    def penalty(self, now: float) -> float:
        if not self._penalty:
            return 0.0
        elapsed = now - self._penalty_stamp
        if elapsed <= 0:
            return self._penalty
        return self._penalty * exp(-elapsed / self.penalty_tau)

    def observe_failure(self, elapsed: float, now: float, penalty: float) -> None:
        self._penalty = max(self.penalty(now), elapsed, penalty)
        self._penalty_stamp = now

    def clear_penalty(self) -> None:
        """Forget past failures (the endpoint's source says it is ready again)."""
        self._penalty = 0.0

    @property
    def known(self) -> bool:
        """True once the endpoint has answered or failed at least once."""
        return self.samples > 0 or self._penalty > 0

    def current(self, now: float) -> float:
        """Decayed latency estimate plus what is left of the failure penalty."""
        # estimate() inlined: this runs for every candidate of every selection
        cost = self.cost
        elapsed = now - self._stamp
        if elapsed > 0 and cost:
            cost *= exp(-elapsed / self.decay_tau)
        if self._penalty:
            cost += self.penalty(now)
        return cost
