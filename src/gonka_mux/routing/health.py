"""Endpoint health: cooldowns, outlier ejection and half-open probes.

States, per endpoint:

- ``healthy``: selectable.
- ``cooling``: selectable again at ``until``. A 429 cools for its ``Retry-After`` (or
  ``rate_limit_cooldown``); a 5xx, connection error, timeout or malformed answer cools for
  ``failure_cooldown * 2**(n-1)`` after the n-th consecutive failure, capped.
- ``ejected``: after ``eject_after`` consecutive failures; out of rotation for
  ``ejection_time * 2**(k-1)`` after its k-th ejection in a row, capped.
- ``quarantined``: the endpoint refused our credentials (401/402/403): out of rotation for
  ``quarantine_time`` (it will not fix itself soon), then probed like an ejected endpoint.
- ``probing``: an ejection or quarantine has expired; exactly one request at a time may go
  through (the half-open probe). Success makes the endpoint healthy, failure ejects it again
  for longer.

``reset()`` (what an endpoint source's "ready" does) clears every state at once.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EndpointHealth", "HealthPolicy"]


@dataclass(frozen=True)
class HealthPolicy:
    failure_cooldown: float = 0.5
    max_failure_cooldown: float = 30.0
    rate_limit_cooldown: float = 1.0
    max_retry_after: float = 300.0
    eject_after: int = 5
    ejection_time: float = 10.0
    max_ejection_time: float = 300.0
    quarantine_time: float = 300.0

    def __post_init__(self) -> None:
        if self.eject_after < 1:
            raise ValueError("HealthPolicy.eject_after must be >= 1")
        for name in ("failure_cooldown", "rate_limit_cooldown", "ejection_time", "quarantine_time"):
            if getattr(self, name) < 0:
                raise ValueError(f"HealthPolicy.{name} must be >= 0")


class EndpointHealth:
    __slots__ = (
        "consecutive_failures",
        "ejected_until",
        "ejections",
        "policy",
        "probe_inflight",
        "quarantine_reason",
        "quarantined_until",
        "until",
    )

    def __init__(self, policy: HealthPolicy) -> None:
        self.policy = policy
        self.until = 0.0  # cooldown end (monotonic)
        self.ejected_until = 0.0
        self.ejections = 0  # consecutive ejections, for the growing ejection time
        self.consecutive_failures = 0
        self.probe_inflight = False
        self.quarantined_until = 0.0
        self.quarantine_reason: str | None = None

    # -- queries --------------------------------------------------------------------------
    def state(self, now: float) -> str:
        if self.quarantine_reason is not None:
            if now < self.quarantined_until:
                return "quarantined"
            return "probing"
        if self.ejections:
            if now < self.ejected_until:
                return "ejected"
            return "probing"
        if now < self.until:
            return "cooling"
        return "healthy"

    def selectable(self, now: float) -> bool:
        if self.quarantine_reason is not None:
            return now >= self.quarantined_until and not self.probe_inflight
        if self.ejections:
            return now >= self.ejected_until and not self.probe_inflight
        return now >= self.until

    def available_at(self, now: float) -> float:
        """When this endpoint can next be selected (``now`` if it can be now)."""
        if self.quarantine_reason is not None:
            return max(now, self.quarantined_until)
        if self.ejections:
            return max(now, self.ejected_until)
        return max(now, self.until)

    # -- transitions ----------------------------------------------------------------------
    def begin(self, now: float) -> bool:
        """Called when a request is sent; returns True if this request is the half-open probe."""
        if self.quarantine_reason is not None:
            if now >= self.quarantined_until:
                self.probe_inflight = True
                return True
            return False
        if self.ejections and now >= self.ejected_until:
            self.probe_inflight = True
            return True
        return False

    def on_success(self) -> None:
        self.quarantine_reason = None
        self.quarantined_until = 0.0
        self.consecutive_failures = 0
        self.ejections = 0
        self.probe_inflight = False
        self.until = 0.0

    def on_rate_limited(self, now: float, retry_after: float | None) -> None:
        p = self.policy
        wait = p.rate_limit_cooldown if retry_after is None else min(retry_after, p.max_retry_after)
        self.until = max(self.until, now + wait)
        # A 429 says "busy", not "broken": it neither ejects nor fails a probe for long.
        if self.probe_inflight:
            self.probe_inflight = False
            self.ejected_until = max(self.ejected_until, now + wait)

    def on_failure(self, now: float) -> None:
        p = self.policy
        self.consecutive_failures += 1
        was_probe = self.probe_inflight
        self.probe_inflight = False
        if was_probe or self.consecutive_failures >= p.eject_after:
            self.ejections += 1
            span = min(p.ejection_time * 2 ** (self.ejections - 1), p.max_ejection_time)
            self.ejected_until = now + span
        else:
            span = min(
                p.failure_cooldown * 2 ** (self.consecutive_failures - 1), p.max_failure_cooldown
            )
            self.until = max(self.until, now + span)

    def quarantine(self, now: float, reason: str) -> bool:
        """Out of rotation for ``quarantine_time``: our credentials were refused. Returns True
        when the endpoint was not quarantined already (so the caller logs it once)."""
        first = self.quarantine_reason is None
        self.quarantine_reason = reason
        self.probe_inflight = False
        self.quarantined_until = now + self.policy.quarantine_time
        return first

    def on_abandoned(self) -> None:
        """The request was cancelled (a lost hedge, a caller gone) before an answer."""
        self.probe_inflight = False

    def reset(self) -> None:
        self.on_success()
        self.ejected_until = 0.0
