from __future__ import annotations

import pytest

from gonka_mux.errors import ConfigError
from gonka_mux.limits import LimitsConfig, RateLimit, RateLimiter, estimate_tokens


def test_from_dict_builds_tiers_keys_and_endpoints() -> None:
    config = LimitsConfig.from_dict(
        {
            "default_tier": "free",
            "max_wait": 2.5,
            "tiers": {
                "free": {"rpm": 20, "tpm": 40000, "burst_requests": 5},
                "pro": {"rpm": 600, "tpm": "none"},
            },
            "keys": {"agent-7": "pro"},
            "endpoints": {"node-a": {"rpm": 300}},
        }
    )
    assert config.max_wait == 2.5
    assert config.tier_for("agent-7").name == "pro"
    assert config.tier_for("someone").name == "free"
    assert config.tier_for("someone", "pro").limit == RateLimit(600.0, None)
    free = config.tiers["free"].limit
    assert (free.rpm, free.tpm, free.burst_requests, free.burst_tokens) == (20, 40000, 5, None)
    # Burst defaults to one minute's allowance.
    assert free.effective_burst_requests == 5
    assert free.effective_burst_tokens == 40000
    assert config.endpoints["node-a"] == RateLimit(300.0, None)
    # The env-built default tier always exists.
    assert "default" in config.tiers


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"tiers": {"free": {"rpm": -1}}}, "limits.tiers.free.rpm", "-1"),
        ({"tiers": {"free": {"rmp": 10}}}, "limits.tiers.free.rmp", "unknown setting"),
        ({"tiers": {"free": {"tpm": "lots"}}}, "limits.tiers.free.tpm", "lots"),
        ({"tiers": {"free": 10}}, "limits.tiers.free", "must be a table"),
        ({"keys": {"bob": "gold"}}, "limits.keys.bob", "'gold' is not defined"),
        ({"keys": {"bob": 3}}, "limits.keys.bob", "tier name"),
        ({"default_tier": "gold"}, "limits.default_tier", "'gold' is not defined"),
        ({"max_wait": "soon"}, "limits.max_wait", "soon"),
        ({"max_wait": -1}, "limits.max_wait", "non-negative"),
        ({"endpoints": {"n": {"burst_requests": 0}}}, "limits.endpoints.n.burst_requests", "0"),
        ({"tier": {}}, "limits.tier", "unknown setting"),
    ],
)
def test_config_errors_name_the_key(data: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        LimitsConfig.from_dict(data)
    assert info.value.key == key
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan"])
def test_bad_env_default_is_a_config_error(monkeypatch, value: str) -> None:
    monkeypatch.setenv("GONKA_DEFAULT_RPM", value)
    with pytest.raises(ConfigError) as info:
        LimitsConfig()
    assert info.value.key == "GONKA_DEFAULT_RPM"
    assert "none" in str(info.value)  # says how to turn the limit off


def test_env_defaults_and_unset_env(monkeypatch) -> None:
    monkeypatch.delenv("GONKA_DEFAULT_RPM", raising=False)
    monkeypatch.delenv("GONKA_DEFAULT_TPM", raising=False)
    assert LimitsConfig().tiers["default"].limit == RateLimit(60.0, 100000.0)
    monkeypatch.setenv("GONKA_DEFAULT_RPM", "120")
    monkeypatch.setenv("GONKA_DEFAULT_TPM", "off")
    assert LimitsConfig.from_env().tiers["default"].limit == RateLimit(120.0, None)


def test_unknown_tier_at_request_time() -> None:
    limiter = RateLimiter()
    with pytest.raises(ConfigError) as info:
        limiter.acquire_sync("k", tier="platinum")
    assert "platinum" in str(info.value) and "default" in str(info.value)


@pytest.mark.parametrize("tokens", [-1, float("nan"), "10", True])
def test_bad_token_counts_are_rejected(tokens) -> None:
    limiter = RateLimiter()
    with pytest.raises(ValueError, match="tokens must be a number"):
        limiter.acquire_sync("k", tokens=tokens)


def test_rate_limit_validation() -> None:
    with pytest.raises(ValueError, match="rpm"):
        RateLimit(0, None)
    with pytest.raises(TypeError, match="burst_tokens"):
        RateLimit(1, 1, burst_tokens="5")  # type: ignore[arg-type]
    assert RateLimit(None, None).unlimited
    assert RateLimit(60, None).describe() == "60 requests/min (burst 60)"


def test_unlimited_tier_never_blocks() -> None:
    config = LimitsConfig.from_dict({"tiers": {"default": {}}})
    limiter = RateLimiter(config=config)
    for _ in range(1000):
        reservation = limiter.acquire_sync("k", tokens=10**9)
        reservation.settle(5)


def test_estimate_tokens() -> None:
    params = {
        "messages": [
            {"role": "system", "content": "x" * 400},
            {"role": "user", "content": [{"type": "text", "text": "y" * 40}, {"type": "image"}]},
        ],
        "max_tokens": 256,
    }
    assert estimate_tokens(params) == 110 + 8 + 256
    assert estimate_tokens({"messages": [], "max_completion_tokens": 7}) == 7
    assert estimate_tokens({"messages": []}, default_max_tokens=99) == 99
