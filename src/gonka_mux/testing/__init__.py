"""Offline test doubles: a fake OpenAI-compatible backend (a real loopback HTTP server).

``FakeBackend`` (one server on a background thread), ``FakeFleet`` (many on one thread),
``spawn_fake_backend`` (one in a child process), with ``Reply``/``ToolCall`` scripts and
``Faults``; ``FakeBroker``, a Gonka broker / devshard gateway with its own behaviours (token
caps, strict fields, 308 moves, 409/429/503/504, status and accounting). Nothing here imports
openai. ``python -m gonka_mux.testing`` runs one from the shell.
"""

from __future__ import annotations

from gonka_mux.testing.fake_backend import (
    FakeBackend,
    FakeBackendProcess,
    FakeBackendSpec,
    FakeFleet,
    Faults,
    RecordedRequest,
    Reply,
    StatusError,
    ToolCall,
    spawn_fake_backend,
)
from gonka_mux.testing.fake_broker import BrokerRequestRecord, FakeBroker

__all__ = [
    "BrokerRequestRecord",
    "FakeBackend",
    "FakeBackendProcess",
    "FakeBackendSpec",
    "FakeBroker",
    "FakeFleet",
    "Faults",
    "RecordedRequest",
    "Reply",
    "StatusError",
    "ToolCall",
    "spawn_fake_backend",
]
