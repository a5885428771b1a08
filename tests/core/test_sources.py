"""Endpoint sources: the user-written one of docs/extending.md (examples/endpoint_source.py)
drives routing through the public lifecycle; add_source's start/close contract."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from examples.endpoint_source import FileSource, write

from gonka_mux import AsyncMultiplexer, EndpointSource, Multiplexer
from gonka_mux.testing import FakeBackendSpec, FakeFleet

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fleet():
    with FakeFleet([FakeBackendSpec(name="a"), FakeBackendSpec(name="b")]) as f:
        yield f


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


async def test_file_source_adds_drains_revives_and_removes(tmp_path: Path, fleet: FakeFleet):
    path = tmp_path / "endpoints.json"
    write(path, fleet, {"a": "ready", "b": "ready"})
    mux = AsyncMultiplexer()
    source = mux.add_source(FileSource(path, interval=0.02))
    assert isinstance(source, EndpointSource)
    await mux.chat.completions.create(model="m", messages=MSG)  # the source starts first
    assert sorted(mux.stats()["endpoints"]) == ["a", "b"]

    write(path, fleet, {"a": "ready", "b": "draining"})
    await _until(lambda: mux.stats()["endpoints"]["b"]["state"] == "draining")
    fleet.clear()
    for _ in range(8):
        await mux.chat.completions.create(model="m", messages=MSG)
    assert fleet.request_counts() == {"a": 8, "b": 0}

    write(path, fleet, {"a": "down", "b": "ready"})
    await _until(lambda: mux.stats()["endpoints"]["a"]["state"] == "down")
    fleet.clear()
    for _ in range(4):
        await mux.chat.completions.create(model="m", messages=MSG)
    assert fleet.request_counts() == {"a": 0, "b": 4}

    write(path, fleet, {"b": "ready"})
    await _until(lambda: "a" not in mux.stats()["endpoints"])
    await mux.aclose()
    assert source._task is not None and source._task.done()  # aclose stopped its watcher


def test_file_source_on_the_sync_face(tmp_path: Path, fleet: FakeFleet):
    path = tmp_path / "endpoints.json"
    write(path, fleet, {"a": "ready"})
    with Multiplexer() as mux:
        mux.add_source(FileSource(path, interval=0.02))  # started at once on the mux's loop
        assert [ep.name for ep in mux.endpoints] == ["a"]
        assert mux.chat.completions.create(model="m", messages=MSG).choices


def test_add_source_refuses_what_is_not_a_source():
    with pytest.raises(TypeError, match="start"):
        AsyncMultiplexer().add_source(object())  # type: ignore[arg-type]
