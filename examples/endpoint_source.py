"""A user-written endpoint source: service discovery from a JSON file, with a lifecycle.

The file lists endpoints and their state (``ready``, ``draining``, ``down``); the source adds
new ones, reports state changes to routing at once (``mark_ready`` / ``mark_draining`` /
``mark_down``) and removes the ones that left (``mark_gone``). It is what a Consul watcher, a
Kubernetes endpoints watcher or a Gonka participant group does, in 60 lines.

Run: python examples/endpoint_source.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

from gonka_mux import AsyncMultiplexer
from gonka_mux.testing import FakeBackendSpec, FakeFleet

MESSAGES = [{"role": "user", "content": "ping"}]


class FileSource:
    """Endpoints from ``path``: ``[{"name", "url", "models", "state"}]``, re-read every
    ``interval`` seconds. Implements gonka_mux.EndpointSource (start + aclose)."""

    def __init__(self, path: Path, *, interval: float = 0.1) -> None:
        self.path = path
        self.interval = interval
        self.mux: Any = None
        self.names: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self, mux: Any) -> None:
        self.mux = mux
        self.sync()  # the first read registers the endpoints before any request
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sync()

    def sync(self) -> None:
        entries = {e["name"]: e for e in json.loads(self.path.read_text())}
        for name in self.names - entries.keys():
            self.mux.mark_gone(name)  # left: removed (its requests in flight finish)
        for name, entry in entries.items():
            if name not in self.names:
                self.mux.add_endpoint(entry["url"], models=entry["models"], name=name)
            state = entry.get("state", "ready")
            if state == "ready" and self.mux.get_endpoint(name).lifecycle != "active":
                self.mux.mark_ready(name)  # back: traffic at once
            elif state == "draining":
                self.mux.mark_draining(name)  # no new requests; in-flight ones finish
            elif state == "down":
                self.mux.mark_down(name)
        self.names = set(entries)


def write(path: Path, fleet: FakeFleet, states: dict[str, str]) -> None:
    entries = [
        {"name": n, "url": fleet[n].url, "models": ["m"], "state": s} for n, s in states.items()
    ]
    path.write_text(json.dumps(entries))


async def main() -> None:
    with FakeFleet([FakeBackendSpec(name="a"), FakeBackendSpec(name="b")]) as fleet:
        path = Path(tempfile.mkdtemp()) / "endpoints.json"
        write(path, fleet, {"a": "ready", "b": "ready"})
        mux = AsyncMultiplexer()
        mux.add_source(FileSource(path, interval=0.05))
        for _ in range(6):
            await mux.chat.completions.create(model="m", messages=MESSAGES)
        print("both ready:", fleet.request_counts())

        write(path, fleet, {"a": "ready", "b": "draining"})
        await asyncio.sleep(0.2)
        fleet.clear()
        for _ in range(6):
            await mux.chat.completions.create(model="m", messages=MESSAGES)
        print("b draining:", fleet.request_counts())

        write(path, fleet, {"a": "ready"})
        await asyncio.sleep(0.2)
        print("b gone:", sorted(mux.stats()["endpoints"]))
        await mux.aclose()


if __name__ == "__main__":
    asyncio.run(main())
