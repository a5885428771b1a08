"""The gateway's PostgreSQL key lookups run off its event loop: while the database is slow to
answer one request's key lookup (a cache miss), the loop keeps serving everything else.

The database is made slow for real: another connection holds an exclusive lock on the keys
table, so the lookup waits on the server until a timer thread releases it.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import psycopg

from gonka_mux import AsyncMultiplexer
from gonka_mux.gateway import PostgresKeyStore, create_app
from gonka_mux.testing import FakeBackend

HOLD = 1.0  # seconds the keys table stays locked


async def _largest_gap(stop: asyncio.Event) -> float:
    """The longest time this loop went without running this task (ticks every 10 ms)."""
    gap = 0.0
    last = time.monotonic()
    while True:
        await asyncio.sleep(0.01)
        now = time.monotonic()
        gap = max(gap, now - last)
        last = now
        if stop.is_set():  # checked after a tick: a stall just before the stop counts too
            return gap


def _lock_keys_table(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url)  # a transaction stays open until commit()
    conn.execute("LOCK TABLE gateway_api_keys IN ACCESS EXCLUSIVE MODE")
    return conn


async def test_a_key_lookup_waiting_on_postgres_does_not_block_the_loop(postgres_url: str) -> None:
    store = PostgresKeyStore(postgres_url, timeout=5.0)
    _, plaintext = store.create(tier="default")
    auth = {"Authorization": f"Bearer {plaintext}"}
    admin = "gmx_admin_" + "a" * 40
    with FakeBackend(models=["m"]) as backend:
        mux = AsyncMultiplexer()
        mux.add_endpoint(backend.url, models=["m"])
        app = create_app(mux, keys=store, admin_key=admin)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                for path, headers in (
                    ("/v1/models", auth),  # the key is not cached yet: looked up
                    ("/admin/keys", {"Authorization": f"Bearer {admin}"}),  # lists keys
                ):
                    store._cache.clear()
                    lock = _lock_keys_table(postgres_url)
                    release = threading.Timer(HOLD, lock.commit)
                    release.start()
                    stop = asyncio.Event()
                    ticker = asyncio.create_task(_largest_gap(stop))
                    await asyncio.sleep(0.02)  # ticking before the request starts
                    t0 = time.monotonic()
                    try:
                        response = await client.get(path, headers=headers)
                    finally:
                        release.join()
                        lock.close()
                        stop.set()
                    gap = await ticker
                    assert response.status_code == 200, response.text
                    assert time.monotonic() - t0 >= HOLD * 0.8  # it did wait on the lock
                    assert gap < HOLD / 2, f"{path}: the event loop stalled {gap:.2f} s"
        finally:
            await mux.aclose()
            store.close()
