"""User rule callables imported by the config tests through import paths."""

from __future__ import annotations

from typing import Any

NOT_CALLABLE = 42


def is_vip(params: Any) -> bool:
    return params.get("user") == "vip"


def by_metadata(params: Any) -> str | None:
    return (params.get("metadata") or {}).get("tier")
