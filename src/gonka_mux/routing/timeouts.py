"""Adaptive first-byte timeout: a per-attempt limit learned from the pool's own latencies."""

from __future__ import annotations

from dataclasses import dataclass

from .hedging import LatencyWindow

__all__ = ["AdaptiveTimeout"]


@dataclass(frozen=True)
class AdaptiveTimeout:
    """Per-attempt first-byte timeout: ``min(cap, max(floor, percentile(q) * factor))``.

    A fixed first-byte timeout must be set for the slowest request anyone will ever send, so a
    stuck endpoint holds a request that long before the retry starts. The pool's own recent
    time-to-first-byte window (``LatencyWindow``, the one hedging uses) says what "slow" means
    for this model now, and an attempt far beyond it is better retried elsewhere.

    The defaults are conservative because for LLMs the first byte of a non-streamed reply is
    the whole generation, whose length varies by orders of magnitude between requests: the
    tail (``percentile`` 0.99) times a wide margin (``factor`` 4), never below ``floor``
    (10 s), and only once ``min_samples`` (20) answers were seen. Until then, and whenever the
    learned value is larger, the configured ``cap`` (the plain first-byte timeout) applies, so
    this can only shorten the limit, never lengthen it.
    """

    percentile: float = 0.99
    factor: float = 4.0
    floor: float = 10.0
    min_samples: int = 20

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile <= 1.0:
            raise ValueError(
                f"AdaptiveTimeout.percentile must be in (0, 1] (got {self.percentile!r})"
            )
        if not self.factor >= 1.0:
            # below 1 the timeout would cut off requests the pool routinely answers
            raise ValueError(f"AdaptiveTimeout.factor must be >= 1 (got {self.factor!r})")
        if not 0.0 < self.floor < float("inf"):
            raise ValueError(
                f"AdaptiveTimeout.floor must be a finite number of seconds > 0 (got {self.floor!r})"
            )
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int):
            raise ValueError(
                f"AdaptiveTimeout.min_samples must be an integer (got {self.min_samples!r})"
            )
        if self.min_samples < 1:
            raise ValueError(f"AdaptiveTimeout.min_samples must be >= 1 (got {self.min_samples!r})")

    def for_window(self, window: LatencyWindow, cap: float) -> float:
        """The first-byte timeout for the next attempt, in seconds (``cap`` at most)."""
        if not cap > 0:
            raise ValueError(f"AdaptiveTimeout.for_window needs cap > 0 seconds (got {cap!r})")
        if len(window) < self.min_samples:
            return cap
        p = window.percentile(self.percentile)
        if p is None:
            return cap
        return min(cap, max(self.floor, p * self.factor))
