"""The client-side node monitor, against real loopback servers (vLLM-shaped and the sidecar)."""

from __future__ import annotations

import asyncio
import math

import pytest
from _serving_support import RecordedVllm, free_port, recorded
from test_serve_supervisor import FAST, make_supervisor, wait_until

from gonka_mux.errors import ConfigError
from gonka_mux.serving.health import HealthReporter, HealthServer
from gonka_mux.serving.supervisor import State, SupervisorConfig
from gonka_mux.vllm_node import DEFAULT_VLLM_BASE_URL, NodeSnapshot, VllmNodeMonitor, node_from_env


async def test_polls_vllm_directly_and_follows_the_queue(recorded_vllm: RecordedVllm) -> None:
    updates: list[NodeSnapshot] = []
    monitor = VllmNodeMonitor(recorded_vllm.url + "/v1", interval=0.05, on_update=updates.append)
    assert monitor.base_url == recorded_vllm.url  # an OpenAI-style base_url is accepted
    snapshot = await monitor.start()
    try:
        assert snapshot.ready and monitor.ready and monitor.state == "ready"
        assert monitor.models == ["tiny"]
        assert (monitor.queue_depth, snapshot.running, snapshot.waiting) == (6.0, 2.0, 4.0)
        assert monitor.load == 6.0
        assert monitor.kv_cache_usage == pytest.approx(0.000244, rel=1e-2)
        assert updates and updates[0] is snapshot
        recorded_vllm.metrics_text = recorded("vllm-0.32.0-cpu-after-load.metrics.txt")
        await wait_until(lambda: monitor.queue_depth == 0.0, timeout=5)
        assert monitor.load == 0.0 and len(updates) >= 2
        # A node that stops answering is "down", but its last known queue is kept (a missed
        # poll is no evidence that the queue emptied).
        recorded_vllm.metrics_text = recorded("vllm-0.32.0-cpu-under-load.metrics.txt")
        await wait_until(lambda: monitor.queue_depth == 6.0, timeout=5)
        recorded_vllm.close()
        await wait_until(lambda: monitor.state == "down", timeout=5)
        assert monitor.queue_depth == 6.0 and monitor.models == ["tiny"] and not monitor.ready
        assert monitor.snapshot.error
    finally:
        await monitor.aclose()
    count = len(updates)
    await asyncio.sleep(0.2)
    assert len(updates) == count  # polling stopped with aclose()


async def test_old_vllm_metrics_count_swapped_as_waiting() -> None:
    server = RecordedVllm(recorded("vllm-v0-legacy.metrics.txt"), models=["mymodelname"])
    try:
        async with VllmNodeMonitor(server.url, interval=5) as monitor:
            assert monitor.queue_depth == 5.0 and monitor.kv_cache_usage == 0.0
    finally:
        server.close()


async def test_async_callback_and_an_unreachable_node() -> None:
    seen: list[str] = []

    async def on_update(snapshot: NodeSnapshot) -> None:
        await asyncio.sleep(0)
        seen.append(snapshot.state)

    monitor = VllmNodeMonitor(f"http://127.0.0.1:{free_port()}", interval=0.05, on_update=on_update)
    snapshot = await monitor.start()
    try:
        assert snapshot.state == "down" and not monitor.ready
        assert monitor.load == math.inf and monitor.queue_depth == 0.0 and monitor.models == []
        await wait_until(lambda: len(seen) >= 3, timeout=5)
        assert set(seen) == {"down"}
    finally:
        await monitor.aclose()


async def test_reads_the_sidecar_and_sees_draining_before_vllm_stops(port: int) -> None:
    config = SupervisorConfig(**{**FAST.__dict__, "drain_notice_s": 1.5})
    sup, _ = make_supervisor(port, config=config)
    reporter = HealthReporter(supervisor=sup, gpu_reader=None)
    sidecar = HealthServer(reporter, port=0)
    await sidecar.start()
    task = asyncio.create_task(sup.run())
    monitor = VllmNodeMonitor(sup.base_url, health_url=sidecar.url, interval=0.05)
    try:
        await sup.wait_for_state(State.READY, timeout=15)
        await monitor.start()
        await wait_until(lambda: monitor.ready, timeout=5)
        assert monitor.models == ["fake"] and monitor.queue_depth == 0.0
        sup.request_stop()
        await wait_until(lambda: monitor.state == "draining", timeout=5)
        assert not monitor.ready and monitor.load == math.inf
        assert await asyncio.wait_for(task, 15) == 0
        await wait_until(lambda: monitor.state == "stopped", timeout=5)
    finally:
        await monitor.aclose()
        await sidecar.aclose()
        await reporter.aclose()


def test_node_from_env() -> None:
    assert node_from_env({}) == (DEFAULT_VLLM_BASE_URL, None)
    assert DEFAULT_VLLM_BASE_URL == "http://localhost:8000"
    env = {
        "GONKA_VLLM_BASE_URL": "http://gpu-1:8000",
        "GONKA_VLLM_HEALTH_URL": "http://gpu-1:8001/health",
    }
    assert node_from_env(env) == ("http://gpu-1:8000", "http://gpu-1:8001/health")


def test_repr_hides_the_key_and_bad_interval_is_refused() -> None:
    monitor = VllmNodeMonitor("http://h:8000", api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(monitor)
    with pytest.raises(ConfigError, match="interval"):
        VllmNodeMonitor("http://h:8000", interval=0)
