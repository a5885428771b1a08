"""In-process session store: for tests and single-process programs that need no persistence."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gonka_mux.sessions.base import (
    Message,
    check_key,
    check_session_id,
    decode_message,
    encode_message,
)

__all__ = ["MemorySessionStore"]


@dataclass
class _Session:
    last_active: float
    log: list[str] = field(default_factory=list)  # JSON, so callers never share mutable dicts
    values: dict[str, bytes] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)  # sorted, for prefix scans


class MemorySessionStore:
    """Sessions in a dict behind a lock (safe from several threads and event loops)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}

    def __repr__(self) -> str:
        return f"MemorySessionStore(sessions={len(self._sessions)})"

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = _Session(self._clock())
        else:
            session.last_active = self._clock()
        return session

    async def put(self, session_id: str, key: str, value: bytes) -> None:
        await self.put_many(session_id, [(key, value)])

    async def put_many(self, session_id: str, items: Sequence[tuple[str, bytes]]) -> None:
        check_session_id(session_id)
        checked = [(check_key(k), bytes(v)) for k, v in items]
        with self._lock:
            session = self._session(session_id)
            for key, value in checked:
                if key not in session.values:
                    bisect.insort(session.keys, key)
                session.values[key] = value

    async def get(self, session_id: str, key: str) -> bytes | None:
        with self._lock:
            session = self._sessions.get(session_id)
            return session.values.get(key) if session else None

    async def scan(self, session_id: str, prefix: str = "") -> list[tuple[str, bytes]]:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return []
            start = bisect.bisect_left(session.keys, prefix)
            out = []
            for key in session.keys[start:]:
                if not key.startswith(prefix):
                    break
                out.append((key, session.values[key]))
            return out

    async def delete(self, session_id: str, key: str) -> bool:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or key not in session.values:
                return False
            del session.values[key]
            session.keys.pop(bisect.bisect_left(session.keys, key))
            session.last_active = self._clock()
            return True

    async def append_messages(self, session_id: str, messages: Sequence[Mapping[str, Any]]) -> int:
        check_session_id(session_id)
        encoded = [encode_message(m) for m in messages]
        with self._lock:
            session = self._session(session_id)
            session.log.extend(encoded)
            return len(session.log)

    async def load_messages(self, session_id: str) -> list[Message]:
        with self._lock:
            session = self._sessions.get(session_id)
            log = list(session.log) if session else []
        return [decode_message(m) for m in log]

    async def touch(self, session_id: str) -> None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                session.last_active = self._clock()

    async def last_active(self, session_id: str) -> float | None:
        with self._lock:
            session = self._sessions.get(session_id)
            return session.last_active if session else None

    async def sessions(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    async def delete_session(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    async def expire(self, ttl: float) -> list[str]:
        cutoff = self._clock() - ttl
        with self._lock:
            gone = sorted(sid for sid, s in self._sessions.items() if s.last_active < cutoff)
            for sid in gone:
                del self._sessions[sid]
        return gone

    async def aclose(self) -> None:
        return None
