"""A gateway under test: fake endpoints (real loopback servers), a Multiplexer, API keys, limits,
metering and a job runner, served by uvicorn on a free loopback port."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from gonka_mux import AsyncMultiplexer
from gonka_mux.gateway import KeyStore, create_app
from gonka_mux.limits import LimitsConfig, RateLimit, RateLimiter, Tier
from gonka_mux.metering import MemoryUsageStore, Meter
from gonka_mux.testing import FakeBackend, FakeFleet

from ._serve import serve

ADMIN_KEY = "gmx_admin_test-admin-key"
MSG = [{"role": "user", "content": "hello"}]

TIERS = {
    "default": RateLimit(rpm=10_000, tpm=100_000_000),
    "tiny": RateLimit(rpm=3, tpm=1_000_000),
    "pro": RateLimit(rpm=600, tpm=100_000_000),
}


def limits_config(**tiers: RateLimit) -> LimitsConfig:
    merged = {**TIERS, **tiers}
    return LimitsConfig(tiers={n: Tier(n, lim) for n, lim in merged.items()}, max_wait=0)


@dataclass
class Harness:
    url: str
    mux: AsyncMultiplexer
    keys: KeyStore
    usage: MemoryUsageStore
    meter: Meter
    limiter: RateLimiter
    backends: list[FakeBackend]
    api_key: str
    key_id: str
    http: httpx.AsyncClient
    memory: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.api_key}"}

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    def openai(self, key: str | None = None) -> Any:
        import openai

        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key or self.api_key)

    def new_key(self, tier: str = "default", name: str = "") -> tuple[str, str]:
        record, plaintext = self.keys.create(name=name, tier=tier)
        return record.id, plaintext

    def records(self, **filters: Any) -> list[Any]:
        self.meter.flush(timeout=5)
        return self.usage.select(**filters)

    def served(self) -> int:
        return sum(
            1
            for b in self.backends
            for r in b.requests
            if r.path.endswith(("/chat/completions", "/completions", "/embeddings"))
            and r.fault is None
        )


@pytest.fixture
def fleet():
    with FakeFleet([{"name": "a"}, {"name": "b"}]) as f:
        yield f


async def make_gateway(
    backends: list[FakeBackend],
    tmp_path: Any,
    *,
    limits: LimitsConfig | None = None,
    **app_kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """A gateway app over ``backends`` with limits, metering (in memory), jobs and memory, each
    with its files in ``tmp_path``; returns the app and its parts."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    mux = AsyncMultiplexer(max_attempts=3, wait_for_capacity=0.2)
    for b in backends:
        mux.add_endpoint(b.url, models=["m", "fake-model"], name=b.name)
    limiter = mux.enable_limits(limits or limits_config())
    meter = mux.enable_metering("memory", flush_interval=0.05)
    mux.configure_jobs(path=tmp_path / "jobs.sqlite3")
    mux.enable_sessions("memory")
    memory = mux.enable_memory(tmp_path / "memory.sqlite3")
    keys = KeyStore(tmp_path / "keys.sqlite3")
    app = create_app(mux, keys=keys, admin_key=ADMIN_KEY, **app_kwargs)
    return app, {
        "mux": mux,
        "keys": keys,
        "usage": meter.store,
        "meter": meter,
        "limiter": limiter,
        "memory": memory,
    }


@pytest.fixture
async def gateway(fleet, tmp_path):
    app, state = await make_gateway(list(fleet), tmp_path)
    record, plaintext = state["keys"].create(name="tester", tier="default")
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield Harness(
            url=url,
            backends=list(fleet),
            api_key=plaintext,
            key_id=record.id,
            http=http,
            **state,
        )
    await state["mux"].aclose()
    state["keys"].close()
