"""Configuration from TOML, dicts and the environment, with errors that name the key."""

from __future__ import annotations

import pytest

from gonka_mux import AsyncMultiplexer, ConfigError, HedgePolicy, Multiplexer
from gonka_mux.config import routing_settings
from gonka_mux.testing import FakeBackend

TOML = """
[routing]
strategy = "round_robin"
first_byte_timeout = 12.5
deadline = 30
max_attempts = 2

[routing.retry_budget]
ratio = 0.5

[routing.health]
eject_after = 3

[routing.hedging]
delay = "p90"
max_hedges = 1

[routing.context_fallbacks]
small = "large"

[aliases]
smart = "m"

[[endpoints]]
name = "one"
base_url = "{url}"
models = ["m"]
weight = 2
max_concurrent = 4

[[endpoints]]
name = "two"
base_url = "{url}"
api_key_env = "TEST_TWO_KEY"
models = {{ "m" = "upstream-m" }}
tier = "fallback"
"""


async def test_from_toml_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_TWO_KEY", "sk-secret-two")
    with FakeBackend(models=["m", "upstream-m"]) as fb:
        path = tmp_path / "mux.toml"
        path.write_text(TOML.format(url=fb.url))
        mux = AsyncMultiplexer.from_config(path)
        s = mux.settings
        assert (s.strategy, s.first_byte_timeout, s.deadline, s.max_attempts) == (
            "round_robin",
            12.5,
            30.0,
            2,
        )
        assert s.retry_budget_ratio == 0.5 and s.health.eject_after == 3
        assert isinstance(s.hedging, HedgePolicy) and s.hedging.percentile == pytest.approx(0.9)
        assert s.context_fallbacks == {"small": "large"}
        eps = {e.name: e for e in mux.endpoints}
        assert eps["one"].weight == 2 and eps["one"].max_concurrent == 4
        assert eps["two"].tier == "fallback" and eps["two"].models == {"m": "upstream-m"}
        assert "sk-secret-two" not in repr(eps["two"])
        r = await mux.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "x"}]
        )
        assert r.choices[0].message.content
        await mux.aclose()


def test_sync_from_dict():
    with FakeBackend() as fb:
        mux = Multiplexer.from_config(
            {"endpoints": [{"base_url": fb.url, "models": ["fake-model"]}]}
        )
        r = mux.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "x"}]
        )
        assert r.choices
        mux.close()


@pytest.mark.parametrize(
    "data,key,expected",
    [
        ({"routing": {"max_attempts": "four"}}, "routing.max_attempts", "an integer"),
        ({"routing": {"strategy": "fastest"}}, "routing", "unknown routing strategy"),
        ({"routing": {"retries": 3}}, "routing.retries", "one of"),
        ({"routing": {"health": {"eject_after": 0}}}, "routing", "eject_after"),
        ({"routing": {"hedging": {"delay": "soon"}}}, "routing.hedging.delay", "percentile"),
        ({"endpoints": [{"models": ["m"]}]}, "endpoints[0].base_url", "base URL"),
        ({"endpoints": [{"base_url": "http://x/v1"}]}, "endpoints[0].models", "model names"),
        (
            {"endpoints": [{"base_url": "http://x/v1", "models": ["m"], "colour": 1}]},
            "endpoints[0]",
            "colour",
        ),
        (
            {"endpoints": [{"base_url": "http://x/v1", "models": ["m"], "weight": -1}]},
            "endpoints[0]",
            "weight",
        ),
        (
            {
                "endpoints": [
                    {
                        "base_url": "http://x/v1",
                        "models": ["m"],
                        "api_key_env": "SURELY_UNSET_VAR_123",
                    }
                ]
            },
            "endpoints[0].api_key_env",
            "SURELY_UNSET_VAR_123",
        ),
        ({"nonsense": {}}, "nonsense", "unknown section"),
        ({"sessions": {"store": "memory", "colour": 1}}, "sessions", "colour"),
        ({"memory": {"size": 1}}, "memory", "embedding_model"),
        ({"metering": {"store": "memory", "flush": 1}}, "metering", "flush"),
    ],
)
def test_bad_config_names_the_key(data, key, expected):
    with pytest.raises(ConfigError) as ei:
        AsyncMultiplexer.from_config(data)
    assert ei.value.key == key
    assert expected in str(ei.value)


def test_bad_file_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[routing\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        AsyncMultiplexer.from_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        AsyncMultiplexer.from_config(tmp_path / "missing.toml")


def test_environment_overrides():
    env = {
        "GONKA_MUX_STRATEGY": "weighted_random",
        "GONKA_MUX_FIRST_BYTE_TIMEOUT": "3",
        "GONKA_MUX_DEADLINE": "0",
        "GONKA_MUX_HEDGE_DELAY": "0.25",
    }
    s = routing_settings({"routing": {"strategy": "p2c"}}, env=env)
    assert s.strategy == "weighted_random" and s.first_byte_timeout == 3.0
    assert s.deadline is None and s.hedging == HedgePolicy(delay=0.25)
    with pytest.raises(ConfigError, match="GONKA_MUX_MAX_ATTEMPTS"):
        routing_settings({}, env={"GONKA_MUX_MAX_ATTEMPTS": "many"})


def test_unknown_keyword_setting():
    with pytest.raises(TypeError, match="unknown Multiplexer setting 'retries'"):
        AsyncMultiplexer(retries=3)
