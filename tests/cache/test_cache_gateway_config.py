"""The gateway says ``x-gonka-mux-cache: hit`` on a reply the cache served (plain and SSE);
``[cache]`` in a config file enables the cache and refuses typos."""

from __future__ import annotations

import json

import httpx
import pytest
from tests.cache._helpers import MSG, upstream
from tests.gateway._serve import serve

from gonka_mux import AsyncMultiplexer, ConfigError, Multiplexer
from gonka_mux.cache import DiskCacheStore, MemoryCacheStore, RedisCacheStore, cache_status
from gonka_mux.gateway import KeyStore, create_app


async def test_gateway_marks_hits_in_a_header(backend, tmp_path):
    mux = AsyncMultiplexer()
    mux.add_endpoint(backend.url, models=["m"])
    mux.enable_cache("memory")
    keys = KeyStore(tmp_path / "keys.sqlite3")
    _, api_key = keys.create(name="t", tier="default")
    app = create_app(mux, keys=keys)
    body = {"model": "m", "messages": MSG, "temperature": 0}
    auth = {"Authorization": f"Bearer {api_key}"}
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        first = await http.post("/v1/chat/completions", json=body, headers=auth)
        second = await http.post("/v1/chat/completions", json=body, headers=auth)
        assert first.status_code == second.status_code == 200
        assert first.headers["x-gonka-mux-cache"] == "miss"
        assert second.headers["x-gonka-mux-cache"] == "hit"
        assert second.json() == first.json()  # the marker is a header, never in the body
        sse = []
        for _ in range(2):
            async with http.stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=auth
            ) as response:
                sse.append((response.headers.get("x-gonka-mux-cache"), await response.aread()))
        assert sse[0][0] is None and sse[1][0] == "hit"
        assert sse[1][1] == sse[0][1] and sse[1][1].endswith(b"data: [DONE]\n\n")
        emb = {"model": "m", "input": "abc"}
        await http.post("/v1/embeddings", json=emb, headers=auth)
        again = await http.post("/v1/embeddings", json=emb, headers=auth)
        assert again.headers["x-gonka-mux-cache"] == "hit"
        refused = await http.post(
            "/v1/chat/completions", json={**body, "cache": False}, headers=auth
        )
        assert refused.status_code == 400  # a gonka_mux option, not a body field
        # HTTP's own words: no-store bypasses the cache, no-cache fetches and stores
        bypass = await http.post(
            "/v1/chat/completions", json=body, headers={**auth, "Cache-Control": "no-store"}
        )
        assert "x-gonka-mux-cache" not in bypass.headers
        fresh = await http.post(
            "/v1/chat/completions", json=body, headers={**auth, "Cache-Control": "no-cache"}
        )
        assert fresh.headers["x-gonka-mux-cache"] == "miss"
        assert fresh.json()["id"] != first.json()["id"]
        after = await http.post("/v1/chat/completions", json=body, headers=auth)
        assert after.headers["x-gonka-mux-cache"] == "hit"
        assert after.json()["id"] == fresh.json()["id"]
    assert upstream(backend) == 5
    await mux.aclose()
    keys.close()


def test_config_section_enables_the_cache(backend, tmp_path):
    config = {
        "endpoints": [{"base_url": backend.url, "models": ["m"]}],
        "cache": {"store": "disk", "path": str(tmp_path / "c"), "ttl": 60, "max_size": 10**7},
    }
    mux = Multiplexer.from_config(config)
    assert isinstance(mux.cache.store, DiskCacheStore) and mux.cache.ttl == 60
    a = mux.chat.completions.create(model="m", messages=MSG, seed=3)
    b = mux.chat.completions.create(model="m", messages=MSG, seed=3)
    assert cache_status(b) == "hit" and b.id == a.id and upstream(backend) == 1
    mux.close()
    off = AsyncMultiplexer.from_config({"cache": {"enabled": False}})
    assert off.cache is None and "cache" not in off.features
    memory = AsyncMultiplexer.from_config({"cache": {"store": "memory"}})
    assert isinstance(memory.cache.store, MemoryCacheStore)
    redis = AsyncMultiplexer.from_config({"cache": {"store": "redis://:pw@127.0.0.1:1/0"}})
    assert isinstance(redis.cache.store, RedisCacheStore) and "pw" not in repr(redis.cache)


@pytest.mark.parametrize(
    "section,expected",
    [
        ({"colour": "red"}, "colour"),
        ({"store": "ftp://x"}, "unknown cache store"),
        ({"store": 3}, "redis:// URL"),
        ({"ttl": -1}, "ttl"),
        ({"max_entry_bytes": "big"}, "max_entry_bytes"),
        ({"enabled": "yes"}, "true or false"),
        ({"uncacheable_tools": [1]}, "tool names"),
        ({"per_caller": "false"}, "true or false"),
        ({"single_flight_wait": -1}, "single_flight_wait"),
    ],
)
def test_bad_cache_config_names_the_key(section, expected):
    with pytest.raises(ConfigError) as ei:
        AsyncMultiplexer.from_config({"cache": section})
    assert ei.value.key.startswith("cache")
    assert expected in str(ei.value)


def test_enable_cache_twice_is_refused():
    mux = AsyncMultiplexer()
    mux.enable_cache("memory")
    with pytest.raises(ValueError, match="already enabled"):
        mux.enable_cache("memory")
    assert json.dumps(mux.cache.stats())
