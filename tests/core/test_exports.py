"""Lazy package exports (gonka_mux._exports): every public name resolves, unknown names and missing
extras say what is wrong, and ``import gonka_mux`` stays cheap."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gonka_mux._exports import lazy_exports

PACKAGES = ["gonka_mux", "gonka_mux.gateway", "gonka_mux.integrations", "gonka_mux.webhooks"]
EXTRAS = {
    "ChatMultiplexer": "langchain",
    "SessionStoreSaver": "langchain",
    "BM25Store": "langchain",
    "MultiplexerLLM": "crewai",
}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        try:
            value = getattr(module, name)
        except ModuleNotFoundError as exc:  # an adapter whose framework is not installed here
            assert f"pip install 'gonka-mux[{EXTRAS[name]}]'" in str(exc)
            continue
        assert vars(module)[name] is value  # cached: the next lookup does not come back
        assert name in dir(module)


@pytest.mark.parametrize("package", PACKAGES)
def test_an_unknown_name_is_an_attribute_error(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'nope'") as info:
        module.nope  # noqa: B018
    assert info.value.name == "nope"
    with pytest.raises(ImportError):
        exec(f"from {package} import nope", {})


def test_import_gonka_mux_loads_nothing_else() -> None:
    code = (
        "import sys; before = set(sys.modules); import gonka_mux; "
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    new = set(eval(out.stdout))
    assert new <= {"gonka_mux", "gonka_mux._exports", "__future__"}, new


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway package whose lazy names come from a module with a missing dependency, a
    module that does not exist and a module that works."""
    root = tmp_path / "lazy_pkg"
    root.mkdir()
    (root / "__init__.py").write_text(
        textwrap.dedent(
            """
            from gonka_mux._exports import lazy_exports

            __getattr__, __dir__ = lazy_exports(
                globals(),
                {"Fancy": ".fancy", "Gone": ".gone", "Plain": ".plain", "sep": "os"},
                extras={".fancy": "fancy", ".gone": "fancy"},
            )
            """
        )
    )
    (root / "fancy.py").write_text("import not_installed_dependency_xyz\nFancy = 1\n")
    (root / "plain.py").write_text("Plain = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lazy_pkg"
    for name in [m for m in sys.modules if m == "lazy_pkg" or m.startswith("lazy_pkg.")]:
        del sys.modules[name]


def test_a_missing_extra_names_the_pip_install(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(ModuleNotFoundError) as info:
        module.Fancy  # noqa: B018
    message = str(info.value)
    assert "lazy_pkg.Fancy needs the 'fancy' extra" in message
    assert "pip install 'gonka-mux[fancy]'" in message
    assert info.value.name == "not_installed_dependency_xyz"


def test_a_missing_module_of_the_package_itself_is_not_blamed_on_the_extra(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(ModuleNotFoundError, match=r"lazy_pkg\.gone") as info:
        module.Gone  # noqa: B018
    assert "pip install" not in str(info.value)


def test_relative_and_absolute_modules_and_dir(package: str) -> None:
    module = importlib.import_module(package)
    assert {"Fancy", "Gone", "Plain", "sep"} <= set(dir(module))
    assert module.Plain == 2
    assert module.sep == os.sep


def test_extras_must_name_an_exporting_module() -> None:
    with pytest.raises(ValueError, match="export nothing"):
        lazy_exports({"__name__": "x"}, {"A": ".a"}, extras={".b": "bee"})


def test_the_literal_all_of_the_package_matches_its_lazy_table():
    """__all__ is written out (type checkers need a literal list): it must not drift."""
    import gonka_mux

    assert set(gonka_mux.__all__) == {"__version__", *gonka_mux._EXPORTS}
