"""Helpers for the tests of Gonka inside a Multiplexer (registration, refresh, policy, e2e)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

from _gonka_support import MODEL

from gonka_mux.gonka.registration import GonkaRegistrationResult, aregister_gonka_models
from gonka_mux.gonka.signing import RequestSigner, signing_message
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork, GonkaRequestRecord, verify_signature

MESSAGES = [{"role": "user", "content": "hello"}]
# Polls in tests: every 50 ms, no per-source floor beyond 10 ms (production: 30 s and 6 s).
FAST_REFRESH: dict[str, Any] = {"interval": 0.05}


async def register(
    mux: Any, net: FakeGonkaNetwork, signer: RequestSigner, **kwargs: Any
) -> GonkaRegistrationResult:
    refresh = {**FAST_REFRESH, **kwargs.pop("refresh_options", {})}
    kwargs.setdefault("source_url", net.source_url)
    kwargs.setdefault("min_poll_interval", 0.01)
    return await aregister_gonka_models(
        mux, signer=signer, refresh_options=refresh, environ={}, **kwargs
    )


async def chat(mux: Any, model: str = MODEL, **kwargs: Any) -> Any:
    return await mux.chat.completions.create(model=model, messages=MESSAGES, **kwargs)


async def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def assert_verified(records: Iterable[GonkaRequestRecord], signer: RequestSigner) -> None:
    """Each attempt is validly signed for its TA by ``signer`` (checked with the fake's own,
    independent verifier) and carries its own signature."""
    records = list(records)
    assert records
    for record in records:
        assert record.timestamp_ns is not None
        message = signing_message(record.body, record.timestamp_ns, record.node)
        assert verify_signature(signer.public_key, record.authorization or "", message), record
        assert record.requester == signer.address
    assert len({r.authorization for r in records}) == len(records)


def assert_increasing_timestamps(records: Iterable[GonkaRequestRecord]) -> None:
    stamps = [r.timestamp_ns or 0 for r in records]
    assert all(a < b for a, b in itertools.pairwise(stamps)), stamps


def endpoint_names(mux: Any, group: str = "gonka") -> set[str]:
    return {ep.name for ep in mux.endpoints if ep.group == group}


def address_of(name: str) -> str:
    """The TA address in an endpoint name ``gonka:<address>/<model>``."""
    return name.split(":", 1)[1].split("/", 1)[0]
