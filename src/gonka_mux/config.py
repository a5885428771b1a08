"""Configuration: one TOML file (or a dict) describing endpoints, models, aliases and routing.

```toml
[routing]
strategy = "p2c"            # p2c | weighted_random | round_robin
first_byte_timeout = 60     # seconds per attempt until the first byte
connect_timeout = 10
deadline = 600              # overall seconds per request (0 = none)
max_attempts = 4
failure_penalty = 1.0       # seconds added to the latency estimate of a failed attempt
wait_for_capacity = 10      # seconds to wait when every endpoint is cooling down or full

[routing.retry_budget]
ratio = 0.2                 # extra attempts <= 20% of requests ...
min_per_second = 10         # ... plus this floor

[routing.health]
failure_cooldown = 0.5
max_failure_cooldown = 30
rate_limit_cooldown = 1.0   # when a 429 carries no Retry-After
eject_after = 5
ejection_time = 10
max_ejection_time = 300

[routing.hedging]           # opt-in
enabled = true
delay = "p95"               # or seconds
max_hedges = 1

[routing.context_fallbacks]
"small-model" = "large-context-model"

[aliases]
smart = "kimi-k2.5"

[[endpoints]]
name = "local-vllm"
base_url = "http://127.0.0.1:8000/v1"
api_key_env = "VLLM_API_KEY"      # or api_key = "..."
models = ["kimi-k2.5"]            # or { "kimi-k2.5" = "moonshotai/Kimi-K2.5" }
weight = 1
max_concurrent = 64
tier = "primary"                  # or "fallback"
context_window = 131072
```

Environment variables override the file for the common settings: ``GONKA_MUX_STRATEGY``,
``GONKA_MUX_FIRST_BYTE_TIMEOUT``, ``GONKA_MUX_CONNECT_TIMEOUT``, ``GONKA_MUX_DEADLINE``,
``GONKA_MUX_MAX_ATTEMPTS``, ``GONKA_MUX_HEDGE_DELAY``. Other sections (``gonka``, ``limits``,
``tiering``, ``sessions``, ``memory``, ``metering``, ``gateway``) are read by their modules.
``[gonka]`` holds :class:`~gonka_mux.gonka.config.GonkaConfig` fields (``source_urls``,
``endpoints``, ``key_file``, ``refresh_enabled``...): checked when the Multiplexer is built
(a typo is a ConfigError), used by ``register_gonka_models(mux)`` (no network access here).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from ._exceptions import ConfigError
from .features import feature_classes, feature_sections, reject_leftover
from .gonka.config import GonkaConfig
from .gonka.errors import GonkaConfigError
from .routing.health import HealthPolicy
from .routing.hedging import HedgePolicy
from .settings import RoutingSettings
from .vllm_node import VllmNodeSource

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["build_from_config", "load_config", "routing_settings", "settings_with"]

T = TypeVar("T")

# The core's own sections; each feature adds its own (gonka_mux.features.feature_sections).
CORE_SECTIONS = {"routing", "aliases", "endpoints", "gonka", "gateway", "vllm"}


def known_sections() -> set[str]:
    return CORE_SECTIONS | feature_sections()


_ENV = {
    "GONKA_MUX_STRATEGY": ("strategy", str),
    "GONKA_MUX_FIRST_BYTE_TIMEOUT": ("first_byte_timeout", float),
    "GONKA_MUX_CONNECT_TIMEOUT": ("connect_timeout", float),
    "GONKA_MUX_DEADLINE": ("deadline", float),
    "GONKA_MUX_MAX_ATTEMPTS": ("max_attempts", int),
}


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Read a TOML file (or take a dict); returns the data and a name for error messages."""
    if isinstance(source, Mapping):
        return dict(source), "<dict>"
    path = Path(source)
    name = str(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("the config file does not exist", source=name) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=name) from None
    return data, name


def _typed(value: Any, kind: type, source: str, key: str) -> Any:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"got {value!r}", source=source, key=key, expected="a number")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"got {value!r}", source=source, key=key, expected="an integer")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"got {value!r}", source=source, key=key, expected="true or false")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"got {value!r}", source=source, key=key, expected="a string")
        return value
    return value


def _fields(cls: type) -> dict[str, type]:
    hints = {"float": float, "int": int, "bool": bool, "str": str, "float | None": float}
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        out[f.name] = hints.get(str(f.type), object)
    return out


def _section(
    cls: type[T], data: Mapping[str, Any], source: str, prefix: str, skip: set[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError("must be a table", source=source, key=prefix, expected="a TOML table")
    known = _fields(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in skip:
            continue
        if key not in known:
            raise ConfigError(
                "unknown key",
                source=source,
                key=f"{prefix}.{key}",
                expected="one of " + ", ".join(sorted(set(known) | skip)),
            )
        out[key] = _typed(value, known[key], source, f"{prefix}.{key}")
    return out


def routing_settings(
    data: Mapping[str, Any], source: str = "<dict>", env: Mapping[str, str] | None = None
) -> RoutingSettings:
    """Build RoutingSettings from a ``[routing]`` table plus environment overrides."""
    routing = data.get("routing", {})
    kwargs = _section(
        RoutingSettings,
        routing,
        source,
        "routing",
        skip={"retry_budget", "health", "hedging", "context_fallbacks"},
    )
    for k in ("health", "hedging", "context_fallbacks"):
        kwargs.pop(k, None)
    budget = routing.get("retry_budget", {})
    for key, value in _mapping(budget, source, "routing.retry_budget").items():
        if key not in ("ratio", "min_per_second", "ttl"):
            raise ConfigError(
                "unknown key",
                source=source,
                key=f"routing.retry_budget.{key}",
                expected="ratio, min_per_second or ttl",
            )
        kwargs[f"retry_budget_{key}"] = _typed(value, float, source, f"routing.retry_budget.{key}")
    try:
        if "health" in routing:
            kwargs["health"] = HealthPolicy(
                **_section(HealthPolicy, routing["health"], source, "routing.health")
            )
        if "hedging" in routing:
            kwargs["hedging"] = _hedging(routing["hedging"], source)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc), source=source, key="routing") from None
    if "context_fallbacks" in routing:
        fallbacks = _mapping(routing["context_fallbacks"], source, "routing.context_fallbacks")
        kwargs["context_fallbacks"] = {
            str(k): _typed(v, str, source, f"routing.context_fallbacks.{k}")
            for k, v in fallbacks.items()
        }
    env = os.environ if env is None else env
    for var, (field, kind) in _ENV.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        try:
            kwargs[field] = kind(raw)
        except ValueError:
            raise ConfigError(
                f"got {raw!r}", source="<env>", key=var, expected=f"a {kind.__name__}"
            ) from None
    if "deadline" in kwargs and not kwargs["deadline"]:
        kwargs["deadline"] = None
    hedge_env = env.get("GONKA_MUX_HEDGE_DELAY")
    if hedge_env:
        try:
            kwargs["hedging"] = HedgePolicy(delay=None if hedge_env == "p95" else float(hedge_env))
        except ValueError:
            raise ConfigError(
                f"got {hedge_env!r}",
                source="<env>",
                key="GONKA_MUX_HEDGE_DELAY",
                expected="seconds or 'p95'",
            ) from None
    try:
        return RoutingSettings(**kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc), source=source, key="routing") from None


def _mapping(value: Any, source: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"got {value!r}", source=source, key=key, expected="a table")
    return value


def _hedging(data: Any, source: str) -> HedgePolicy | None:
    data = dict(_mapping(data, source, "routing.hedging"))
    enabled = data.pop("enabled", True)
    if not _typed(enabled, bool, source, "routing.hedging.enabled"):
        return None
    delay = data.pop("delay", None)
    kwargs = _section(HedgePolicy, data, source, "routing.hedging", skip={"delay"})
    if isinstance(delay, str):
        if not delay.startswith("p"):
            raise ConfigError(
                f"got {delay!r}",
                source=source,
                key="routing.hedging.delay",
                expected="seconds or a percentile like 'p95'",
            )
        try:
            kwargs["percentile"] = float(delay[1:]) / 100.0
        except ValueError:
            raise ConfigError(
                f"got {delay!r}",
                source=source,
                key="routing.hedging.delay",
                expected="seconds or a percentile like 'p95'",
            ) from None
    elif delay is not None:
        kwargs["delay"] = _typed(delay, float, source, "routing.hedging.delay")
    return HedgePolicy(**kwargs)


def settings_with(
    settings: RoutingSettings | None, overrides: Mapping[str, Any]
) -> RoutingSettings:
    """A copy of ``settings`` (or the defaults) with keyword overrides, validated."""
    base = settings or RoutingSettings()
    known = {f.name for f in dataclasses.fields(RoutingSettings)}
    for key in overrides:
        if key not in known:
            raise TypeError(
                f"unknown Multiplexer setting {key!r}; known settings: {', '.join(sorted(known))}"
            )
    return dataclasses.replace(base, **dict(overrides))


_ENDPOINT_KEYS = {
    "name",
    "base_url",
    "api_key",
    "api_key_env",
    "models",
    "weight",
    "max_concurrent",
    "tier",
    "context_window",
    "headers",
    "group",
}


def build_from_config(cls: type[T], source: str | os.PathLike[str] | Mapping[str, Any]) -> T:
    data, name = load_config(source)
    known = known_sections()
    for section in data:
        if section not in known:
            raise ConfigError(
                "unknown section",
                source=name,
                key=section,
                expected="one of " + ", ".join(sorted(known)),
            )
    settings = routing_settings(data, name)
    if "gonka" in data:
        gonka_settings(data["gonka"], name)  # a typo is refused now, not at registration
    mux = cls(settings)  # type: ignore[call-arg]
    aliases = _mapping(data.get("aliases", {}), name, "aliases")
    endpoints = data.get("endpoints", [])
    if not isinstance(endpoints, list):
        raise ConfigError(
            "must be an array of tables", source=name, key="endpoints", expected="[[endpoints]]"
        )
    for i, spec in enumerate(endpoints):
        key = f"endpoints[{i}]"
        spec = _mapping(spec, name, key)
        unknown = set(spec) - _ENDPOINT_KEYS
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(sorted(unknown))}",
                source=name,
                key=key,
                expected="one of " + ", ".join(sorted(_ENDPOINT_KEYS)),
            )
        if "base_url" not in spec:
            raise ConfigError(
                "missing base_url",
                source=name,
                key=f"{key}.base_url",
                expected="the endpoint's OpenAI base URL, e.g. http://host:8000/v1",
            )
        if "models" not in spec:
            raise ConfigError(
                "missing models",
                source=name,
                key=f"{key}.models",
                expected="a list of model names or a table public = upstream",
            )
        api_key = spec.get("api_key")
        if "api_key_env" in spec:
            env_name = _typed(spec["api_key_env"], str, name, f"{key}.api_key_env")
            api_key = os.environ.get(env_name)
            if api_key is None:
                raise ConfigError(
                    f"environment variable {env_name} is not set",
                    source=name,
                    key=f"{key}.api_key_env",
                    expected="the variable to hold the endpoint's API key",
                )
        try:
            mux.add_endpoint(  # type: ignore[attr-defined]
                _typed(spec["base_url"], str, name, f"{key}.base_url"),
                models=spec["models"],
                weight=spec.get("weight", 1),
                max_concurrent=spec.get("max_concurrent"),
                tier=spec.get("tier", "primary"),
                name=spec.get("name"),
                api_key=api_key,
                headers=spec.get("headers"),
                context_window=spec.get("context_window"),
                group=spec.get("group"),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc), source=name, key=key) from None
    for alias, target in aliases.items():
        mux.add_alias(str(alias), _typed(target, str, name, f"aliases.{alias}"))  # type: ignore[attr-defined]
    apply_feature_sections(mux, data, name)
    mux.config = data  # type: ignore[attr-defined]
    mux.config_source = name  # type: ignore[attr-defined]
    return mux


def _vllm_section(mux: Any, data: Mapping[str, Any], source: str) -> None:
    """``[vllm]`` (base_url, health_url, interval) or ``GONKA_VLLM_BASE_URL`` adds a vLLM node
    as an endpoint source (:class:`~gonka_mux.vllm_node.VllmNodeSource`): started on the loop
    that serves it (now if that loop is running, else before the first request); a node that
    is down then keeps being polled in the background and joins when it reports its models."""
    section = dict(_mapping(data.get("vllm", {}), source, "vllm"))
    base_url = section.pop("base_url", None) or os.environ.get("GONKA_VLLM_BASE_URL") or None
    if base_url is None and "vllm" not in data:
        return
    health_url = section.pop("health_url", None) or os.environ.get("GONKA_VLLM_HEALTH_URL")
    interval = _typed(section.pop("interval", 2.0), float, source, "vllm.interval")
    reject_leftover(section, source, "vllm", "base_url, health_url, interval")
    mux.add_source(VllmNodeSource(base_url, health_url=health_url, interval=interval))


def gonka_settings(section: Any, source: str = "<dict>") -> GonkaConfig:
    """The ``[gonka]`` table as a :class:`~gonka_mux.gonka.config.GonkaConfig`, checked by
    GonkaConfig's own rules (``source_url`` is accepted for ``source_urls``). Nothing is
    registered here (that needs the network): ``register_gonka_models(mux)`` reads it as its
    ``config=`` when given none. Raises :class:`ConfigError` naming the file and the key."""
    fields = {f.name for f in dataclasses.fields(GonkaConfig) if not f.name.startswith("_")}
    values = dict(_mapping(section, source, "gonka"))
    if "source_url" in values:
        if "source_urls" in values:
            raise ConfigError(
                "both source_url and source_urls given",
                source=source,
                key="gonka.source_url",
                expected="one of them",
            )
        values["source_urls"] = values.pop("source_url")
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            "unknown key(s) " + ", ".join(unknown),
            source=source,
            key=f"gonka.{unknown[0]}",
            expected="one of " + ", ".join(sorted(fields | {"source_url"})),
        )
    try:
        return GonkaConfig(**values, _explicit=frozenset(values))
    except GonkaConfigError as exc:  # its message says what is accepted
        raise ConfigError(exc.message, source=source, key=f"gonka.{exc.field}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), source=source, key="gonka") from None


def apply_feature_sections(mux: Any, data: Mapping[str, Any], source: str) -> None:
    """Install every registered feature whose section is present (each feature parses and
    validates its own section), then register a ``[vllm]`` node."""
    for feature_class in feature_classes():
        feature = feature_class.from_config(data, source)
        if feature is not None:
            feature.install(mux)
    _vllm_section(mux, data, source)
