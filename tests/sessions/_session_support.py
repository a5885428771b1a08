"""Helpers shared by the session tests (a module with a unique name, unlike conftest)."""

from __future__ import annotations

from collections.abc import Callable

from gonka_mux.sessions import SessionStore

StoreFactory = Callable[..., SessionStore]


class FakeClock:
    """A clock the test moves by hand; every store and the manager accept one."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}
