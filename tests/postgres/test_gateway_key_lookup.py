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


async def test_a_burst_of_one_keys_requests_shares_one_lookup(postgres_url: str) -> None:
    """40 requests with one uncached key while the database is slow: one query, all answered;
    a request that gives up meanwhile does not cancel the others' lookup."""
    store = PostgresKeyStore(postgres_url, timeout=5.0)
    record, plaintext = store.create(tier="default")
    _, other = store.create(tier="default")
    queries: list[str] = []
    row = store._row

    def counted(key_id: str):  # the real query, counted
        queries.append(key_id)
        return row(key_id)

    store._row = counted  # type: ignore[method-assign]
    lock = _lock_keys_table(postgres_url)
    release = threading.Timer(HOLD, lock.commit)
    release.start()
    try:
        impatient = asyncio.create_task(store.averify(plaintext))
        burst = [asyncio.create_task(store.averify(plaintext)) for _ in range(40)]
        burst.append(asyncio.create_task(store.averify(other)))  # another key: its own query
        await asyncio.sleep(0.2)
        impatient.cancel()
        results = await asyncio.gather(*burst)
    finally:
        release.join()
        lock.close()
    assert [r.id for r in results[:40]] == [record.id] * 40 and results[40] is not None
    assert sorted(queries) == sorted([record.id, results[40].id])
    assert store._lookups == {}
    # (an entry is stamped when its lookup began, so the slow one is already stale)
    assert (await store.averify(plaintext)).id == record.id and len(queries) == 3
    assert (await store.averify(plaintext)).id == record.id and len(queries) == 3  # cached
    store.close()
