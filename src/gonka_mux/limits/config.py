"""Rate-limit values: one :class:`RateLimit`, named :class:`Tier` s, and :class:`LimitsConfig`.

A limit has two independent dimensions, requests per minute and tokens per minute; either may be
``None`` (not limited). Each dimension is a GCRA bucket (see :mod:`gonka_mux.limits.gcra`): an idle
key may spend ``burst`` units at once, then capacity returns at ``rpm / 60`` (or ``tpm / 60``) units
per second. The burst defaults to one minute's allowance, so ``rpm=60`` admits 60 requests from
idle and then one per second.

Configuration mapping (the ``[limits]`` table of the project config)::

    default_tier = "free"          # optional; default "default" (built from the env defaults)
    max_wait = 10.0                # optional; seconds a caller waits for capacity before a 429

    [limits.tiers.free]            # rpm / tpm: a positive number, or "none" for no limit
    rpm = 20
    tpm = 40000
    burst_requests = 5             # optional; default rpm (one minute's allowance)
    burst_tokens = 20000           # optional; default tpm

    [limits.tiers.pro]
    rpm = 600
    tpm = 2000000

    [limits.keys]                  # caller key -> tier; unlisted keys get default_tier
    "agent-7" = "pro"

    [limits.endpoints."node-a"]    # per-endpoint limits (the router skips a full endpoint)
    rpm = 300

``GONKA_DEFAULT_RPM`` (60) and ``GONKA_DEFAULT_TPM`` (100000) give the ``default`` tier, which
exists unless the mapping defines a tier of that name itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from gonka_mux._exceptions import ConfigError

__all__ = [
    "DEFAULT_MAX_WAIT",
    "DEFAULT_RPM",
    "DEFAULT_TPM",
    "LimitsConfig",
    "RateLimit",
    "Tier",
]

DEFAULT_RPM = 60.0
DEFAULT_TPM = 100_000.0
DEFAULT_MAX_WAIT = 10.0
DEFAULT_TIER = "default"

_UNLIMITED_WORDS = frozenset({"none", "off", "unlimited"})
_LIMIT_FIELDS = ("rpm", "tpm", "burst_requests", "burst_tokens")
_CONFIG_FIELDS = ("default_tier", "max_wait", "tiers", "keys", "endpoints")


def _config_error(
    message: str, *, key: str, expected: str = "", source: str = "<dict>"
) -> NoReturn:
    raise ConfigError(message, source=source, key=key, expected=expected)


@dataclass(frozen=True)
class RateLimit:
    """Requests and tokens per minute, each with a burst (the units an idle key may spend at once).

    ``None`` for ``rpm`` or ``tpm`` means that dimension is not limited.
    """

    rpm: float | None
    tpm: float | None
    burst_requests: int | None = None
    burst_tokens: int | None = None
    # Derived GCRA parameters, in seconds, precomputed because admission reads them on every call:
    # the interval is the time one unit takes to come back, the capacity is burst * interval.
    request_interval: float = field(init=False, repr=False, compare=False)
    request_capacity: float = field(init=False, repr=False, compare=False)
    token_interval: float = field(init=False, repr=False, compare=False)
    token_capacity: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _LIMIT_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"RateLimit.{name} must be a number or None, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(
                    f"RateLimit.{name} must be a positive finite number (None for no limit), "
                    f"got {value!r}"
                )
        req_interval, req_capacity = _gcra_params(self.rpm, self.burst_requests)
        tok_interval, tok_capacity = _gcra_params(self.tpm, self.burst_tokens)
        object.__setattr__(self, "request_interval", req_interval)
        object.__setattr__(self, "request_capacity", req_capacity)
        object.__setattr__(self, "token_interval", tok_interval)
        object.__setattr__(self, "token_capacity", tok_capacity)

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None

    @property
    def effective_burst_requests(self) -> float | None:
        return None if self.rpm is None else self.request_capacity / self.request_interval

    @property
    def effective_burst_tokens(self) -> float | None:
        return None if self.tpm is None else self.token_capacity / self.token_interval

    def describe(self) -> str:
        """``"60 requests/min (burst 60), 100000 tokens/min (burst 100000)"`` for messages."""
        parts = []
        if self.rpm is not None:
            parts.append(f"{self.rpm:g} requests/min (burst {self.effective_burst_requests:g})")
        if self.tpm is not None:
            parts.append(f"{self.tpm:g} tokens/min (burst {self.effective_burst_tokens:g})")
        return ", ".join(parts) or "no limit"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "limit") -> RateLimit:
        """Build from ``{"rpm": .., "tpm": .., "burst_requests": .., "burst_tokens": ..}``.

        Missing ``rpm``/``tpm`` mean no limit on that dimension; ``"none"`` says so explicitly.
        """
        if not isinstance(data, Mapping):
            _config_error(
                f"must be a table, got {type(data).__name__}",
                key=path,
                expected="a table with rpm / tpm / burst_requests / burst_tokens",
            )
        _reject_unknown(data, _LIMIT_FIELDS, path)
        values = {name: _limit_value(data.get(name), f"{path}.{name}") for name in _LIMIT_FIELDS}
        for name in ("burst_requests", "burst_tokens"):
            if values[name] is not None:
                values[name] = math.ceil(values[name])
        return cls(**values)


def _gcra_params(per_minute: float | None, burst: int | None) -> tuple[float, float]:
    if per_minute is None:
        return 0.0, 0.0
    interval = 60.0 / per_minute
    units = burst if burst is not None else max(1.0, per_minute)
    return interval, units * interval


@dataclass(frozen=True)
class Tier:
    """A named limit (``free``, ``pro``) that caller keys are assigned to."""

    name: str
    limit: RateLimit


@dataclass(frozen=True)
class LimitsConfig:
    """Tiers, caller-key assignments, per-endpoint limits and how long callers wait.

    Build it with :meth:`from_dict` (config files) or directly; :meth:`from_env` gives the
    default tier alone.
    """

    tiers: Mapping[str, Tier] = field(default_factory=dict)
    keys: Mapping[str, str] = field(default_factory=dict)
    endpoints: Mapping[str, RateLimit] = field(default_factory=dict)
    default_tier: str = DEFAULT_TIER
    max_wait: float = DEFAULT_MAX_WAIT

    def __post_init__(self) -> None:
        tiers = dict(self.tiers)
        if DEFAULT_TIER not in tiers:
            tiers[DEFAULT_TIER] = Tier(DEFAULT_TIER, env_default_limit())
        object.__setattr__(self, "tiers", tiers)
        if self.default_tier not in tiers:
            _config_error(
                f"default tier {self.default_tier!r} is not defined",
                key="limits.default_tier",
                expected="one of " + ", ".join(sorted(tiers)),
            )
        for key, tier in self.keys.items():
            if tier not in tiers:
                _config_error(
                    f"tier {tier!r} is not defined",
                    key=f"limits.keys.{key}",
                    expected="one of " + ", ".join(sorted(tiers)),
                )
        if not math.isfinite(self.max_wait) or self.max_wait < 0:
            _config_error(
                f"must be a non-negative number of seconds, got {self.max_wait!r}",
                key="limits.max_wait",
            )

    @classmethod
    def from_env(cls) -> LimitsConfig:
        return cls()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, path: str = "limits") -> LimitsConfig:
        """Build from the ``[limits]`` mapping; errors name the offending key
        (``limits.tiers.free.rpm``)."""
        data = data or {}
        if not isinstance(data, Mapping):
            _config_error(f"must be a table, got {type(data).__name__}", key=path)
        _reject_unknown(data, _CONFIG_FIELDS, path)

        tiers = {}
        for name, spec in _table(data, "tiers", path).items():
            tiers[str(name)] = Tier(
                str(name), RateLimit.from_dict(spec, path=f"{path}.tiers.{name}")
            )
        endpoints = {
            str(name): RateLimit.from_dict(spec, path=f"{path}.endpoints.{name}")
            for name, spec in _table(data, "endpoints", path).items()
        }
        keys = {}
        for key, tier in _table(data, "keys", path).items():
            if not isinstance(tier, str):
                _config_error(
                    f"must be a tier name, got {tier!r}",
                    key=f"{path}.keys.{key}",
                    expected="a string",
                )
            keys[str(key)] = tier

        default_tier = data.get("default_tier", DEFAULT_TIER)
        if not isinstance(default_tier, str):
            _config_error(f"must be a tier name, got {default_tier!r}", key=f"{path}.default_tier")
        max_wait = data.get("max_wait", DEFAULT_MAX_WAIT)
        if isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)):
            _config_error(
                f"must be a number of seconds, got {max_wait!r}",
                key=f"{path}.max_wait",
                expected="a number >= 0",
            )
        return cls(
            tiers=tiers,
            keys=keys,
            endpoints=endpoints,
            default_tier=default_tier,
            max_wait=float(max_wait),
        )

    def tier_for(self, key: str, tier: str | None = None) -> Tier:
        """The tier of a caller key: ``tier`` when given, else the key's assignment, else the
        default tier."""
        name = tier if tier is not None else self.keys.get(key, self.default_tier)
        found = self.tiers.get(name)
        if found is None:
            _config_error(
                f"unknown rate-limit tier {name!r}",
                key="tier",
                expected="one of " + ", ".join(sorted(self.tiers)),
                source="<request>",
            )
        return found


def env_default_limit(environ: Mapping[str, str] | None = None) -> RateLimit:
    """The ``default`` tier's limit: ``GONKA_DEFAULT_RPM`` (60), ``GONKA_DEFAULT_TPM`` (100000)."""
    env = os.environ if environ is None else environ
    rpm = _env_limit(env, "GONKA_DEFAULT_RPM", DEFAULT_RPM)
    tpm = _env_limit(env, "GONKA_DEFAULT_TPM", DEFAULT_TPM)
    return RateLimit(rpm, tpm)


def _env_limit(env: Mapping[str, str], name: str, default: float) -> float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip().lower()
    if text in _UNLIMITED_WORDS:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        _config_error(
            f"invalid value {raw!r}",
            key=name,
            expected="a positive number, or 'none' for no limit",
            source="<env>",
        )
    return value


def _limit_value(value: Any, key: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in _UNLIMITED_WORDS):
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        _config_error(
            f"invalid value {value!r}",
            key=key,
            expected="a positive number, or 'none' for no limit",
        )
    return float(value)


def _table(data: Mapping[str, Any], name: str, path: str) -> Mapping[str, Any]:
    value = data.get(name) or {}
    if not isinstance(value, Mapping):
        _config_error(f"must be a table, got {type(value).__name__}", key=f"{path}.{name}")
    return value


def _reject_unknown(data: Mapping[str, Any], known: tuple[str, ...], path: str) -> None:
    for name in data:
        if name not in known:
            _config_error(
                f"unknown setting {name!r}",
                key=f"{path}.{name}",
                expected="one of " + ", ".join(known),
            )
