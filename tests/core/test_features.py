"""Features as units: hook order, typed slots, config sections, a user-written feature, and
every store a Multiplexer opens closed again by close()/aclose() (counted in open fds)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gonka_mux import AsyncMultiplexer, ConfigError, Multiplexer
from gonka_mux.features import Feature, Slot, feature_classes, register_feature
from gonka_mux.testing import FakeBackend

MSG = [{"role": "user", "content": "hi"}]


def open_fds_under(directory: Path) -> list[str]:
    """Open file descriptors of this process that point into ``directory``."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            out.append(target)
    return out


def enable_everything(mux: Any, tmp: Path) -> None:
    from gonka_mux.sessions import DiskSessionStore

    mux.enable_limits(
        {"default_tier": "t", "tiers": {"t": {"rpm": 1000}}},
        backend="sqlite",
        path=tmp / "limits.sqlite3",
    )
    mux.enable_metering(path=tmp / "usage.sqlite3")
    mux.enable_sessions(DiskSessionStore(tmp / "sessions"))
    mux.enable_memory(tmp / "memory.sqlite3")
    mux.configure_jobs(path=tmp / "jobs.sqlite3")


@pytest.fixture
def backend():
    with FakeBackend(models=["m"]) as fb:
        yield fb


async def test_aclose_closes_every_store_it_opened(tmp_path: Path, backend: FakeBackend):
    """Limits, metering, sessions, memory and the jobs database: nothing stays open."""
    mux = AsyncMultiplexer()
    mux.add_endpoint(backend.url, models=["m"])
    enable_everything(mux, tmp_path)
    await mux.start_jobs()
    await mux.chat.completions.create(model="m", messages=MSG, session_id="s1")
    mux.memory.put("ns", "k", "a fact")
    assert open_fds_under(tmp_path)  # the stores are open while it runs
    await mux.aclose()
    assert open_fds_under(tmp_path) == []


def test_close_closes_every_store_it_opened_sync(tmp_path: Path, backend: FakeBackend):
    mux = Multiplexer()
    mux.add_endpoint(backend.url, models=["m"])
    enable_everything(mux, tmp_path)
    mux.start_jobs()
    mux.chat.completions.create(model="m", messages=MSG, session_id="s1")
    assert open_fds_under(tmp_path)
    mux.close()
    assert open_fds_under(tmp_path) == []


def test_built_in_features_own_their_sections_and_order():
    by_name = {cls.name: cls for cls in feature_classes()}
    assert {"limits", "metering", "sessions", "memory", "tiering", "jobs"} <= set(by_name)
    assert by_name["metering"].sections == ("metering", "prices")
    assert by_name["jobs"].sections == ("webhooks",)
    order = [c.name for c in feature_classes() if c.hooks]
    # tiering picks the model, sessions prepend history, limits count the prompt, metering last
    assert order.index("tiering") < order.index("sessions") < order.index("limits")
    assert order.index("limits") < order.index("metering")


async def test_hooks_run_in_declared_order_whatever_the_enable_order(backend: FakeBackend):
    seen: list[str] = []

    class Probe(Feature):
        def __init__(self, name: str, order: int) -> None:
            self.label, self.my_order = name, order

        async def before(self, ctx: Any) -> None:
            seen.append(f"before {self.label}")

        async def after(self, ctx: Any) -> None:
            seen.append(f"after {self.label}")

    mux = AsyncMultiplexer()
    mux.add_endpoint(backend.url, models=["m"])
    mux.add_extension(Probe("late", 0), order=60)
    mux.add_extension(Probe("early", 0), order=5)
    await mux.chat.completions.create(model="m", messages=MSG)
    assert seen == ["before early", "before late", "after late", "after early"]
    await mux.aclose()


# -- a user-written feature ----------------------------------------------------------------

TAGS: Slot[list[str]] = Slot("example.tags")


@register_feature
class RequestTagger(Feature):
    """Adds a header to every request and counts requests per tag (a [tagger] section)."""

    name = "example-tagger"
    sections: ClassVar[tuple[str, ...]] = ("tagger",)
    order = 50

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.counts: dict[str, int] = {}
        self.closed = False

    @classmethod
    def from_config(cls, data: Mapping[str, Any], source: str) -> RequestTagger | None:
        if "tagger" not in data:
            return None
        section = dict(data["tagger"])
        tag = section.pop("tag", None)
        if not isinstance(tag, str) or section:
            raise ConfigError("needs exactly tag = '...'", source=source, key="tagger")
        return cls(tag)

    async def before(self, ctx: Any) -> None:
        ctx.set(TAGS, [self.tag])

    async def after(self, ctx: Any) -> None:
        for tag in ctx.get(TAGS) or ():
            self.counts[tag] = self.counts.get(tag, 0) + 1

    async def aclose(self) -> None:
        self.closed = True


async def test_a_user_feature_from_config_runs_and_closes(backend: FakeBackend):
    config = {
        "endpoints": [{"base_url": backend.url, "models": ["m"]}],
        "tagger": {"tag": "team-a"},
    }
    mux = AsyncMultiplexer.from_config(config)
    feature = mux.features["example-tagger"]
    await mux.chat.completions.create(model="m", messages=MSG)
    await mux.chat.completions.create(model="m", messages=MSG)
    assert feature.counts == {"team-a": 2}
    await mux.aclose()
    assert feature.closed


def test_a_user_feature_section_is_validated_by_the_feature():
    with pytest.raises(ConfigError, match=r"\[tagger\]"):
        AsyncMultiplexer.from_config({"tagger": {"tag": 1}})


def test_one_feature_per_name():
    mux = AsyncMultiplexer()
    mux.enable_metering("memory")
    with pytest.raises(ValueError, match="already enabled"):
        mux.enable_metering("memory")
