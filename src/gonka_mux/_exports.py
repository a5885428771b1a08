"""Lazy re-exports for package ``__init__`` modules: a name's module is imported on first use.

One table per package (public name -> module), one call::

    from gonka_mux._exports import lazy_exports

    __getattr__, __dir__ = lazy_exports(
        globals(),
        {"create_app": ".app", "AsyncMultiplexer": "gonka_mux.multiplexer"},
        extras={".app": "gateway"},
    )

``from package import name`` and ``package.name`` then import the module, cache the value in the
package's namespace (later lookups never come back here) and return it. A module path that starts
with ``.`` is relative to the package. ``extras`` names the optional extra that a module's
third-party dependencies come from; importing it without them raises ``ModuleNotFoundError``
saying ``pip install 'gonka-mux[extra]'``.

This module imports nothing beyond ``sys`` (no ``typing``, no ``importlib``) because every
``import gonka_mux`` goes through it.
"""

from __future__ import annotations

import sys

# typing costs ~8 ms to import and would be this module's only import: type checkers (mypy,
# pyright) treat a name called TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, MutableMapping
    from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    module_globals: MutableMapping[str, Any],
    table: Mapping[str, str],
    *,
    extras: Mapping[str, str] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` for the package whose ``globals()`` is given.

    ``table`` maps each lazily exported name to the module that defines it (``".app"``: relative
    to the package; ``"gonka_mux.multiplexer"``: absolute). ``extras`` maps a module (written as
    in ``table``) to the ``gonka-mux`` extra it needs. ``__dir__`` lists the package's globals and
    every lazy name.
    """
    package = module_globals["__name__"]
    top = package.partition(".")[0]
    targets = {name: _absolute(package, module) for name, module in table.items()}
    needs = {_absolute(package, module): extra for module, extra in (extras or {}).items()}
    unknown = set(needs) - set(targets.values())
    if unknown:
        raise ValueError(f"extras name modules that export nothing: {sorted(unknown)}")

    def __getattr__(name: str) -> Any:
        target = targets.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}", name=name)
        try:
            __import__(target)
        except ModuleNotFoundError as exc:
            extra = needs.get(target)
            missing = exc.name or ""
            if extra is None or missing == top or missing.startswith(top + "."):
                raise  # not a third-party dependency: a bug or a broken install, said as is
            raise ModuleNotFoundError(
                f"{package}.{name} needs the {extra!r} extra ({missing!r} is not installed): "
                f"pip install 'gonka-mux[{extra}]'",
                name=missing,
            ) from exc
        value = getattr(sys.modules[target], name)
        module_globals[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*module_globals, *targets})

    return __getattr__, __dir__


def _absolute(package: str, module: str) -> str:
    return package + module if module.startswith(".") else module
