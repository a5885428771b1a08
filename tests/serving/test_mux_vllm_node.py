"""mux.add_vllm_node: models discovered, queue depth fed to the router, env default, sync face."""

from __future__ import annotations

import asyncio

import pytest
from _serving_support import RecordedVllm, recorded

from gonka_mux import AsyncMultiplexer, Multiplexer


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_node_models_and_queue_depth_reach_the_router(recorded_vllm: RecordedVllm):
    mux = AsyncMultiplexer()
    ep = await mux.add_vllm_node(recorded_vllm.url + "/v1", name="gpu-1", interval=0.05)
    assert ep.kind == "vllm" and ep.models == {"tiny": "tiny"} and ep.name == "gpu-1"
    assert ep.external_load == 6.0  # 2 running + 4 waiting in the recorded /metrics
    assert [m.id for m in (await mux.models.list()).data] == ["tiny"]
    recorded_vllm.metrics_text = recorded("vllm-0.32.0-cpu-after-load.metrics.txt")
    await _until(lambda: ep.external_load == 0.0)
    assert mux.stats()["endpoints"]["gpu-1"]["external_load"] == 0.0
    await mux.aclose()


async def test_a_node_that_is_not_ready_is_taken_out_of_rotation(recorded_vllm: RecordedVllm):
    mux = AsyncMultiplexer()
    ep = await mux.add_vllm_node(recorded_vllm.url, interval=0.05)
    assert mux.stats()["endpoints"][ep.name]["state"] == "healthy"
    recorded_vllm.health_status = 503
    await _until(lambda: mux.stats()["endpoints"][ep.name]["state"] == "down")
    recorded_vllm.health_status = 200
    await _until(lambda: mux.stats()["endpoints"][ep.name]["state"] == "healthy", timeout=5)
    await mux.aclose()


def test_env_default_and_sync_face(recorded_vllm: RecordedVllm, monkeypatch):
    monkeypatch.setenv("GONKA_VLLM_BASE_URL", recorded_vllm.url)
    with Multiplexer() as mux:
        ep = mux.add_vllm_node(interval=0.05)
        assert ep.models == {"tiny": "tiny"} and ep.base_url.startswith(recorded_vllm.url)


async def test_unreachable_node_is_a_clear_error():
    mux = AsyncMultiplexer()
    with pytest.raises(ValueError, match="reported no models"):
        await mux.add_vllm_node("http://127.0.0.1:9/v1", interval=0.05)
    await mux.aclose()


async def test_from_config_registers_the_node_at_the_first_request(
    recorded_vllm: RecordedVllm, monkeypatch
):
    monkeypatch.setenv("GONKA_VLLM_BASE_URL", recorded_vllm.url)
    mux = AsyncMultiplexer.from_config({})
    assert mux.endpoints == []  # registered on the loop that serves, at the first request
    with pytest.raises(Exception):  # noqa: B017 - the recorded node serves no completions
        await mux.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    assert [ep.kind for ep in mux.endpoints] == ["vllm"]
    await mux.aclose()
