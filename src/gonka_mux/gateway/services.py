"""The library services the gateway exposes over HTTP, all found on the Multiplexer.

Limits and metering run inside the Multiplexer (``mux.enable_limits`` / ``mux.enable_metering``,
or the ``[limits]`` / ``[metering]`` config sections): the gateway only says who the caller is
(``caller=<key id>``) and which rate-limit tier its key has (``mux_metadata["limit_tier"]``).
Jobs are ``mux.submit``; sessions and memory are ``mux.sessions`` / ``mux.memory``
(``mux.enable_sessions`` / ``mux.enable_memory``, or the ``[sessions]`` / ``[memory]`` sections).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .keys import ApiKey

__all__ = ["Services"]


class Services:
    """Where the gateway finds limits, metering, sessions, memory and jobs."""

    def __init__(self, mux: Any) -> None:
        self.mux = mux

    @property
    def sessions(self) -> Any:
        return getattr(self.mux, "sessions", None)

    @property
    def memory(self) -> Any:
        return getattr(self.mux, "memory", None)

    @property
    def limiter(self) -> Any:
        return getattr(self.mux, "limiter", None)

    @property
    def meter(self) -> Any:
        return getattr(self.mux, "meter", None)

    @property
    def has_jobs(self) -> bool:
        return callable(getattr(self.mux, "submit", None))

    async def job_runner(self) -> Any:
        """The Multiplexer's job runner, started (it resumes unfinished jobs when it starts)."""
        runner = getattr(self.mux, "jobs", None)
        if runner is None:
            runner = await self.mux.start_jobs()
        return runner

    def request_metadata(self, key: ApiKey) -> dict[str, Any]:
        return {"limit_tier": key.tier}

    def tiers(self) -> list[str] | None:
        """The rate-limit tiers keys may be given (None: no limiter, any name goes)."""
        limiter = self.limiter
        if limiter is None:
            return None
        return sorted(limiter.config.tiers)

    def default_tier(self) -> str:
        limiter = self.limiter
        return limiter.config.default_tier if limiter is not None else "default"
