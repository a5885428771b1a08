"""Offline test doubles: a fake OpenAI-compatible backend (a real loopback HTTP server).

``FakeBackend`` (one server on a background thread), ``FakeFleet`` (many on one thread),
``spawn_fake_backend`` (one in a child process), with ``Reply``/``ToolCall`` scripts and
``Faults``. Nothing here imports openai. ``python -m gonka_mux.testing`` runs one from the shell.
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

__all__ = [
    "FakeBackend",
    "FakeBackendProcess",
    "FakeBackendSpec",
    "FakeFleet",
    "Faults",
    "RecordedRequest",
    "Reply",
    "StatusError",
    "ToolCall",
    "spawn_fake_backend",
]
