"""Background jobs with webhooks as a Multiplexer feature: the ``[webhooks]`` section, the job
store and the runner behind ``mux.submit()``.

The runner starts on first use (``submit`` / ``start_jobs``) on the Multiplexer's loop and
resumes what a previous process left unfinished. Closing the Multiplexer stops it and closes
the job store the feature opened (a store you passed in stays yours to close).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._exceptions import ConfigError
from ..features import Feature, register_feature, section_of
from .delivery import DeliveryPolicy
from .jobs import JobRunner
from .store import JobStore, open_job_store

__all__ = ["JobsFeature"]

Execute = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

_KEYS = (
    "path, max_concurrency, lease, poll_interval, max_attempts, initial, max_delay, jitter, timeout"
)


@register_feature
class JobsFeature(Feature):
    name = "jobs"
    sections = ("webhooks",)
    hooks = False

    def __init__(
        self,
        store: JobStore | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        **runner_options: Any,
    ) -> None:
        if isinstance(store, (str, os.PathLike)):  # a path or postgresql:// URL given as the store
            store, path = None, store
        self._store = store
        self._path = path
        self.runner_options = runner_options  # JobRunner keyword arguments (settable before start)
        self._opened: JobStore | None = None  # a store this feature opened (and closes)
        self._execute: Execute | None = None
        self.runner: JobRunner | None = None

    @classmethod
    def from_config(cls, data: Mapping[str, Any], source: str) -> JobsFeature | None:
        section = section_of(data, "webhooks", source)
        if section is None:
            return None
        path = section.pop("path", None)
        concurrency = section.pop("max_concurrency", None)
        # Shared (postgresql://) stores only: claim lease and poll period, in seconds.
        timing = {name: section.pop(name) for name in ("lease", "poll_interval") if name in section}
        try:
            policy = DeliveryPolicy(**section)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc), source=source, key="webhooks", expected=_KEYS) from None
        options: dict[str, Any] = {"delivery_policy": policy}
        for name, value in timing.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(
                    f"got {value!r}",
                    source=source,
                    key=f"webhooks.{name}",
                    expected="a number of seconds > 0",
                )
            options[name] = value
        if concurrency is not None:
            if isinstance(concurrency, bool) or not isinstance(concurrency, int):
                raise ConfigError(
                    f"got {concurrency!r}",
                    source=source,
                    key="webhooks.max_concurrency",
                    expected="an integer",
                )
            options["max_concurrency"] = concurrency
        return cls(path=path, **options)

    def install(self, mux: Any) -> JobsFeature:
        self._execute = mux.execute_job
        mux.add_feature(self)
        return self

    @property
    def started(self) -> bool:
        return self.runner is not None

    async def start(self) -> JobRunner:
        """The runner, started on first call (resuming pending jobs and deliveries)."""
        if self.runner is None:
            if self._execute is None:
                raise RuntimeError("the jobs feature is not installed on a Multiplexer")
            store = self._store
            if store is None:
                # ``path`` may be a postgresql:// URL: runners on many hosts share the jobs.
                store = self._opened = open_job_store(self._path)
            runner = JobRunner(store, self._execute, **self.runner_options)
            await runner.start()
            self.runner = runner
        return self.runner

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.aclose()
        if self._opened is not None:
            self._opened.close()
            self._opened = None
