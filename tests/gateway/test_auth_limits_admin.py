"""API keys, per-key tiers and limits, metering, sessions by header/body/prompt_cache_key, and the
admin API (usage, keys, status), over real HTTP."""

from __future__ import annotations

import asyncio

import openai
import pytest

from .conftest import MSG
from .test_openai_surface import assert_openai_error

CHAT = {"model": "m", "messages": MSG}


async def test_missing_malformed_and_unknown_keys_are_401(gateway):
    response = await gateway.http.post("/v1/chat/completions", json=CHAT)
    assert_openai_error(response, 401, "missing_api_key")
    assert response.headers["www-authenticate"] == "Bearer"
    fake = "Bearer gmx_000000000000_" + "x" * 43
    for header in ("Basic abc", "Bearer", "Bearer not-a-key", fake):
        response = await gateway.http.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": header}
        )
        assert_openai_error(response, 401)
    # The right id with a wrong secret fails too.
    wrong = gateway.api_key[:-4] + ("AAAA" if not gateway.api_key.endswith("AAAA") else "BBBB")
    with pytest.raises(openai.AuthenticationError):
        await gateway.openai(wrong).chat.completions.create(**CHAT)
    assert gateway.served() == 0


async def test_revoked_key_stops_working_at_once(gateway):
    key_id, key = gateway.new_key()
    await gateway.openai(key).chat.completions.create(**CHAT)
    response = await gateway.http.delete(f"/admin/keys/{key_id}", headers=gateway.admin())
    assert response.status_code == 200 and response.json()["active"] is False
    with pytest.raises(openai.AuthenticationError) as info:
        await gateway.openai(key).chat.completions.create(**CHAT)
    assert info.value.code == "invalid_api_key"


async def test_admin_and_api_keys_are_separate(gateway):
    assert_openai_error(
        await gateway.http.get("/admin/keys", headers=gateway.auth()), 401, "invalid_admin_key"
    )
    assert_openai_error(await gateway.http.get("/admin/keys"), 401)
    response = await gateway.http.get("/v1/models", headers=gateway.admin())
    assert_openai_error(response, 401, "invalid_api_key")


async def test_key_tier_limits_requests_with_openai_shaped_429(gateway):
    key_id, key = gateway.new_key(tier="tiny")  # 3 requests/min, burst 3
    client = gateway.openai(key).with_options(max_retries=0)
    for _ in range(3):
        await client.chat.completions.create(**CHAT)
    response = await gateway.http.post("/v1/chat/completions", json=CHAT, headers=gateway.auth(key))
    error = assert_openai_error(response, 429, "rate_limit_exceeded")
    assert "tiny" in error["message"]
    assert 1 <= int(response.headers["retry-after"]) <= 20
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(**CHAT)
    # Another key is not affected, and the refused requests never reached an endpoint.
    await gateway.openai().chat.completions.create(**CHAT)
    assert gateway.served() == 4
    # Raising the key's tier through the admin API lifts the limit at once.
    response = await gateway.http.patch(
        f"/admin/keys/{key_id}", json={"tier": "pro"}, headers=gateway.admin()
    )
    assert response.json()["tier"] == "pro"
    # The limiter keeps one state per key across tiers, so the debt run up under "tiny" is
    # measured against "pro"'s far larger allowance: admitted again within a moment.
    for _ in range(50):
        response = await gateway.http.post(
            "/v1/chat/completions", json=CHAT, headers=gateway.auth(key)
        )
        if response.status_code == 200:
            break
        await asyncio.sleep(0.05)
    assert response.status_code == 200


async def test_token_limit_is_charged_with_real_usage(gateway, fleet, tmp_path):
    import httpx

    from gonka_mux.limits import RateLimit
    from gonka_mux.testing import Reply

    from ._serve import serve
    from .conftest import limits_config, make_gateway

    # 100 tokens per minute (burst 100); each request is estimated at max_tokens (60) + prompt.
    app, state = await make_gateway(
        list(fleet), tmp_path / "t", limits=limits_config(small=RateLimit(rpm=None, tpm=100))
    )
    _, key = state["keys"].create(tier="small")
    reply = {"text": "ok"}
    for backend in fleet:
        backend.set_replies(lambda request: Reply(reply["text"]))
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:

        async def call() -> int:
            response = await http.post(
                "/v1/chat/completions",
                json={**CHAT, "max_tokens": 60},
                headers={"Authorization": f"Bearer {key}"},
            )
            return response.status_code

        # Short answers: each estimate is refunded down to the real usage, so five fit where
        # the estimates alone (5 x 65 tokens) would not.
        short = [await call() for _ in range(5)]
        # A long answer (about 250 tokens) is charged in full after the fact: the next request
        # is refused although its estimate alone would fit.
        reply["text"] = "word " * 200
        long = [await call(), await call()]
    await state["mux"].aclose()
    assert short == [200] * 5
    assert long == [200, 429]


async def test_every_request_is_metered_by_key_session_and_model(gateway):
    client = gateway.openai()
    await client.chat.completions.create(**CHAT, extra_headers={"X-Session-Id": "s-header"})
    await client.chat.completions.create(**CHAT, extra_body={"session_id": "s-body"})
    await client.chat.completions.create(**{**CHAT, "model": "fake-model"})
    stream = await client.chat.completions.create(**CHAT, stream=True)
    async for _ in stream:
        pass
    records = gateway.records(key=gateway.key_id)
    assert len(records) == 4
    assert sorted(r.session_id or "" for r in records) == sorted(
        ["", "", f"{gateway.key_id}/s-header", f"{gateway.key_id}/s-body"]
    )
    assert {r.model for r in records} == {"m", "fake-model"}
    assert all(r.status == "ok" and r.prompt_tokens > 0 for r in records)
    assert all(r.endpoint in ("a", "b") for r in records)

    response = await gateway.http.get("/admin/usage?group_by=key", headers=gateway.admin())
    assert response.status_code == 200
    report = response.json()
    assert report["totals"]["requests"] == 4
    (row,) = report["data"]
    assert row["group"] == gateway.key_id and row["requests"] == 4
    assert row["total_tokens"] == sum(r.total_tokens for r in records)

    by_session = await gateway.http.get(
        "/admin/usage", params={"group_by": "session"}, headers=gateway.admin()
    )
    groups = {row["group"] for row in by_session.json()["data"]}
    assert f"{gateway.key_id}/s-header" in groups
    by_model = await gateway.http.get(
        "/admin/usage", params={"group_by": "model", "model": "m"}, headers=gateway.admin()
    )
    assert [row["group"] for row in by_model.json()["data"]] == ["m"]
    by_period = await gateway.http.get(
        "/admin/usage", params={"group_by": "period", "period": "minute"}, headers=gateway.admin()
    )
    assert sum(row["requests"] for row in by_period.json()["data"]) == 4
    future = await gateway.http.get(
        "/admin/usage", params={"since": "2999-01-01"}, headers=gateway.admin()
    )
    assert future.json()["totals"]["requests"] == 0
    for bad in ({"group_by": "colour"}, {"since": "yesterday-ish"}, {"period": "fortnight"}):
        response = await gateway.http.get("/admin/usage", params=bad, headers=gateway.admin())
        assert_openai_error(response, 400)


async def test_session_header_wins_and_prompt_cache_key_is_affinity_only(gateway):
    seen = []

    class Spy:
        async def before(self, ctx):
            seen.append((ctx.options.session_id, dict(ctx.options.metadata or {})))

        async def after(self, ctx):
            pass

    gateway.mux.add_extension(Spy())
    client = gateway.openai()
    await client.chat.completions.create(
        **CHAT, extra_headers={"X-Session-Id": "h"}, extra_body={"session_id": "b"}
    )
    await client.chat.completions.create(**CHAT, extra_body={"prompt_cache_key": "oc-1:0"})
    assert seen[0] == (f"{gateway.key_id}/h", {"limit_tier": "default"})
    assert seen[1] == (
        f"{gateway.key_id}/oc-1:0",
        {"limit_tier": "default", "session_mode": "affinity"},
    )
    # prompt_cache_key is an OpenAI field: it still reaches the endpoint; session_id does not.
    requests = sorted((r for b in gateway.backends for r in b.requests), key=lambda r: r.time)
    sent = [r.json for r in requests]
    assert "session_id" not in sent[0]
    assert sent[1]["prompt_cache_key"] == "oc-1:0"


async def test_admin_key_management(gateway):
    created = await gateway.http.post(
        "/admin/keys", json={"name": "agent-7", "tier": "pro"}, headers=gateway.admin()
    )
    assert created.status_code == 201
    data = created.json()
    assert data["key"].startswith(f"gmx_{data['id']}_") and data["tier"] == "pro"
    await gateway.openai(data["key"]).chat.completions.create(**CHAT)

    listed = await gateway.http.get("/admin/keys", headers=gateway.admin())
    keys = {k["id"]: k for k in listed.json()["data"]}
    assert keys[data["id"]]["name"] == "agent-7"
    assert all("key" not in k for k in keys.values())  # secrets are never listed
    one = await gateway.http.get(f"/admin/keys/{data['id']}", headers=gateway.admin())
    assert one.json()["tier"] == "pro"

    bad_tier = await gateway.http.patch(
        f"/admin/keys/{data['id']}", json={"tier": "platinum"}, headers=gateway.admin()
    )
    assert "platinum" in assert_openai_error(bad_tier, 400)["message"]
    extra = await gateway.http.patch(
        f"/admin/keys/{data['id']}", json={"tier": "pro", "name": "x"}, headers=gateway.admin()
    )
    assert_openai_error(extra, 400)
    missing = await gateway.http.delete("/admin/keys/000000000000", headers=gateway.admin())
    assert_openai_error(missing, 404, "key_not_found")
    bad_create = await gateway.http.post(
        "/admin/keys", json={"tier": "nope"}, headers=gateway.admin()
    )
    assert_openai_error(bad_create, 400)


async def test_admin_status_shows_endpoints_cooldowns_and_limits(gateway):
    from gonka_mux.testing import Faults

    gateway.backends[0].set_faults(Faults(rate_429=1.0, retry_after=30))
    for _ in range(4):
        await gateway.openai().chat.completions.create(**CHAT)
    response = await gateway.http.get("/admin/status", headers=gateway.admin())
    assert response.status_code == 200
    status = response.json()
    a = status["endpoints"]["a"]
    assert a["state"] == "cooling" and a["cooldown_remaining_s"] > 20
    assert status["endpoints"]["b"]["state"] == "healthy"
    assert set(status["models"]) >= {"m", "fake-model"}
    assert "tiny" in status["limits"] and "3 requests/min" in status["limits"]["tiny"]
    assert status["keys"]["active"] >= 1
    assert "epoch" in status
    health = await gateway.http.get("/health")
    assert health.json()["status"] == "degraded"


async def test_admin_api_is_off_without_an_admin_key(fleet, tmp_path):
    import httpx

    from gonka_mux import AsyncMultiplexer
    from gonka_mux.gateway import create_app

    from ._serve import serve

    mux = AsyncMultiplexer()
    mux.add_endpoint(fleet[0].url, models=["m"])
    app = create_app(mux)  # no admin key given and none stored: admin API disabled
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/admin/keys", headers={"Authorization": "Bearer anything"})
    await mux.aclose()
    assert_openai_error(response, 403, "admin_disabled")


async def test_concurrent_requests_from_many_keys(gateway):
    keys = [gateway.new_key()[1] for _ in range(8)]

    async def one(key):
        return await gateway.openai(key).chat.completions.create(**CHAT)

    results = await asyncio.gather(*(one(k) for k in keys for _ in range(5)))
    assert len(results) == 40
    assert len(gateway.records()) == 40
    assert gateway.served() == 40
