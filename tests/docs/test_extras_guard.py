"""Importing an adapter without its extra names the pip command that installs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK = """
import builtins, sys
real = builtins.__import__
def fake(name, *args, **kwargs):
    if name.split(".")[0] in ("crewai", "langchain_core", "langgraph"):
        raise ImportError(f"No module named {name!r}", name=name)
    return real(name, *args, **kwargs)
builtins.__import__ = fake
import gonka_mux.integrations.MODULE
"""


@pytest.mark.parametrize(
    ("module", "extra"),
    [("crewai", "crewai"), ("langchain", "langchain"), ("langgraph", "langchain")],
)
def test_missing_extra_names_the_install_command(module: str, extra: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK.replace("MODULE", module)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"pip install 'gonka-mux[{extra}]'" in result.stderr, result.stderr
