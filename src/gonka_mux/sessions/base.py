"""The session store contract: an ordered key-value space per session plus an append-only
message log, with last-activity tracking for TTL expiry.

Two layers use it: :class:`~gonka_mux.sessions.manager.SessionManager` (chat history for
``create(..., session_id=...)``) and the LangGraph checkpointer (checkpoints as ordered keys).

Guarantees every backend gives (the shared test suite checks them):

- ``append_messages`` is atomic: all the messages land, contiguous, or none do, also when several
  processes (disk) or hosts (Redis) append to one session at once; appends never lose each other.
- ``put_many`` is atomic. ``scan`` returns keys in code-point order (UTF-8 byte order).
- A write (append, put, delete of a key) marks the session active; ``touch`` does too, for an
  existing session only. ``expire(ttl)`` removes the sessions idle for more than ``ttl`` seconds.
- Committed writes survive the writing process being killed (disk and Redis backends).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from gonka_mux._exceptions import GonkaMuxError

__all__ = [
    "InvalidSessionData",
    "SessionError",
    "SessionExists",
    "SessionStore",
    "check_key",
    "check_session_id",
    "decode_message",
    "encode_message",
    "prefix_end",
]

Message = dict[str, Any]


class SessionError(GonkaMuxError):
    """Base class of the session layer's errors."""


class InvalidSessionData(SessionError, ValueError):
    """A session id, key, message or import document is malformed; the message says how."""


class SessionExists(SessionError):
    """``import_`` would overwrite a session that already has data (pass ``overwrite=True``)."""


@runtime_checkable
class SessionStore(Protocol):
    """Storage for sessions. Every method is a coroutine; values are bytes, messages are OpenAI
    chat message dicts (stored as JSON)."""

    async def put(self, session_id: str, key: str, value: bytes) -> None:
        """Set one key of the session (creates the session)."""

    async def put_many(self, session_id: str, items: Sequence[tuple[str, bytes]]) -> None:
        """Set several keys atomically."""

    async def get(self, session_id: str, key: str) -> bytes | None:
        """The value of a key, or ``None``."""

    async def scan(self, session_id: str, prefix: str = "") -> list[tuple[str, bytes]]:
        """``(key, value)`` pairs whose key starts with ``prefix``, sorted by key."""

    async def delete(self, session_id: str, key: str) -> bool:
        """Remove one key; ``False`` when it was absent."""

    async def append_messages(self, session_id: str, messages: Sequence[Mapping[str, Any]]) -> int:
        """Append messages atomically (creates the session); returns the log's new length."""

    async def load_messages(self, session_id: str) -> list[Message]:
        """The whole message log, oldest first (``[]`` for an unknown session)."""

    async def touch(self, session_id: str) -> None:
        """Mark an existing session active now (no-op for an unknown one)."""

    async def last_active(self, session_id: str) -> float | None:
        """When the session was last written or touched (``time.time()`` scale), or ``None``."""

    async def sessions(self) -> list[str]:
        """Ids of the stored sessions, sorted."""

    async def delete_session(self, session_id: str) -> bool:
        """Remove the session's log and keys; ``False`` when it did not exist."""

    async def expire(self, ttl: float) -> list[str]:
        """Remove the sessions idle for more than ``ttl`` seconds; returns their ids."""

    async def aclose(self) -> None:
        """Release connections. Idempotent."""


def check_session_id(session_id: object) -> str:
    if not isinstance(session_id, str) or not session_id:
        raise InvalidSessionData(f"session_id must be a non-empty str, not {session_id!r}.")
    if len(session_id) > 512:
        raise InvalidSessionData("session_id is longer than 512 characters; use a shorter id.")
    return session_id


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidSessionData(f"A session key must be a non-empty str, not {key!r}.")
    return key


def encode_message(message: Mapping[str, Any]) -> str:
    """One message as compact JSON; rejects what could not be sent back to a model later."""
    if not isinstance(message, Mapping):
        raise InvalidSessionData(
            f"A message must be a dict like {{'role': 'user', 'content': '...'}}, "
            f"not {type(message).__name__}."
        )
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise InvalidSessionData(f"A message needs a 'role' string; got keys {sorted(message)}.")
    try:
        return json.dumps(dict(message), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidSessionData(f"A {role!r} message is not JSON-serializable: {exc}") from None


def decode_message(data: str | bytes) -> Message:
    message: Message = json.loads(data)
    return message


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (``None`` when
    there is none), so a prefix scan is the half-open range ``[prefix, prefix_end)``."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            step = 0xE000 if last == 0xD7FF else last + 1  # skip the surrogate block
            return "".join(chars) + chr(step)
    return None
