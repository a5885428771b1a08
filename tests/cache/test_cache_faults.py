"""A broken cache never fails a request: corrupt diskcache files, unreadable entries, Redis
down, a store that fails to write. Each outage is one warning, and no secret is logged."""

from __future__ import annotations

import logging
import socket

from tests.cache._helpers import MSG, upstream

from gonka_mux import AsyncMultiplexer
from gonka_mux.cache import (
    DiskCacheStore,
    MemoryCacheStore,
    RedisCacheStore,
    cache_key,
    cache_status,
)

BODY = {"model": "m", "messages": MSG, "temperature": 0}


def warnings(caplog) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "gonka_mux.cache" and r.levelno >= logging.WARNING
    ]


def amux(fb, **cache) -> AsyncMultiplexer:
    mux = AsyncMultiplexer()
    mux.add_endpoint(fb.url, models=["m"])
    mux.enable_cache(**cache)
    return mux


async def test_corrupt_diskcache_file_is_skipped_with_one_warning(backend, tmp_path, caplog):
    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / "cache.db").write_bytes(b"this is not a sqlite database" * 100)
    mux = amux(backend, path=directory, retry_interval=0)  # retry (and fail) on every request
    for _ in range(3):
        reply = await mux.chat.completions.create(**BODY)
        assert reply.choices[0].message.content
    assert upstream(backend) == 3
    assert len(warnings(caplog)) == 1
    assert "served without the cache" in warnings(caplog)[0].getMessage()
    assert mux.cache.stats()["faults"] >= 3
    # repaired (the files removed): the cache works again without a restart
    for path in directory.iterdir():
        path.unlink()
    await mux.chat.completions.create(**BODY)
    hit = await mux.chat.completions.create(**BODY)
    assert cache_status(hit) == "hit" and upstream(backend) == 4
    assert len(warnings(caplog)) == 1
    await mux.aclose()


async def test_unreadable_entry_is_a_miss_and_is_replaced(backend, tmp_path, caplog):
    store = DiskCacheStore(tmp_path / "c")
    mux = amux(backend, store=store)
    await mux.chat.completions.create(**BODY)
    await store.set(cache_key("chat", BODY), b'{"v":1,"kind":"chat"}\n{not json', None)
    served = await mux.chat.completions.create(**BODY)
    assert cache_status(served) == "miss" and upstream(backend) == 2
    assert len(warnings(caplog)) == 1
    assert cache_status(await mux.chat.completions.create(**BODY)) == "hit"
    assert upstream(backend) == 2
    await mux.aclose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_redis_down_serves_requests_and_never_logs_the_password(backend, caplog):
    caplog.set_level(logging.DEBUG, logger="gonka_mux")
    url = f"redis://:hunter2-secret@127.0.0.1:{closed_port()}/0"
    mux = amux(backend, store=RedisCacheStore(url, connect_timeout=0.2), retry_interval=0)
    for _ in range(3):
        await mux.chat.completions.create(**BODY)
    stream = await mux.chat.completions.create(**BODY, stream=True)
    assert [c async for c in stream]
    assert upstream(backend) == 4
    assert len(warnings(caplog)) == 1
    assert "127.0.0.1" in warnings(caplog)[0].getMessage()
    assert "hunter2" not in caplog.text and "hunter2" not in repr(mux.cache)
    await mux.aclose()


class _WriteFails(MemoryCacheStore):
    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        raise OSError("disk full")


async def test_failing_writes_are_skipped(backend, caplog):
    mux = amux(backend, store=_WriteFails(), retry_interval=0)
    for _ in range(3):
        await mux.chat.completions.create(**BODY)
    assert upstream(backend) == 3 and len(warnings(caplog)) == 1
    await mux.aclose()
