"""Peak-EWMA latency estimate (Finagle/Linkerd/tower style), its staleness, and a fading failure
penalty."""

from __future__ import annotations

from math import exp

__all__ = ["PeakEwma"]


class PeakEwma:
    """Latency estimate that jumps up at once on a slow sample and is forgotten when stale.

    Samples: a sample above the current estimate replaces it at once (the *peak*), so one slow
    answer makes an endpoint look slow right away; a lower sample is blended in with time
    constant ``tau``.

    Time: an estimate that has not been refreshed for a while is *stale*
    (:meth:`stale`), and routing no longer holds it against the endpoint: a stale endpoint
    competes as an equal of the best one, at its weight's share. Without this, an endpoint
    that answered once slowly (a cold connection) would look slow for ever at light load,
    never be picked and never be measured again. tower's PeakEwma decays the estimate toward
    zero for the same reason; a decayed estimate, though, makes every idle endpoint look
    *better* than the busy ones, which turns weighted shares into round robin at light load.
    Staleness re-explores without that bias. How long an estimate stays fresh scales with the
    latency it records (re-measuring costs about one request's latency): ``DECAY_SCALE`` of its
    own latencies, at least ``DECAY_FLOOR`` s, at most ``decay_tau`` s. A 60 ms cold-connection
    outlier among 20 ms endpoints is re-measured after 0.6 s; a 5 s answer after 10 s. A 10x
    slower endpoint costs at light load about one slow request per ten of its latencies.

    Failures do not count as latency samples; they add a *penalty* (at least ``penalty``
    seconds) that fades with time constant ``penalty_tau``. So a fast 429 or 500 makes the
    endpoint look expensive (plain EWMA would send more traffic to the endpoint that fails
    fastest), and an endpoint that stopped failing is tried again after a few ``penalty_tau``
    without anyone having to probe it.

    ``cost`` is the estimate as of the last sample; ``current(now)`` adds what is left of the
    penalty (what routing uses).
    """

    DECAY_SCALE = 10.0
    DECAY_FLOOR = 0.1

    __slots__ = (
        "_fresh_for",
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
            if not value > 0:  # also rejects NaN; float('inf') means "never stale"
                raise ValueError(f"PeakEwma.{label} must be > 0 seconds (got {value!r})")
        self.tau = tau
        self.penalty_tau = penalty_tau
        self.decay_tau = decay_tau
        self.cost = initial
        self.samples = 0
        self._stamp = 0.0
        self._penalty = 0.0
        self._penalty_stamp = 0.0
        self._fresh_for = decay_tau

    def fresh_for(self) -> float:
        """How long the current estimate counts after its last sample, in seconds."""
        return min(self.decay_tau, max(self.DECAY_FLOOR, self.DECAY_SCALE * self.cost))

    def estimate(self, now: float) -> float:
        """The latency estimate (the last stored one; staleness is :meth:`stale`)."""
        return self.cost

    def stale(self, now: float) -> bool:
        """True when the estimate is old enough not to hold against the endpoint any more."""
        return self.samples > 0 and now - self._stamp > self._fresh_for

    def observe(self, rtt: float, now: float) -> None:
        """A measured latency: above the estimate (or on a stale one), it replaces it."""
        fresh = self.samples > 0 and now - self._stamp <= self._fresh_for
        previous = self.cost
        if not fresh or rtt > self.cost:
            self.cost = rtt
        else:
            elapsed = now - self._stamp
            w = exp(-elapsed / self.tau) if elapsed > 0 else 1.0
            self.cost = self.cost * w + rtt * (1.0 - w)
        self._stamp = now
        self.samples += 1
        # How long it counts scales with the endpoint's usual latency, not with one outlier: a
        # single slow answer of a fast endpoint (a GC pause, a cold connection) is re-measured
        # within ~10 of its usual latencies, so the busier endpoints (which see more outliers)
        # do not lose their share at light load; a slow endpoint stays slow once measured.
        basis = min(previous, self.cost) if fresh else self.cost
        self._fresh_for = min(self.decay_tau, max(self.DECAY_FLOOR, self.DECAY_SCALE * basis))

    def observe_at_least(self, elapsed: float, now: float) -> None:
        """An attempt was abandoned after ``elapsed`` seconds (a hedge that lost, a caller that
        gave up): its latency is at least that. Without this, an endpoint whose requests are
        always cancelled would never be measured and would keep looking new. A lower bound
        below the current estimate says nothing, so it leaves the estimate alone."""
        if self.samples == 0 or elapsed > self.cost or self.stale(now):
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
        """Latency estimate plus what is left of the failure penalty."""
        if self._penalty:
            return self.cost + self.penalty(now)
        return self.cost
