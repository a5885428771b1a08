"""A child process that commits chat turns to a shared session store.

    python _session_child.py <disk|redis|postgres> <path-or-url> <prefix> <session> <worker> \
        <turns|forever>

Prints ``committed <i>`` (flushed) after each turn's commit returns, so a parent that kills the
process knows which turns were committed.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

from gonka_mux.sessions import (
    DiskSessionStore,
    PostgresSessionStore,
    RedisSessionStore,
    SessionManager,
    SessionStore,
)


async def main(kind: str, where: str, prefix: str, session: str, worker: str, turns: str) -> None:
    store: SessionStore
    if kind == "disk":
        store = DiskSessionStore(where)
    elif kind == "postgres":
        store = PostgresSessionStore(where)
    else:
        store = RedisSessionStore(where, prefix=prefix)
    manager = SessionManager(store, ttl=0)
    count = itertools.count() if turns == "forever" else range(int(turns))
    for i in count:
        prepared = await manager.prepare(
            session, [{"role": "user", "content": f"{worker}-q{i}"}], "m"
        )
        await manager.commit(prepared, {"role": "assistant", "content": f"{worker}-r{i}"})
        print(f"committed {i}", flush=True)
    await manager.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
