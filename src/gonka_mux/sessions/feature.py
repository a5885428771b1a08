"""Server-side sessions as a Multiplexer feature: the ``[sessions]`` section and the hooks for
``create(..., session_id=...)``.

Before: the stored history (trimmed to the model's context window) is prepended to the request.
After: the new request messages and the reply are appended, for streams once the stream has
completed. With ``mux_metadata={"session_mode": "affinity"}`` (what the framework adapters and
the gateway send for clients that resend the whole conversation themselves) the session id is
only a metering and affinity key: nothing is prepended or stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._exceptions import ConfigError
from .._postgres import is_postgres_url, redact_url
from ..features import ORDER_SESSIONS, Feature, Slot, register_feature, reject_leftover, section_of
from .base import SessionStore
from .disk import DiskSessionStore
from .manager import PreparedTurn, SessionManager
from .memory import MemorySessionStore
from .redis import RedisSessionStore

__all__ = ["SESSION_TURN", "SessionsFeature", "session_store"]

#: the turn prepared for a request (committed with the reply after it)
SESSION_TURN: Slot[PreparedTurn] = Slot("sessions.turn")


def session_store(store: Any) -> SessionStore:
    """A session store from ``None``/``"disk"`` (the default), ``"memory"``, a ``redis://``
    or ``postgresql://`` URL, or a store object (returned as is)."""
    if store is None or store == "disk":
        return DiskSessionStore()
    if store == "memory":
        return MemorySessionStore()
    if isinstance(store, str) and store.startswith(("redis://", "rediss://", "unix://")):
        return RedisSessionStore(store)
    if is_postgres_url(store):
        from .postgres import PostgresSessionStore  # psycopg is imported only when used

        return PostgresSessionStore(store)
    if isinstance(store, str):
        raise ValueError(
            f"unknown session store {redact_url(store)!r}: use 'memory', 'disk', a redis:// "
            "or postgresql:// URL, or a store"
        )
    return store  # type: ignore[no-any-return]


@register_feature
class SessionsFeature(Feature):
    name = "sessions"
    sections = ("sessions",)
    order = ORDER_SESSIONS  # after tiering (which picks the model), before limits

    def __init__(
        self,
        store: Any = None,
        *,
        ttl: float | None = None,
        context_windows: Mapping[str, int] | None = None,
        **manager_options: Any,
    ) -> None:
        self._store = session_store(store)
        self._ttl = ttl
        self._windows = dict(context_windows or {})
        self._options = manager_options
        self.manager: SessionManager | None = None
        self._cleanup_started = False

    @classmethod
    def from_config(cls, data: Mapping[str, Any], source: str) -> SessionsFeature | None:
        section = section_of(data, "sessions", source)
        if section is None:
            return None
        store = section.pop("store", "disk")
        path = section.pop("path", None)
        if path is not None and store == "disk":
            # path may also be a postgresql:// URL, as everywhere a file path is accepted
            store = path if is_postgres_url(path) else DiskSessionStore(path)
        ttl = section.pop("ttl", None)
        windows = section.pop("context_windows", None)
        reject_leftover(
            section,
            source,
            "sessions",
            "store ('memory', 'disk', a redis:// or postgresql:// URL), path (a file or a "
            "postgresql:// URL), ttl, context_windows",
        )
        try:
            return cls(store, ttl=ttl, context_windows=windows)
        except ValueError as exc:
            raise ConfigError(str(exc), source=source, key="sessions") from None

    def install(self, mux: Any) -> SessionManager:
        # the endpoints' own context windows, overridden by the ones given
        windows = {
            model: ep.context_window
            for ep in mux.endpoints
            if ep.context_window
            for model in ep.models
        }
        windows.update(self._windows)
        self.manager = SessionManager(
            self._store, ttl=self._ttl, context_windows=windows, **self._options
        )
        mux.add_feature(self)
        mux.sessions = self.manager
        return self.manager

    async def before(self, ctx: Any) -> None:
        sid = ctx.options.session_id
        manager = self.manager
        if not sid or ctx.kind != "chat" or manager is None:
            return
        if not self._cleanup_started:  # the TTL sweeper needs the running loop
            self._cleanup_started = True
            manager.start()
        metadata = ctx.options.metadata or {}
        if metadata.get("session_mode", "history") == "affinity":
            return
        params = ctx.params
        turn = await manager.prepare(
            sid,
            params.get("messages") or [],
            str(ctx.model),
            max_tokens=params.get("max_completion_tokens") or params.get("max_tokens"),
            tools=params.get("tools"),
        )
        ctx.params = {**params, "messages": turn.messages}
        ctx.set(SESSION_TURN, turn)

    async def after(self, ctx: Any) -> None:
        turn = ctx.get(SESSION_TURN)
        if turn is None or ctx.status != "ok" or self.manager is None:
            return  # a failed, cancelled or unfinished turn stores nothing
        if ctx.stream:
            reply: Any = ctx.stream_message
        else:
            choices = getattr(ctx.response, "choices", None)
            if not choices:
                return
            reply = choices[0].message.model_dump(exclude_none=True)
        if reply:
            await self.manager.commit(turn, reply)

    async def aclose(self) -> None:
        if self.manager is not None:
            await self.manager.aclose()
