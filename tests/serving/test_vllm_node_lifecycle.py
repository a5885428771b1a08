"""A vLLM node's own health reaches routing: restarted -> traffic within one poll of ready;
draining -> no new requests while in-flight ones finish; starting/down -> out of rotation.

The node is a fake OpenAI backend (the completions) plus a stand-in for gonka-serve's health
sidecar (the JSON state the Multiplexer polls), both real loopback servers.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from _serving_support import StateSidecar

from gonka_mux import AsyncMultiplexer, HealthPolicy, Multiplexer
from gonka_mux.testing import FakeBackend, Faults

MSG = [{"role": "user", "content": "hi"}]
POLL = 0.1


@pytest.fixture
def node():
    with FakeBackend(models=["tiny"], name="gpu") as fb:
        sidecar = StateSidecar(["tiny"]).start()
        try:
            yield fb, sidecar
        finally:
            sidecar.close()


async def _until(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def test_a_restarted_node_gets_traffic_within_one_poll_of_ready(node):
    """A node ejected by the failures of its restart serves again one poll after it is ready
    (it used to stay ejected for the rest of its ejection, 35-51 s)."""
    fb, sidecar = node
    # no fallback: this node is the only endpoint; eject it quickly (the default ejection is
    # 10 s, doubling: the node must not wait for it to run out)
    mux = AsyncMultiplexer(health=HealthPolicy(eject_after=2, failure_cooldown=0.01))
    ep = await mux.add_vllm_node(fb.base_url, health_url=sidecar.url, name="gpu", interval=POLL)
    await mux.chat.completions.create(model="tiny", messages=MSG)
    # The node goes down between two polls: requests fail until the endpoint is ejected.
    fb.set_faults(Faults(down=True))
    for _ in range(6):
        with pytest.raises(Exception):  # noqa: B017 - connection errors, then no endpoint
            await mux.chat.completions.create(model="tiny", messages=MSG, deadline=0.5)
    assert mux.stats()["endpoints"]["gpu"]["state"] == "ejected"
    sidecar.state = "starting"
    await _until(lambda: ep.lifecycle == "down")
    # It is back: the sidecar says ready.
    fb.set_faults(Faults())
    sidecar.state = "ready"
    ready_at = time.monotonic()
    await _until(lambda: mux.stats()["endpoints"]["gpu"]["state"] == "healthy")
    reply = await mux.chat.completions.create(model="tiny", messages=MSG)
    assert reply.choices[0].message.content
    assert time.monotonic() - ready_at < 2 * POLL + 1.0
    await mux.aclose()


async def test_a_draining_node_gets_no_new_requests_and_finishes_its_own(node):
    fb, sidecar = node
    fb.set_faults(Faults(latency=0.6))
    mux = AsyncMultiplexer()
    await mux.add_vllm_node(fb.base_url, health_url=sidecar.url, name="gpu", interval=POLL)
    in_flight = asyncio.ensure_future(mux.chat.completions.create(model="tiny", messages=MSG))
    await _until(lambda: fb.request_count >= 1)
    sidecar.state = "draining"
    await _until(lambda: mux.stats()["endpoints"]["gpu"]["state"] == "draining")
    seen = fb.request_count
    for _ in range(3):
        with pytest.raises(Exception):  # noqa: B017 - NoEndpointAvailable: nobody else serves
            await mux.chat.completions.create(model="tiny", messages=MSG, deadline=0.3)
    assert fb.request_count == seen  # not one new request reached the draining node
    reply = await in_flight  # the request it was serving finishes normally
    assert reply.choices[0].message.content
    sidecar.state = "ready"
    await _until(lambda: mux.stats()["endpoints"]["gpu"]["state"] == "healthy")
    await mux.chat.completions.create(model="tiny", messages=MSG)
    assert fb.request_count == seen + 1
    await mux.aclose()


async def test_a_draining_node_sends_its_traffic_to_the_others(node):
    fb, sidecar = node
    with FakeBackend(models=["tiny"], name="other") as other:
        mux = AsyncMultiplexer()
        await mux.add_vllm_node(fb.base_url, health_url=sidecar.url, name="gpu", interval=POLL)
        mux.add_endpoint(other.url, models=["tiny"], name="other")
        sidecar.state = "draining"
        await _until(lambda: mux.stats()["endpoints"]["gpu"]["state"] == "draining")
        before = fb.request_count
        for _ in range(10):
            await mux.chat.completions.create(model="tiny", messages=MSG)
        assert fb.request_count == before
        assert other.request_count == 10
        await mux.aclose()


def test_sync_face_follows_the_node_state(node):
    fb, sidecar = node
    with Multiplexer() as mux:
        mux.add_vllm_node(fb.base_url, health_url=sidecar.url, name="gpu", interval=POLL)
        sidecar.state = "starting"
        end = time.monotonic() + 5
        while mux.stats()["endpoints"]["gpu"]["state"] != "down":
            assert time.monotonic() < end
            time.sleep(0.02)
        sidecar.state = "ready"
        while mux.stats()["endpoints"]["gpu"]["state"] != "healthy":
            assert time.monotonic() < end
            time.sleep(0.02)
        assert mux.chat.completions.create(model="tiny", messages=MSG).choices
