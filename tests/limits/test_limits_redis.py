"""Redis-specific behaviour, against a real redis-server."""

from __future__ import annotations

import uuid

import pytest
import redis
import redis.asyncio

from gonka_mux.limits import RateLimit, RedisLimitBackend

pytestmark = pytest.mark.redis
LIMIT = RateLimit(rpm=60, tpm=None, burst_requests=2)


async def test_ready_clients_are_used_and_left_open(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    aclient = redis.asyncio.Redis.from_url(redis_url)
    prefix = f"t:{uuid.uuid4().hex}:"
    backend = RedisLimitBackend(client=client, async_client=aclient, prefix=prefix)
    assert backend.admit("k", LIMIT, 0) == (0.0, "")
    assert await backend.aadmit("k", LIMIT, 0) == (0.0, "")
    wait, blocked = backend.admit("k", LIMIT, 0)
    assert blocked == "requests" and 0.9 < wait <= 1.0
    await backend.aclose()
    assert client.ping() and await aclient.ping()  # still the caller's to close
    # The bucket expires on its own once it would be full again (about 2 s ahead, plus 1 s).
    ttl = client.pttl(f"{prefix}k")
    assert 2000 < ttl <= 3000
    client.close()
    await aclient.aclose()


async def test_survives_a_script_flush(redis_url: str) -> None:
    backend = RedisLimitBackend(redis_url, prefix=f"t:{uuid.uuid4().hex}:")
    assert await backend.aadmit("k", LIMIT, 0) == (0.0, "")
    client = redis.Redis.from_url(redis_url)
    client.script_flush()
    client.close()
    assert await backend.aadmit("k", LIMIT, 0) == (0.0, "")  # EVALSHA falls back, reloads
    assert (await backend.aadmit("k", LIMIT, 0))[1] == "requests"
    await backend.aclose()


async def test_one_sided_clients_say_what_is_missing(redis_url: str) -> None:
    aclient = redis.asyncio.Redis.from_url(redis_url)
    only_async = RedisLimitBackend(async_client=aclient)
    with pytest.raises(RuntimeError, match="pass url= or client="):
        only_async.admit("k", LIMIT, 0)
    await aclient.aclose()
    client = redis.Redis.from_url(redis_url)
    only_sync = RedisLimitBackend(client=client)
    with pytest.raises(RuntimeError, match="pass url= or async_client="):
        await only_sync.aadmit("k", LIMIT, 0)
    client.close()
    with pytest.raises(ValueError, match="needs a url"):
        RedisLimitBackend()


def test_repr_hides_the_url() -> None:
    backend = RedisLimitBackend("redis://:hunter2@cache.internal:6379/0")
    assert "hunter2" not in repr(backend)
