"""Nodes that come and go: VllmNodeSource keeps polling a node that is down and adds it when it
answers; the config path ([vllm] / GONKA_VLLM_BASE_URL) uses it; and a vLLM child killed under
gonka-serve's supervisor gets traffic again within one poll of being ready (no fallback).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from _serving_support import StateSidecar, fake_vllm_cmd, free_port

from gonka_mux import AsyncMultiplexer, HealthPolicy, Multiplexer
from gonka_mux.serving.command import build_launch
from gonka_mux.serving.health import HealthReporter, HealthServer
from gonka_mux.serving.registry import Profile
from gonka_mux.serving.supervisor import Backoff, State, Supervisor, SupervisorConfig
from gonka_mux.testing import FakeBackend
from gonka_mux.vllm_node import VllmNodeSource

MSG = [{"role": "user", "content": "hi"}]
POLL = 0.1


async def until(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


@pytest.fixture
def backend():
    with FakeBackend(models=["tiny"], name="gpu") as fb:
        yield fb


async def test_a_configured_node_down_at_the_first_request_joins_when_it_comes_up(backend):
    """It used to be lost for good: the setup step failed once and was discarded."""
    sidecar = StateSidecar(["tiny"])  # not started: the node is unreachable
    mux = AsyncMultiplexer.from_config(
        {"vllm": {"base_url": backend.base_url, "health_url": sidecar.url, "interval": POLL}}
    )
    try:
        with pytest.raises(Exception, match="tiny"):
            await mux.chat.completions.create(model="tiny", messages=MSG)
        assert mux.endpoints == []
        sidecar.start()
        await until(lambda: len(mux.endpoints) == 1)
        reply = await mux.chat.completions.create(model="tiny", messages=MSG)
        assert reply.choices[0].message.content
        assert mux.endpoints[0].kind == "vllm"
    finally:
        await mux.aclose()
        sidecar.close()


def test_sync_face_config_node_down_then_up(backend, monkeypatch):
    sidecar = StateSidecar(["tiny"])
    monkeypatch.setenv("GONKA_VLLM_BASE_URL", backend.base_url)
    monkeypatch.setenv("GONKA_VLLM_HEALTH_URL", sidecar.url)
    try:
        with Multiplexer.from_config({"vllm": {"interval": POLL}}) as mux:
            assert mux.endpoints == []  # down at build: no error, no endpoint yet
            sidecar.start()
            end = time.monotonic() + 5
            while not mux.endpoints:
                assert time.monotonic() < end
                time.sleep(0.02)
            assert mux.chat.completions.create(model="tiny", messages=MSG).choices
    finally:
        sidecar.close()


async def test_models_given_registers_the_node_down_until_it_is_ready(backend):
    sidecar = StateSidecar(["tiny"], state="starting").start()
    mux = AsyncMultiplexer()
    try:
        ep = await mux.add_vllm_node(
            backend.base_url, health_url=sidecar.url, name="gpu", interval=POLL, models=["tiny"]
        )
        assert ep.models == {"tiny": "tiny"} and ep.lifecycle == "down"
        sidecar.state = "ready"
        await until(lambda: ep.lifecycle == "active")
        assert (await mux.chat.completions.create(model="tiny", messages=MSG)).choices
    finally:
        await mux.aclose()
        sidecar.close()


async def test_add_vllm_node_without_models_still_says_what_to_do():
    mux = AsyncMultiplexer()
    with pytest.raises(ValueError, match="models=") as info:
        await mux.add_vllm_node(f"http://127.0.0.1:{free_port()}", interval=POLL)
    assert "VllmNodeSource" in str(info.value)
    await mux.aclose()


async def test_source_lifecycle_and_wait_joined(backend):
    sidecar = StateSidecar(["tiny"])
    source = VllmNodeSource(
        backend.base_url, health_url=sidecar.url, name="gpu", interval=POLL, api_key="sk-x-1"
    )
    assert "sk-x-1" not in repr(source)
    mux = AsyncMultiplexer()
    mux.add_source(source)  # on a running loop: started now
    try:
        with pytest.raises(asyncio.TimeoutError):
            await source.wait_joined(3 * POLL)  # the node is down: polled, not added
        with pytest.raises(Exception):  # noqa: B017 - ModelNotFound
            await mux.chat.completions.create(model="tiny", messages=MSG)
        sidecar.start()
        ep = await source.wait_joined(5)
        await until(lambda: ep.lifecycle == "active")
        sidecar.state = "draining"
        await until(lambda: ep.lifecycle == "draining")
        sidecar.state = "starting"
        await until(lambda: ep.lifecycle == "down")
        sidecar.close()  # gone from the network: still down, still polled
        await asyncio.sleep(3 * POLL)
        assert ep.lifecycle == "down" and source.state == "down"
        sidecar.start()
        sidecar.state = "ready"
        await until(lambda: ep.lifecycle == "active")
    finally:
        await mux.aclose()
        sidecar.close()


async def test_killed_vllm_child_under_the_supervisor_serves_again_within_one_poll(port):
    """gonka-serve's supervisor restarts the killed server; the Multiplexer (this node only, no
    fallback) serves again within one health poll of the sidecar saying ready."""
    config = SupervisorConfig(
        startup_timeout_s=15,
        drain_timeout_s=2,
        poll_interval_s=0.05,
        liveness_interval_s=0.1,
        kill_grace_s=1,
        restart_term_grace_s=1,
    )
    profile = Profile(
        name="fake",
        model="fake-model",
        served_model_name="fake",
        device="cpu",
        gpus=0,
        vllm_cmd=fake_vllm_cmd(),
        drain_timeout_s=2,
    )
    plan = build_launch(profile, port=port, extra_args=["--token-delay", "0.001"])
    ready_at: list[float] = []

    def on_event(event) -> None:
        if event.kind == "state" and event.message.startswith("ready"):
            ready_at.append(time.monotonic())

    sup = Supervisor(
        plan,
        config=config,
        backoff=Backoff(initial_s=0.2, max_s=0.2, max_restarts=3),
        profile_name="fake",
        on_event=on_event,
    )
    reporter = HealthReporter(supervisor=sup, gpu_reader=None)
    sidecar = HealthServer(reporter, port=0)
    await sidecar.start()
    task = asyncio.create_task(sup.run())
    # eject fast, as a real outage would: ready must override the ejection, not wait it out
    mux = AsyncMultiplexer(health=HealthPolicy(eject_after=1, failure_cooldown=0.01))

    async def ask() -> str:
        stream = await mux.chat.completions.create(
            model="fake", messages=MSG, max_tokens=3, stream=True, deadline=2
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    try:
        await sup.wait_for_state(State.READY, timeout=15)
        ep = await mux.add_vllm_node(sup.base_url, health_url=sidecar.url, interval=POLL)
        assert await ask()
        os.kill(sup.pid, signal.SIGKILL)  # the vLLM child dies
        await until(lambda: sup.state is not State.READY, timeout=5)
        with pytest.raises(Exception):  # noqa: B017 - nothing serves "fake" now
            await ask()
        await until(lambda: sup.restarts == 1 and sup.state is State.READY, timeout=15)
        while True:  # the first successful request after ready
            try:
                assert await ask()
                break
            except Exception:
                await asyncio.sleep(0.01)
        served_after = time.monotonic() - ready_at[-1]
        assert served_after < POLL + 1.0, served_after  # one poll, plus slack for a slow box
        assert ep.lifecycle == "active" and mux.endpoints == [ep]
    finally:
        await mux.aclose()
        sup.request_stop()
        await asyncio.wait_for(task, 15)
        await sidecar.aclose()
        await reporter.aclose()
