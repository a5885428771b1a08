"""Issue #13: the gateway against a hostile tenant and careless defaults (SSRF forms, lone
surrogates, memory quotas and limits, slow clients, 405 Allow, finite JSON, config types)."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
import uvicorn

from gonka_mux._exceptions import ConfigError
from gonka_mux.gateway import _http
from gonka_mux.gateway.cli import check_admin_key, parse_size
from gonka_mux.gateway.server import header_timeout_protocol

from ._serve import _socket, serve
from .conftest import MSG, make_gateway
from .test_openai_surface import assert_openai_error

BYPASS_URLS = [
    "http://2130706433:9/x",
    "http://0x7f000001:9/x",
    "http://127.1:9/x",
    "http://0:9/x",
    "http://[::ffff:127.0.0.1]:9/x",
    "http://[64:ff9b::7f00:1]/x",
    "http://169.254.169.254/x",
]


@pytest.mark.parametrize("url", BYPASS_URLS)
async def test_webhook_guard_refuses_every_loopback_form(gateway, url):
    response = await gateway.http.post(
        "/v1/jobs",
        json={"request": {"model": "m", "messages": MSG}, "webhook_url": url},
        headers=gateway.auth(),
    )
    assert assert_openai_error(response, 400)["param"] == "webhook_url"


async def test_gateway_turns_the_delivery_guard_on(gateway):
    runner = await gateway.mux.start_jobs()
    assert runner.allow_private_webhooks is False


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
        b'{"model": "\\udfff", "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "user": "\\ud83d"}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "u": {"\\udc00": 1}}',
        b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
    ],
)
async def test_lone_surrogates_and_invalid_utf8_are_400_at_the_edge(gateway, raw):
    before = gateway.served()
    response = await gateway.http.post(
        "/v1/chat/completions",
        content=raw,
        headers={**gateway.auth(), "Content-Type": "application/json"},
    )
    assert_openai_error(response, 400, "invalid_encoding")
    assert gateway.served() == before


async def test_valid_surrogate_pairs_still_pass(gateway):
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "smile \\ud83d\\ude00"}]}'
    response = await gateway.http.post(
        "/v1/chat/completions",
        content=raw,
        headers={**gateway.auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text


async def test_memory_writes_count_against_the_rate_limit_and_a_quota(fleet, tmp_path):
    app, state = await make_gateway(
        list(fleet), tmp_path, memory_quota_bytes=10_000, max_memory_entry_bytes=4_000
    )
    _, tiny = state["keys"].create(tier="tiny")  # 3 requests a minute
    _, big = state["keys"].create()
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
        tiny_auth = {"Authorization": f"Bearer {tiny}"}
        codes = [
            (
                await http.put(f"/v1/memory/ns/k{i}", json={"text": "x"}, headers=tiny_auth)
            ).status_code
            for i in range(5)
        ]
        auth = {"Authorization": f"Bearer {big}"}
        too_big = await http.put("/v1/memory/ns/a", json={"text": "y" * 5000}, headers=auth)
        fills = [
            (
                await http.put(f"/v1/memory/ns/f{i}", json={"text": "z" * 3000}, headers=auth)
            ).status_code
            for i in range(4)
        ]
        replace = await http.put("/v1/memory/ns/f0", json={"text": "w" * 3500}, headers=auth)
        deleted = await http.delete("/v1/memory/ns/f1", headers=auth)
        after_delete = await http.post("/v1/memory/ns", json={"text": "v" * 3000}, headers=auth)
    await state["mux"].aclose()
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    assert_openai_error(too_big, 413, "memory_entry_too_large")
    assert fills == [200, 200, 200, 413]
    assert replace.status_code == 200  # replacing an entry counts its new size only
    assert deleted.status_code == 200
    assert after_delete.status_code == 201


async def test_405_has_an_allow_header(gateway):
    response = await gateway.http.delete("/v1/chat/completions", headers=gateway.auth())
    assert_openai_error(response, 405)
    assert response.headers["allow"] == "POST"
    response = await gateway.http.patch("/v1/memory/ns/k", headers=gateway.auth())
    assert set(response.headers["allow"].split(", ")) >= {"GET", "PUT", "DELETE"}


def test_json_is_always_finite():
    text = _http.dumps({"a": float("inf"), "b": [float("nan"), 1.5], "c": -float("inf")})
    assert text == '{"a": null, "b": [null, 1.5], "c": null}'


def test_config_sizes_and_admin_keys():
    assert parse_size("16MiB", "k") == 16 * 1024 * 1024
    assert parse_size("16MB", "k") == 16_000_000
    assert parse_size(4096, "k") == 4096
    for bad in ("16 parsecs", True, 1.5, -1, "0"):
        with pytest.raises(ConfigError):
            parse_size(bad, "k")
    for weak in ("x", "a" * 64, "0123456789abcdef"):
        with pytest.raises(ConfigError, match="too weak"):
            check_admin_key(weak)
    check_admin_key("gmx_admin_" + "0123456789abcdefghijklmnopqrstuv")


async def test_slow_header_and_slow_body_clients_are_dropped(fleet, tmp_path):
    app, state = await make_gateway(list(fleet), tmp_path, body_timeout=0.5)
    _, key = state["keys"].create()
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    config.load()
    config.http_protocol_class = header_timeout_protocol(config.http_protocol_class, 0.5)
    server = uvicorn.Server(config)
    sock = _socket()
    task = asyncio.create_task(server.serve(sockets=[sock]))
    port = sock.getsockname()[1]
    try:
        for _ in range(1000):
            if server.started:
                break
            await asyncio.sleep(0.01)

        def slow_headers() -> float:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                started = time.monotonic()
                raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                try:
                    for _ in range(40):
                        time.sleep(0.1)
                        raw.sendall(b"X-Slow: 1\r\n")  # never finishes its headers
                except OSError:
                    pass
                try:
                    data = raw.recv(100)
                except OSError:
                    data = b""
                assert data == b""
                return time.monotonic() - started

        dropped_after = await asyncio.to_thread(slow_headers)

        def slow_body() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    + f"Authorization: Bearer {key}\r\n".encode()
                    + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
                )
                return raw.recv(4096)

        answer = await asyncio.to_thread(slow_body)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            healthy = await http.get("/health")  # normal requests are unaffected
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
        await state["mux"].aclose()
    assert dropped_after < 3
    assert answer.startswith(b"HTTP/1.1 408")
    assert healthy.status_code == 200
