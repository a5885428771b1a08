"""Server-side chat history for ``create(..., session_id=...)``.

A turn is two calls around the model request::

    turn = await sessions.prepare("s1", request_messages, model, max_tokens=256)
    reply = await <send turn.messages to the model>          # streamed or not
    await sessions.commit(turn, reply.choices[0].message)    # after the stream completes

``prepare`` returns the stored history (trimmed to the model's context window) with the new
request messages; ``commit`` appends the new messages and the reply to the stored log in one
atomic append. The stored log is never truncated.

Concurrency: no lock is held while the model answers. Two turns prepared at the same time on
one session both see the history as it was, and both are stored, each turn contiguous, in the
order they commit; the later one may not have seen the earlier one's reply. Nothing is lost, in
one process or across processes and hosts (the store's append is atomic). To run the turns of a
session one after another instead (in one process), wrap each in ``async with
sessions.serialized(session_id):``.

System prompt: kept once, at the top. The newest one the request carries wins and is stored
(only when it changed); a request without one reuses the stored one.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import json
import logging
import math
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gonka_mux._exceptions import ConfigError
from gonka_mux.sessions.base import (
    InvalidSessionData,
    Message,
    SessionError,
    SessionExists,
    SessionStore,
    check_session_id,
)
from gonka_mux.sessions.disk import DiskSessionStore
from gonka_mux.sessions.history import (
    TokenEstimator,
    as_message,
    estimate_tokens,
    estimate_tools_tokens,
    for_sending,
    new_messages,
    same_messages,
    split_instructions,
    trim_history,
)

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_TTL",
    "EXPORT_FORMAT",
    "PreparedTurn",
    "SessionManager",
    "SessionNotFound",
    "session_ttl_from_env",
]

log = logging.getLogger("gonka_mux.sessions")

DEFAULT_TTL = 3600.0
DEFAULT_CONTEXT_WINDOW = 32_768
EXPORT_FORMAT = "gonka_mux.session"
EXPORT_VERSION = 1
# The system prompt lives in the session's key space, not in the log, so a mid-conversation
# system message stays where it was said. Keys under "_session/" are reserved for this module.
_INSTRUCTIONS_KEY = "_session/instructions"
_RESERVED_PREFIX = "_session/"


class SessionNotFound(SessionError, LookupError):
    """The session does not exist (never created, deleted, or expired)."""


@dataclass
class PreparedTurn:
    """What ``prepare`` decided for one turn; hand it back to ``commit``."""

    session_id: str
    model: str
    messages: list[Message]
    """The messages to send: system prompt, trimmed history, new request messages."""
    new_messages: list[Message]
    """Request messages not stored yet; ``commit`` appends them before the reply."""
    instructions: list[Message] | None
    """A changed system prompt to store on commit, else ``None``."""
    history_length: int
    """Messages in the stored log when the turn was prepared."""
    dropped: int
    """Stored messages left out of ``messages`` to fit the context window."""
    estimated_tokens: int
    committed: bool = False


def session_ttl_from_env(environ: Mapping[str, str] | None = None) -> float:
    """``GONKA_SESSION_TTL`` in seconds (default 3600; 0 keeps sessions forever)."""
    raw = (os.environ if environ is None else environ).get("GONKA_SESSION_TTL", "").strip()
    if not raw:
        return DEFAULT_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = math.nan
    if not math.isfinite(ttl) or ttl < 0:
        raise ConfigError(
            f"invalid value {raw!r}",
            source="<env>",
            key="GONKA_SESSION_TTL",
            expected="a number of seconds >= 0 (0 keeps sessions forever)",
        )
    return ttl


class SessionManager:
    """Chat sessions over a :class:`~gonka_mux.sessions.base.SessionStore`.

    ``store``: defaults to a :class:`~gonka_mux.sessions.disk.DiskSessionStore` in the state
    directory. ``ttl``: seconds of inactivity after which a session is deleted (``None``: the
    ``GONKA_SESSION_TTL`` environment variable, else 3600; ``0``: never). Expiry is enforced on
    read and by a background task started with :meth:`start`.
    ``context_windows``: tokens per model id; other models get ``default_context_window``.
    ``reply_reserve``: tokens kept free for the answer when the request gives no ``max_tokens``.
    ``token_estimator``: tokens of one message (default: characters / 4 + overhead).
    """

    def __init__(
        self,
        store: SessionStore | None = None,
        *,
        ttl: float | None = None,
        context_windows: Mapping[str, int] | None = None,
        default_context_window: int = DEFAULT_CONTEXT_WINDOW,
        reply_reserve: int = 1024,
        cleanup_interval: float | None = None,
        token_estimator: TokenEstimator = estimate_tokens,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = session_ttl_from_env() if ttl is None else float(ttl)
        if not math.isfinite(self.ttl) or self.ttl < 0:
            raise ConfigError(f"ttl must be >= 0 seconds (0 = never expire), got {ttl!r}")
        self.context_windows = dict(context_windows or {})
        for model, window in [("<default>", default_context_window), *self.context_windows.items()]:
            if not isinstance(window, int) or window <= 0:
                raise ConfigError(
                    f"context window of {model!r} must be a positive int, got {window!r}"
                )
        if store is None:  # validated everything first: no file is created for a bad config
            store = DiskSessionStore(clock=clock)
        self.store = store
        self.default_context_window = default_context_window
        self.reply_reserve = reply_reserve
        self.cleanup_interval = cleanup_interval or min(max(self.ttl / 4, 1.0), 60.0)
        self._estimate = token_estimator
        self._clock = clock
        self._cleanup_task: asyncio.Task[None] | None = None
        self._turn_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def __repr__(self) -> str:
        return f"SessionManager(store={self.store!r}, ttl={self.ttl:g})"

    # -- turns -------------------------------------------------------------------------------

    async def prepare(
        self,
        session_id: str,
        messages: Sequence[Any],
        model: str,
        *,
        max_tokens: int | None = None,
        tools: Sequence[Any] | None = None,
    ) -> PreparedTurn:
        """Build the messages to send for a turn on ``session_id`` (see the module docstring)."""
        check_session_id(session_id)
        request = [as_message(m) for m in messages]
        stored_instructions, history = await self._load(session_id)
        asked_instructions, rest = split_instructions(request)
        instructions = asked_instructions or stored_instructions
        changed = (
            asked_instructions
            if asked_instructions and not same_messages(asked_instructions, stored_instructions)
            else None
        )
        fresh = new_messages(history, rest)

        window = self.context_windows.get(model, self.default_context_window)
        reserve = max_tokens if max_tokens else min(self.reply_reserve, window // 4)
        fixed = sum(self._estimate(m) for m in (*instructions, *fresh))
        budget = window - reserve - fixed - estimate_tools_tokens(tools)
        kept, dropped = trim_history(history, budget, self._estimate)
        if dropped:
            log.debug(
                "session %s: sending %d of %d stored messages to fit %s's %d-token window",
                session_id, len(kept), len(history), model, window,
            )  # fmt: skip
        send = [
            *(m if asked_instructions else for_sending(m) for m in instructions),
            *(for_sending(m) for m in kept),
            *fresh,
        ]
        return PreparedTurn(
            session_id=session_id,
            model=model,
            messages=send,
            new_messages=fresh,
            instructions=changed,
            history_length=len(history),
            dropped=dropped,
            estimated_tokens=fixed + sum(self._estimate(m) for m in kept),
        )

    @contextlib.asynccontextmanager
    async def serialized(self, session_id: str) -> AsyncIterator[None]:
        """Opt-in: run turns on one session one after another in this process.

        Hold it around ``prepare``, the model call and ``commit``; a concurrent turn on the same
        session then waits and sees the previous reply. Without it turns run concurrently and
        are stored in commit order (see the module docstring).
        """
        lock = self._turn_locks.get(session_id)
        if lock is None:
            lock = self._turn_locks[session_id] = asyncio.Lock()
        async with lock:
            yield

    async def commit(self, turn: PreparedTurn, reply: Any | Sequence[Any]) -> None:
        """Store the turn: a changed system prompt, the new request messages and the reply (an
        assistant message dict or openai message object, or a list of them), in one append."""
        if turn.committed:
            raise SessionError(f"This turn of session {turn.session_id!r} is already committed.")
        replies = list(reply) if isinstance(reply, (list, tuple)) else [reply]
        appended = [*turn.new_messages, *(as_message(r) for r in replies)]
        if turn.instructions is not None:
            await self.store.put(turn.session_id, _INSTRUCTIONS_KEY, _dump(turn.instructions))
        await self.store.append_messages(turn.session_id, appended)
        turn.committed = True

    # -- management API ------------------------------------------------------------------------

    async def get(self, session_id: str) -> list[Message] | None:
        """The stored conversation (system prompt first), or ``None`` for no live session."""
        check_session_id(session_id)
        if await self._expired_or_missing(session_id):
            return None
        instructions, history = await self._read(session_id)
        return [*instructions, *history]

    async def delete(self, session_id: str) -> bool:
        check_session_id(session_id)
        return await self.store.delete_session(session_id)

    async def cleanup(self) -> list[str]:
        """Delete the sessions idle for longer than the TTL now; returns their ids."""
        if not self.ttl:
            return []
        return await self.store.expire(self.ttl)

    async def export(self, session_id: str) -> dict[str, Any]:
        """A JSON-serializable, versioned document of the session (for :meth:`import_`)."""
        check_session_id(session_id)
        if await self._expired_or_missing(session_id):
            raise SessionNotFound(f"No live session {session_id!r} to export.")
        instructions, history = await self._read(session_id)
        values = await self.store.scan(session_id)
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "session_id": session_id,
            "exported_at": self._clock(),
            "instructions": instructions,
            "messages": history,
            "values": {
                key: base64.b64encode(value).decode("ascii")
                for key, value in values
                if not key.startswith(_RESERVED_PREFIX)
            },
        }

    async def import_(
        self, data: Mapping[str, Any], *, session_id: str | None = None, overwrite: bool = False
    ) -> str:
        """Restore an exported session (under ``session_id`` if given). An existing session with
        that id is replaced only with ``overwrite=True``. Returns the session id."""
        instructions, messages, values, target = _parse_export(data, session_id)
        if await self.store.last_active(target) is not None:
            if not overwrite:
                raise SessionExists(
                    f"Session {target!r} already exists; pass overwrite=True to replace it, or "
                    "session_id= to import under another id."
                )
            await self.store.delete_session(target)
        items = list(values.items())
        if instructions:
            items.append((_INSTRUCTIONS_KEY, _dump(instructions)))
        if items:
            await self.store.put_many(target, items)
        if messages or not items:
            await self.store.append_messages(target, messages)
        return target

    # -- TTL -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background expiry task on the running loop (idempotent; no-op if ttl=0)."""
        if self.ttl and (self._cleanup_task is None or self._cleanup_task.done()):
            self._cleanup_task = asyncio.get_running_loop().create_task(
                self._cleanup_loop(), name="gonka_mux.sessions.cleanup"
            )

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cleanup_interval)
            try:
                gone = await self.cleanup()
            except Exception:  # a store outage must not end the loop; the next pass retries
                log.warning("session expiry pass failed; retrying later", exc_info=True)
            else:
                if gone:
                    log.debug("expired %d idle session(s)", len(gone))

    async def aclose(self) -> None:
        """Stop the expiry task and close the store."""
        task, self._cleanup_task = self._cleanup_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.aclose()

    async def __aenter__(self) -> SessionManager:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing ------------------------------------------------------------------------------

    async def _expired_or_missing(self, session_id: str) -> bool:
        last = await self.store.last_active(session_id)
        if last is None:
            return True
        if self.ttl and self._clock() - last > self.ttl:
            # The store re-checks atomically, so a session written meanwhile survives.
            await self.store.expire(self.ttl)
            return await self.store.last_active(session_id) is None
        return False

    async def _load(self, session_id: str) -> tuple[list[Message], list[Message]]:
        if await self._expired_or_missing(session_id):
            return [], []
        return await self._read(session_id)

    async def _read(self, session_id: str) -> tuple[list[Message], list[Message]]:
        raw = await self.store.get(session_id, _INSTRUCTIONS_KEY)
        instructions = json.loads(raw) if raw else []
        return instructions, await self.store.load_messages(session_id)

    # Last, so that ``list`` in the annotations above still means the builtin.
    async def list(self) -> builtins.list[str]:
        """Ids of the live sessions (an expiry pass runs first)."""
        await self.cleanup()
        return await self.store.sessions()


def _dump(messages: Sequence[Message]) -> bytes:
    return json.dumps(list(messages), ensure_ascii=False, separators=(",", ":")).encode()


def _parse_export(
    data: Mapping[str, Any], session_id: str | None
) -> tuple[list[Message], list[Message], dict[str, bytes], str]:
    def bad(reason: str) -> InvalidSessionData:
        return InvalidSessionData(f"Not a session export document: {reason}.")

    if not isinstance(data, Mapping) or data.get("format") != EXPORT_FORMAT:
        raise bad(f"expected a mapping with format={EXPORT_FORMAT!r}")
    if data.get("version") != EXPORT_VERSION:
        raise bad(f"version {data.get('version')!r} is not supported (this build reads 1)")
    target = check_session_id(session_id if session_id is not None else data.get("session_id"))
    instructions = data.get("instructions") or []
    messages = data.get("messages")
    values = data.get("values") or {}
    if not isinstance(instructions, list) or not isinstance(messages, list):
        raise bad("'instructions' and 'messages' must be lists of message dicts")
    if not isinstance(values, Mapping):
        raise bad("'values' must map keys to base64 strings")
    try:
        decoded = {str(k): base64.b64decode(v, validate=True) for k, v in values.items()}
    except (TypeError, ValueError) as exc:
        raise bad(f"a value is not valid base64 ({exc})") from None
    parsed = [as_message(m) for m in instructions], [as_message(m) for m in messages]
    return parsed[0], parsed[1], decoded, target
