"""Fixtures for the gonka-serve tests (helpers live in _serving_support.py)."""

from __future__ import annotations

from _serving_support import port, recorded_vllm

__all__ = ["port", "recorded_vllm"]
