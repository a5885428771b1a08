"""Hedged requests: when no first byte arrives in time, ask a second endpoint as well."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HedgePolicy", "LatencyWindow"]


class LatencyWindow:
    """The last ``size`` time-to-first-byte samples of a pool, with a cached percentile."""

    __slots__ = ("_buf", "_cached", "_dirty", "_i", "size")

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._buf: list[float] = []
        self._i = 0
        self._dirty = 0
        self._cached: dict[float, float] = {}

    def add(self, value: float) -> None:
        if len(self._buf) < self.size:
            self._buf.append(value)
        else:
            self._buf[self._i] = value
            self._i = (self._i + 1) % self.size
        self._dirty += 1

    def __len__(self) -> int:
        return len(self._buf)

    def percentile(self, q: float) -> float | None:
        if not self._buf:
            return None
        # Re-sorting 256 floats costs ~10 us; do it every 16 new samples, not on every request.
        if self._dirty >= 16 or q not in self._cached:
            ordered = sorted(self._buf)
            self._cached = {}
            self._dirty = 0
            self._cached[q] = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
        return self._cached[q]


@dataclass(frozen=True)
class HedgePolicy:
    """Opt-in hedging.

    ``delay``: a fixed delay in seconds, or None to use the pool's ``percentile`` of recent
    time-to-first-byte (clamped to [``min_delay``, ``max_delay``]; ``max_delay`` until
    ``min_samples`` samples exist). At most ``max_hedges`` extra attempts per request; each one
    also draws on the retry budget, so hedging cannot double the load on a slow fleet.
    """

    delay: float | None = None
    percentile: float = 0.95
    min_delay: float = 0.01
    max_delay: float = 2.0
    min_samples: int = 8
    max_hedges: int = 1

    def delay_for(self, window: LatencyWindow) -> float:
        if self.delay is not None:
            return self.delay
        if len(window) < self.min_samples:
            return self.max_delay
        p = window.percentile(self.percentile) or self.max_delay
        return min(self.max_delay, max(self.min_delay, p))
