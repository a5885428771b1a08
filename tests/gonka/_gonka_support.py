"""Constants and helpers shared by the Gonka tests (imported by name; conftest holds fixtures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
MODEL = "Qwen/Fake-7B"
# A throwaway requester key (never a real account); tests grep output for it.
REQUESTER_KEY = "5eca1d" + "c0ffee" * 9 + "abcd"


def load_fixture(name: str) -> Any:
    data = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data.pop("_note", None)
    return data


def chat_body(max_tokens: int = 16, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        **extra,
    }
