"""Gonka settings: a validated :class:`GonkaConfig`, read from arguments and the environment.

Environment variables (all optional)::

    GONKA_PRIVATE_KEY            64 hex characters (0x prefix allowed)
    GONKA_PRIVATE_KEY_FILE       a file holding that hex key
    GONKA_ADDRESS                requester address override (gonka1...)
    GONKA_SOURCE_URL             discovery source(s), comma-separated (GONKA_SOURCE_URLS too)
    GONKA_ENDPOINTS              explicit TAs: "url;address,url;address"
    GONKA_VERIFY_PROOF           1/0: verify the participants' ICS23 proof
    GONKA_REFRESH_ENABLED        1/0: follow epoch changes
    GONKA_REFRESH_INTERVAL       seconds between /v1/epochs/latest polls (default 30)
    GONKA_DEFAULT_MAX_CONCURRENT in-flight cap per participant
    GONKA_REGISTER_AS_FALLBACK   1/0: register Gonka endpoints as a fallback tier
    GONKA_MODEL_NAME_PREFIX      prefix of per-participant endpoint names (default "gonka:")
    GONKA_MAX_TOKENS             max_tokens sent when the caller gives none (default 4096)
    GONKA_SIGNING_BACKEND        auto | coincurve | ecdsa

Precedence (:meth:`GonkaConfig.resolve`): explicit arguments, then the fields set on a given
config, then the environment, then the defaults. The private key never appears in a repr.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .discovery import GonkaParticipant, normalize_sources
from .errors import GonkaConfigError
from .keys import (
    PrivateKey,
    describe_shape,
    load_private_key,
    requester_address,
    validate_address,
)
from .signing import RequestSigner

__all__ = ["DEFAULT_BROKER_FIELDS", "GonkaConfig", "GonkaEndpoint", "parse_endpoints"]

DEFAULT_REFRESH_INTERVAL = 30.0
# The chain reserves escrow and TA bandwidth for max_tokens (5000 when absent), so a request
# without one is costlier and more often refused; this is sent when the caller gives none.
DEFAULT_MAX_TOKENS = 4096

# The request fields brokers and devshard gateways accept (the OpenAI chat/completions fields a
# vLLM runtime serves); a strict gateway answers anything else with a 400 (gonka-docs FAQ).
DEFAULT_BROKER_FIELDS = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "user",
    }
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class GonkaEndpoint:
    """An explicitly configured Transfer Agent: its URL and its account (transfer) address."""

    url: str
    address: str

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def as_participant(self, models: Iterable[str] = (), weight: int = 1) -> GonkaParticipant:
        """The endpoint as a participant (models unknown until its ``/v1/models`` is read)."""
        return GonkaParticipant(
            address=self.address, inference_url=self.url, weight=weight, models=tuple(models)
        )


def parse_endpoints(
    value: str | Iterable[Any], *, field: str = "endpoints"
) -> tuple[GonkaEndpoint, ...]:
    """Parse ``"url;address,url;address"`` (or a list of such strings, pairs or endpoints)."""
    items: Iterable[Any] = value.split(",") if isinstance(value, str) else value
    endpoints: list[GonkaEndpoint] = []
    for item in items:
        if isinstance(item, GonkaEndpoint):
            url, address = item.url, item.address
        elif isinstance(item, str):
            if not item.strip():
                continue
            url, sep, address = item.strip().partition(";")
            if not sep:
                raise GonkaConfigError(
                    field,
                    "each endpoint must look like 'https://host:8000;gonka1...' (URL, ';', the "
                    f"TA's account address); got {describe_shape(item)} without a ';'",
                )
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            url, address = item
        else:
            raise GonkaConfigError(
                field,
                "each endpoint must be 'url;address', a (url, address) pair or a GonkaEndpoint; "
                f"got {describe_shape(item)}",
            )
        url = str(url).strip().rstrip("/")
        url = url[: -len("/v1")] if url.endswith("/v1") else url
        if not url.startswith(("http://", "https://")):
            shown = repr(url) if "://" in url else describe_shape(url)
            raise GonkaConfigError(field, f"endpoint URL {shown} must start with http(s)://")
        endpoints.append(GonkaEndpoint(url, validate_address(str(address), field=field)))
    return tuple(endpoints)


def _bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise GonkaConfigError(field, f"expected a boolean (1/0, true/false), got {value!r}")


def _number(value: Any, field: str, *, integer: bool, minimum: float) -> Any:
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number"
        raise GonkaConfigError(field, f"expected {kind}, got {value!r}") from None
    if isinstance(value, bool) or number < minimum:
        raise GonkaConfigError(field, f"must be at least {minimum:g}, got {value!r}")
    return number


@dataclass(frozen=True)
class GonkaConfig:
    """Validated Gonka settings. ``private_key`` accepts a hex string or a :class:`PrivateKey`."""

    private_key: PrivateKey | None = None
    key_file: str | None = None
    source_urls: tuple[str, ...] = ()
    endpoints: tuple[GonkaEndpoint, ...] = ()
    address: str | None = None
    verify_proofs: bool = False
    refresh_enabled: bool = True
    refresh_interval_seconds: float = DEFAULT_REFRESH_INTERVAL
    default_max_concurrent: int | None = None
    register_as_fallback: bool = False
    model_name_prefix: str = "gonka:"
    default_max_tokens: int | None = DEFAULT_MAX_TOKENS
    signing_backend: str = "auto"
    _explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not self._explicit:  # built directly: the fields that differ from their defaults
            set_(self, "_explicit", frozenset(_non_default_fields(self)))
        key: Any = self.private_key
        if key is not None and not isinstance(key, PrivateKey):
            set_(self, "private_key", load_private_key(key))
        if self.key_file is not None:
            set_(self, "key_file", os.fspath(self.key_file))
        urls: Any = self.source_urls
        if isinstance(urls, str) or urls:
            set_(self, "source_urls", normalize_sources(urls) if urls else ())
        endpoints: Any = self.endpoints
        if endpoints:
            set_(self, "endpoints", parse_endpoints(endpoints))
        if self.address is not None:
            set_(self, "address", validate_address(self.address, field="address"))
        for name in ("verify_proofs", "refresh_enabled", "register_as_fallback"):
            set_(self, name, _bool(getattr(self, name), name))
        set_(
            self,
            "refresh_interval_seconds",
            _number(
                self.refresh_interval_seconds, "refresh_interval_seconds", integer=False, minimum=1
            ),
        )
        for name in ("default_max_concurrent", "default_max_tokens"):
            if getattr(self, name) is not None:
                set_(self, name, _number(getattr(self, name), name, integer=True, minimum=1))
        if not isinstance(self.model_name_prefix, str):
            raise GonkaConfigError("model_name_prefix", "expected a string")
        if self.signing_backend not in ("auto", "coincurve", "ecdsa"):
            raise GonkaConfigError(
                "signing_backend",
                f"expected auto, coincurve or ecdsa, got {self.signing_backend!r}",
            )

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **explicit: Any) -> GonkaConfig:
        """Settings from the environment, with ``explicit`` (non-``None``) values on top."""
        return cls.resolve(None, environ=environ, **explicit)

    @classmethod
    def resolve(
        cls,
        config: GonkaConfig | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **explicit: Any,
    ) -> GonkaConfig:
        """Explicit arguments win over the fields set on ``config``, which win over the
        environment. ``None`` arguments count as not given. ``source_url`` is accepted as an
        alias of ``source_urls``."""
        if "source_url" in explicit:
            alias = explicit.pop("source_url")
            explicit.setdefault("source_urls", alias)
        known = {f.name for f in dataclasses.fields(cls) if f.name != "_explicit"}
        unknown = set(explicit) - known
        if unknown:
            raise GonkaConfigError(
                sorted(unknown)[0], f"unknown Gonka setting; known: {', '.join(sorted(known))}"
            )
        layers = [_env_values(os.environ if environ is None else environ)]
        if config is not None:
            layers.append({name: getattr(config, name) for name in config._explicit})
        layers.append({k: v for k, v in explicit.items() if v is not None})
        values: dict[str, Any] = {}
        for layer in layers:
            # The key and the key file are one setting: a layer that gives either replaces both.
            if "private_key" in layer or "key_file" in layer:
                values.pop("private_key", None)
                values.pop("key_file", None)
            values.update(layer)
        if values.get("private_key") is None and values.get("key_file"):
            values["private_key"] = PrivateKey.from_file(values["key_file"])
        return cls(**values, _explicit=frozenset(values))

    def merged(self, **explicit: Any) -> GonkaConfig:
        """A copy with the non-``None`` ``explicit`` values replacing these."""
        given = {k: v for k, v in explicit.items() if v is not None}
        return dataclasses.replace(self, **given, _explicit=self._explicit | frozenset(given))

    # -- derived ------------------------------------------------------------------------------

    @property
    def has_key(self) -> bool:
        return self.private_key is not None

    @property
    def requester_address(self) -> str:
        """The address sent as ``X-Requester-Address``."""
        return requester_address(self.require_key(), self.address, environ={})

    def require_key(self) -> PrivateKey:
        """The private key, or a :class:`GonkaConfigError` saying how to provide one."""
        if self.private_key is None:
            raise GonkaConfigError(
                "private_key",
                "signed Gonka requests need a private key: pass private_key=..., or set "
                "GONKA_PRIVATE_KEY or GONKA_PRIVATE_KEY_FILE",
            )
        return self.private_key

    def signer(self) -> Any:
        """A :class:`~gonka_mux.gonka.signing.RequestSigner` for this account."""
        return RequestSigner(
            self.require_key(),
            backend=self.signing_backend,  # type: ignore[arg-type]
            address=self.address,
            environ={},
        )

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name == "private_key":
                shown = "None" if value is None else "<hidden>"
            else:
                shown = repr(value)
            parts.append(f"{f.name}={shown}")
        return f"GonkaConfig({', '.join(parts)})"

    __str__ = __repr__


def _non_default_fields(config: GonkaConfig) -> list[str]:
    names = []
    for f in dataclasses.fields(config):
        if f.name == "_explicit":
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if getattr(config, f.name) != default:
            names.append(f.name)
    return names


_ENV_FIELDS: dict[str, str] = {
    "GONKA_PRIVATE_KEY": "private_key",
    "GONKA_PRIVATE_KEY_FILE": "key_file",
    "GONKA_ADDRESS": "address",
    "GONKA_SOURCE_URLS": "source_urls",
    "GONKA_SOURCE_URL": "source_urls",
    "GONKA_ENDPOINTS": "endpoints",
    "GONKA_VERIFY_PROOF": "verify_proofs",
    "GONKA_REFRESH_ENABLED": "refresh_enabled",
    "GONKA_REFRESH_INTERVAL": "refresh_interval_seconds",
    "GONKA_DEFAULT_MAX_CONCURRENT": "default_max_concurrent",
    "GONKA_REGISTER_AS_FALLBACK": "register_as_fallback",
    "GONKA_MODEL_NAME_PREFIX": "model_name_prefix",
    "GONKA_MAX_TOKENS": "default_max_tokens",
    "GONKA_SIGNING_BACKEND": "signing_backend",
}


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """Raw settings from the environment (validated by GonkaConfig, errors name the variable)."""
    values: dict[str, Any] = {}
    for variable, name in _ENV_FIELDS.items():
        raw = environ.get(variable)
        if raw is None or not raw.strip() or name in values:
            continue
        try:
            values[name] = _env_value(name, raw.strip(), variable)
        except GonkaConfigError as exc:
            raise GonkaConfigError(variable, exc.message) from None
    return values


def _env_value(name: str, raw: str, variable: str) -> Any:
    if name == "private_key":
        return PrivateKey.from_hex(raw, field=variable)
    if name in ("verify_proofs", "refresh_enabled", "register_as_fallback"):
        return _bool(raw, variable)
    if name == "refresh_interval_seconds":
        return _number(raw, variable, integer=False, minimum=1)
    if name in ("default_max_concurrent", "default_max_tokens"):
        return _number(raw, variable, integer=True, minimum=1)
    if name == "source_urls":
        return normalize_sources(raw)
    if name == "endpoints":
        return parse_endpoints(raw, field=variable)
    if name == "address":
        return validate_address(raw, field=variable)
    return raw
