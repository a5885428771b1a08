"""Agent features as units: one feature, one package, one registration line.

Each feature (limits, metering, sessions, memory, tiering, jobs/webhooks) is a
:class:`Feature` subclass in its own package. It owns

- its config section(s): :meth:`Feature.from_config` parses and validates them (a typo is a
  :class:`~gonka_mux.errors.ConfigError` naming the file and the key);
- its hooks: ``before`` / ``after`` around every request, at its declared ``order`` (``before``
  hooks run in ascending order, ``after`` hooks in descending order, so the feature that saw a
  request first sees its outcome last);
- its per-request data: typed :class:`Slot` s on the request context instead of string keys;
- its lifecycle: :meth:`Feature.install` on a Multiplexer (through the Multiplexer's public
  extension surface only) and :meth:`Feature.aclose`, run when the Multiplexer closes.

``mux.enable_limits(...)`` and friends are thin doors that build the feature and install it;
``AsyncMultiplexer.from_config`` applies every registered feature whose section is present.
A feature of your own is a subclass registered with :func:`register_feature` (see
docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

from ._exceptions import ConfigError

__all__ = [
    "Feature",
    "Slot",
    "feature_classes",
    "feature_sections",
    "register_feature",
    "reject_leftover",
    "section_of",
]

T = TypeVar("T")

# The order numbers of the built-in features (before hooks ascending): tiering picks the
# model, sessions prepend history for that model, limits count the full prompt, metering
# records what happened.
ORDER_TIERING = 10
ORDER_SESSIONS = 20
ORDER_LIMITS = 30
ORDER_METERING = 40


class Slot(Generic[T]):
    """A typed place on the request context for one feature's data about one request::

    RESERVATION: Slot[Reservation] = Slot("limits.reservation")
    ctx.set(RESERVATION, reservation)
    reservation = ctx.get(RESERVATION)  # Reservation | None
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Slot({self.name!r})"


class Feature:
    """Base class of an agent feature (see the module docstring)."""

    #: the feature's name (``mux.features[name]``)
    name: ClassVar[str] = ""
    #: the config tables it owns (``[limits]``, ...)
    sections: ClassVar[tuple[str, ...]] = ()
    #: where its hooks run among the others (lower: earlier before, later after)
    order: ClassVar[int] = 50
    #: whether it has request hooks at all (memory and jobs have none)
    hooks: ClassVar[bool] = True

    @classmethod
    def from_config(cls, data: Mapping[str, Any], source: str) -> Feature | None:
        """The feature configured by its sections of ``data`` (a whole config file), or None
        when none of them is present. ``source`` names the file for error messages."""
        return None

    def install(self, mux: Any) -> Any:
        """Attach to ``mux`` through its public surface; returns what ``enable_*`` returns."""
        mux.add_feature(self)
        return self

    async def before(self, ctx: Any) -> None:
        return None

    async def after(self, ctx: Any) -> None:
        return None

    async def aclose(self) -> None:
        return None


def section_of(data: Mapping[str, Any], name: str, source: str) -> dict[str, Any] | None:
    """A copy of the ``[name]`` table of ``data`` to pop keys from (None when absent); a value
    that is not a table is a :class:`ConfigError`."""
    if name not in data:
        return None
    section = data[name]
    if not isinstance(section, Mapping):
        raise ConfigError(f"got {section!r}", source=source, key=name, expected="a table")
    return dict(section)


def reject_leftover(section: Mapping[str, Any], source: str, key: str, expected: str) -> None:
    """Keys a section still holds after its known ones were popped are typos: refuse them."""
    if section:
        raise ConfigError(
            "unknown key(s) " + ", ".join(sorted(section)),
            source=source,
            key=key,
            expected=expected,
        )


_REGISTRY: dict[str, type[Feature]] = {}


def register_feature(cls: type[Feature]) -> type[Feature]:
    """Make ``from_config`` apply ``cls`` (a class decorator). Names must be unique."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}.name must be set to register it")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"a feature named {cls.name!r} is already registered ({existing})")
    _REGISTRY[cls.name] = cls
    return cls


def feature_classes() -> list[type[Feature]]:
    """The registered features, built-in ones first, in hook order."""
    _load_builtin()
    return sorted(_REGISTRY.values(), key=lambda c: c.order)


def feature_sections() -> set[str]:
    """Every config section a registered feature owns."""
    return {s for cls in feature_classes() for s in cls.sections}


def _load_builtin() -> None:
    # Each built-in feature registers itself when its module is imported; importing them here,
    # on first use, keeps `import gonka_mux` (and a webhook receiver that only imports
    # gonka_mux.webhooks.signing) from importing every feature's dependencies.
    from .cache import feature as _cache  # noqa: F401
    from .limits import feature as _limits  # noqa: F401
    from .memory import feature as _memory  # noqa: F401
    from .metering import feature as _metering  # noqa: F401
    from .sessions import feature as _sessions  # noqa: F401
    from .tiering import feature as _tiering  # noqa: F401
    from .webhooks import feature as _jobs  # noqa: F401
