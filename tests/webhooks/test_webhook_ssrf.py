"""The SSRF guard: webhook targets on loopback/private/reserved addresses are refused at
submission (every numeric form the OS resolver accepts) and at delivery (after resolving the
host, connecting to the address that was checked)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest

from gonka_mux.webhooks import JobRunner, MemoryJobStore
from gonka_mux.webhooks.delivery import (
    DeliveryPolicy,
    PrivateAddressError,
    check_webhook_url,
    is_public_address,
    parse_ip_host,
)

PRIVATE_URLS = [
    "http://127.0.0.1:9/x",
    "http://2130706433:9/x",
    "http://0x7f000001:9/x",
    "http://0177.0.0.1/x",
    "http://127.1:9/x",
    "http://0/x",
    "http://0.0.0.0/x",
    "http://localhost/x",
    "http://LOCALHOST./x",
    "http://a.localhost/x",
    "http://10.1.2.3/x",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]/x",
    "http://[::]/x",
    "http://[::ffff:127.0.0.1]/x",
    "http://[::ffff:10.0.0.1]/x",
    "http://[64:ff9b::7f00:1]/x",
    "http://[64:ff9b::a00:1]/x",
    "http://[fe80::1]/x",
    "http://[fc00::1]/x",
    "http://[2002:7f00:1::]/x",
    "http://224.0.0.1/x",
    "http://240.0.0.1/x",
    "http://100.64.0.1/x",
]


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_private_literals_are_refused_at_submission(url: str) -> None:
    with pytest.raises(PrivateAddressError):
        check_webhook_url(url)
    check_webhook_url(url, allow_private=True)  # the operator's switch still works


def test_public_addresses_pass() -> None:
    for url in ("https://hooks.example.com/x", "http://8.8.8.8/x", "http://[2606:4700::1111]/"):
        check_webhook_url(url)
    assert parse_ip_host("2130706433") == parse_ip_host("127.0.0.1")
    assert parse_ip_host("example.com") is None
    assert is_public_address(parse_ip_host("64:ff9b::808:808"))  # type: ignore[arg-type]


def test_bad_urls_are_refused() -> None:
    for url in ("ftp://example.com/x", "/relative", "http:///x"):
        with pytest.raises(ValueError):
            check_webhook_url(url)


async def _noop(params: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


def _fake_dns(answers: dict[str, list[str]]) -> Any:
    async def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        out = []
        for ip in answers[host]:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            sockaddr = (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
            out.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return out

    return getaddrinfo


async def _run_job(runner: JobRunner, url: str, secret: str = "s" * 32) -> Any:
    job = await runner.submit({"model": "m"}, webhook_url=url, webhook_secret=secret)
    (delivery,) = await runner.wait_deliveries(job.id, timeout=10)
    return delivery


@pytest.mark.parametrize(
    "answers", [["127.0.0.1"], ["93.184.216.34", "10.0.0.7"], ["::1"], ["::ffff:127.0.0.1"]]
)
async def test_dns_names_resolving_to_private_addresses_are_not_called(answers) -> None:
    seen: list[httpx.Request] = []
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200))
    )
    loop = asyncio.get_running_loop()
    loop.getaddrinfo = _fake_dns({"rebind.example": answers})  # type: ignore[method-assign]
    try:
        async with JobRunner(
            MemoryJobStore(),
            _noop,
            http_client=client,
            allow_private_webhooks=False,
            delivery_policy=DeliveryPolicy(max_attempts=1, timeout=2),
        ) as runner:
            delivery = await _run_job(runner, "http://rebind.example:8080/hook")
    finally:
        del loop.getaddrinfo
        await client.aclose()
    assert seen == []
    assert delivery.status == "failed" and "private" in delivery.last_error


async def test_delivery_connects_to_the_checked_address_with_host_and_sni() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    loop = asyncio.get_running_loop()
    loop.getaddrinfo = _fake_dns({"hooks.example": ["93.184.216.34"]})  # type: ignore[method-assign]
    try:
        async with JobRunner(
            MemoryJobStore(), _noop, http_client=client, allow_private_webhooks=False
        ) as runner:
            delivery = await _run_job(runner, "https://hooks.example:8443/in?x=1")
    finally:
        del loop.getaddrinfo
        await client.aclose()
    assert delivery.status == "delivered"
    (request,) = seen
    assert request.url.host == "93.184.216.34" and request.url.port == 8443
    assert request.url.path == "/in" and request.url.query == b"x=1"
    assert request.headers["host"] == "hooks.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.example"


async def test_private_literal_refused_by_runner_submit() -> None:
    async with JobRunner(MemoryJobStore(), _noop, allow_private_webhooks=False) as runner:
        with pytest.raises(PrivateAddressError):
            await runner.submit({}, webhook_url="http://2130706433:9/", webhook_secret="s" * 32)
    with pytest.raises(TypeError):
        JobRunner(MemoryJobStore(), _noop, allow_private_webhooks="false")  # type: ignore[arg-type]


async def test_guard_off_by_default_for_library_callers(receiver) -> None:
    async with JobRunner(MemoryJobStore(), _noop) as runner:
        delivery = await _run_job(runner, receiver.url, receiver.secret)
    assert delivery.status == "delivered"


def test_webhook_secrets_are_encrypted_at_rest(tmp_path) -> None:
    import sqlite3
    import time as _time

    from gonka_mux.webhooks import Job, SQLiteJobStore
    from gonka_mux.webhooks.signing import Secret

    path = tmp_path / "jobs.sqlite3"
    store = SQLiteJobStore(path)
    now = _time.time()
    secret = "whsec-very-secret-value-0123456789"
    store.add_job(
        Job(
            id="j1",
            params={},
            webhook_url="https://x.example/h",
            webhook_secret=Secret(secret),
            created_at=now,
            updated_at=now,
        )
    )
    store.close()
    raw = sqlite3.connect(path).execute("SELECT webhook_secret FROM jobs").fetchone()[0]
    assert raw.startswith("enc1:") and secret not in raw
    assert secret.encode() not in path.read_bytes()
    key = path.with_name("jobs.sqlite3.key")
    assert key.stat().st_mode & 0o777 == 0o600
    reopened = SQLiteJobStore(path)
    assert reopened.get_job("j1").webhook_secret.reveal() == secret
    reopened.close()
