"""Endpoint sources: things that own a set of endpoints and know their state.

A Gonka participant group, a broker, a vLLM node's health sidecar, or your own service
discovery: each *adds* endpoints and then *reports* on them through the Multiplexer's public
lifecycle calls, so routing hears it at once instead of learning it from failed requests:

- ``mux.mark_ready(name)``: serving again now (clears cooldown, ejection and quarantine);
- ``mux.mark_draining(name)``: no new requests; requests in flight finish;
- ``mux.mark_down(name)``: not serving (starting, unreachable) until marked ready;
- ``mux.mark_gone(name)``: removed; ``mux.retire_group(group)``: a whole group removed.

An :class:`EndpointSource` is attached with ``mux.add_source(source)``: ``start(mux)`` runs on
the Multiplexer's event loop (at once if it is running, else before the first request) and
``aclose()`` when the Multiplexer closes. See docs/extending.md for a complete example.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["EndpointSource"]


@runtime_checkable
class EndpointSource(Protocol):
    """Owns endpoints: adds them in ``start`` and reports their lifecycle while it runs."""

    async def start(self, mux: Any) -> None:
        """Register endpoints (``mux.add_endpoint`` / ``mux.register_endpoint``) and start
        watching them (e.g. a polling task that calls ``mux.mark_ready`` / ``mark_draining``)."""
        ...

    async def aclose(self) -> None:
        """Stop watching; called once when the Multiplexer closes."""
        ...
