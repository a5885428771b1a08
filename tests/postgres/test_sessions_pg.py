"""The PostgreSQL session store beyond the shared store suite (tests/sessions runs that on it):
selection by URL, the password kept out of reprs and errors, and outages: with the server
stopped every operation fails at once with StoreUnavailableError, and the same store (and the
same Multiplexer) works again once it is back. The Redis store is held to the same contract."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests._postgres import PostgresServer
from tests._redis import RedisServer

from gonka_mux import AsyncMultiplexer, StoreUnavailableError
from gonka_mux.sessions import PostgresSessionStore, RedisSessionStore, SessionManager
from gonka_mux.sessions.feature import SessionsFeature, session_store
from gonka_mux.testing import FakeBackend, Reply

# Connection refused is immediate; the bound only catches a call that waits for a timeout.
PROMPT = 5.0


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def with_password(url: str, password: str = "s3cret-pw") -> str:
    # The test server trusts every local connection: the password is carried, never checked.
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1)


@pytest.fixture
def server_restored(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The session's server, started again after the test whatever happened."""
    try:
        yield postgres_server
    finally:
        if not listening(postgres_server.port):
            postgres_server.start()


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


async def test_a_postgres_url_selects_the_store(postgres_url: str) -> None:
    url = with_password(postgres_url)
    store = session_store(url)
    assert isinstance(store, PostgresSessionStore)
    assert "s3cret-pw" not in repr(store) and "***" in repr(store)
    await store.append_messages("s", [user("hello")])
    # [sessions] store = URL, and path = URL (a path is accepted wherever a file is)
    for section in ({"store": url}, {"path": url}):
        feature = SessionsFeature.from_config({"sessions": section}, "<test>")
        assert feature is not None
        assert isinstance(feature._store, PostgresSessionStore)
        assert await feature._store.load_messages("s") == [user("hello")]
        await feature._store.aclose()
    await store.aclose()


async def test_config_file_takes_a_postgres_url(postgres_url: str, tmp_path: Path) -> None:
    path = tmp_path / "mux.toml"
    path.write_text(f'[sessions]\npath = "{postgres_url}"\n')
    mux = AsyncMultiplexer.from_config(path)
    assert isinstance(mux.sessions.store, PostgresSessionStore)
    await mux.sessions.store.append_messages("s", [user("via config")])
    assert await PostgresSessionStore(postgres_url).load_messages("s") == [user("via config")]
    await mux.aclose()


async def _all_operations(store: Any) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    return [
        ("append_messages", lambda: store.append_messages("s", [user("more")])),
        ("load_messages", lambda: store.load_messages("s")),
        ("put", lambda: store.put("s", "k", b"v")),
        ("get", lambda: store.get("s", "k")),
        ("scan", lambda: store.scan("s")),
        ("delete", lambda: store.delete("s", "k")),
        ("touch", lambda: store.touch("s")),
        ("last_active", lambda: store.last_active("s")),
        ("sessions", lambda: store.sessions()),
        ("delete_session", lambda: store.delete_session("other")),
        ("expire", lambda: store.expire(3600)),
    ]


async def _assert_unavailable(store: Any, backend: str, secret: str | None = None) -> None:
    for name, call in await _all_operations(store):
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as caught:
            await call()
        assert time.monotonic() - started < PROMPT, name
        assert caught.value.backend == backend
        assert caught.value.retryable is True
        if secret is not None:
            assert secret not in str(caught.value), name


async def test_postgres_outage_is_typed_prompt_and_recovers(
    postgres_url: str, server_restored: PostgresServer
) -> None:
    store = PostgresSessionStore(with_password(postgres_url))
    await store.append_messages("s", [user("before")])
    server_restored.stop()
    await _assert_unavailable(store, "postgresql", secret="s3cret-pw")
    server_restored.start()
    # the same store object: it reconnects on the next call
    assert await store.append_messages("s", [user("after")]) == 2
    assert await store.load_messages("s") == [user("before"), user("after")]
    await store.aclose()


@pytest.mark.redis
async def test_redis_outage_is_typed_prompt_and_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        store = RedisSessionStore(server.url, prefix="outage:")
        await store.append_messages("s", [user("before")])
        server.stop()
        await _assert_unavailable(store, "redis")
        server.start()  # a fresh, empty server (no persistence) on the same port
        assert await store.append_messages("s", [user("after")]) == 1
        assert await store.load_messages("s") == [user("after")]
        await store.aclose()
    finally:
        server.stop()


async def test_a_request_is_refused_while_the_store_is_away_and_served_after(
    postgres_url: str, server_restored: PostgresServer
) -> None:
    with FakeBackend(models=["m"]) as backend:
        backend.set_replies([Reply("one"), Reply("two")])
        mux = AsyncMultiplexer()
        mux.add_endpoint(backend.url, models=["m"], name="fb")
        sessions = mux.enable_sessions(postgres_url)
        await mux.chat.completions.create(model="m", messages=[user("q1")], session_id="s1")
        sent = len(backend.requests)

        server_restored.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as caught:
            await mux.chat.completions.create(model="m", messages=[user("q2")], session_id="s1")
        assert time.monotonic() - started < PROMPT
        assert caught.value.backend == "postgresql" and caught.value.retryable
        assert len(backend.requests) == sent  # refused before any endpoint was asked
        # a request without a session does not need the store
        reply = await mux.chat.completions.create(model="m", messages=[user("plain")])
        assert reply.choices[0].message.content == "two"

        server_restored.start()
        backend.set_replies([Reply("three")])
        await mux.chat.completions.create(model="m", messages=[user("q2")], session_id="s1")
        # the history was sent with the request, and the turn is stored
        assert [m["content"] for m in backend.requests[-1].json["messages"]] == [
            "q1",
            "one",
            "q2",
        ]
        stored = await sessions.get("s1")
        assert [m["content"] for m in stored] == ["q1", "one", "q2", "three"]
        await mux.aclose()


async def test_concurrent_appends_from_many_stores_on_one_session(postgres_url: str) -> None:
    """Several stores (separate pools, like separate hosts) appending to one session at once:
    every turn lands whole, and the log's sequence has no gap."""
    stores = [PostgresSessionStore(postgres_url) for _ in range(4)]

    async def writer(w: int, store: PostgresSessionStore) -> None:
        for i in range(15):
            await store.append_messages("shared", [user(f"w{w}-q{i}"), user(f"w{w}-a{i}")])

    await asyncio.gather(*(writer(w, s) for w, s in enumerate(stores)))
    log = await stores[0].load_messages("shared")
    assert len(log) == 4 * 15 * 2
    pairs = [(log[j]["content"], log[j + 1]["content"]) for j in range(0, len(log), 2)]
    for question, answer in pairs:
        assert question.replace("-q", "-a") == answer
    for w in range(4):
        mine = [q for q, _ in pairs if q.startswith(f"w{w}-")]
        assert mine == [f"w{w}-q{i}" for i in range(15)]
    manager = SessionManager(stores[1], ttl=0)
    assert len(await manager.get("shared")) == 120
    for store in stores:
        await store.aclose()


async def test_keys_scan_in_code_point_order_and_nul_is_refused(postgres_url: str) -> None:
    from gonka_mux.sessions import InvalidSessionData

    store = PostgresSessionStore(postgres_url)
    keys = ["b", "a", "ä", "Z", "a/2", "a/10", "\U0001f600", "\ue000"]
    await store.put_many("s", [(k, k.encode()) for k in keys])
    assert [k for k, _ in await store.scan("s")] == sorted(keys)
    assert [k for k, _ in await store.scan("s", "a/")] == ["a/10", "a/2"]
    with pytest.raises(InvalidSessionData):
        await store.put("s", "bad\x00key", b"v")
    assert await store.get("s", "bad\x00key") is None
    await store.aclose()
