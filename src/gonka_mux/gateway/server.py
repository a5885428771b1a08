"""What the gateway's CLI adds to uvicorn's HTTP protocol: a deadline for a request's headers,
and fewer writes per response.

uvicorn drops idle keep-alive connections (``timeout_keep_alive``) but waits for ever on a
client that sends its request headers a byte at a time (slowloris). The protocol class made here
closes a connection whose request headers are not complete ``header_timeout`` seconds after the
connection opened or after its previous response finished. Slow bodies are the app's to bound
(``create_app(body_timeout=...)``).

uvicorn writes a response's status line and headers, then each body part, each with its own
``send()`` system call (on loopback each one also wakes the reader: a large share of a relay's
cost). The protocol's transport here collects the writes made in one turn of the event loop and
sends them together when the turn ends: a JSON response's headers and body leave in one
``send()``, as do a stream's headers and first events. Nothing waits longer than the current
turn, so a stream's events are not delayed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CoalescingTransport", "header_timeout_protocol"]


class CoalescingTransport:
    """A transport whose writes within one event-loop turn go out in one ``write``."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()  # what was written before close() is sent first, as a transport does
        self._transport.close()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def header_timeout_protocol(
    base: type[Any], header_timeout: float, *, coalesce_writes: bool = True
) -> type[Any]:
    """A subclass of uvicorn's HTTP protocol ``base`` (h11 or httptools) with a header deadline
    and, with ``coalesce_writes``, a :class:`CoalescingTransport`."""

    class HeaderTimeoutProtocol(base):  # type: ignore[misc,valid-type]
        _gmx_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if coalesce_writes:
                self.transport = CoalescingTransport(transport, self.loop)
            self._gmx_arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            if self._gmx_timer is None and (cycle is None or cycle.response_complete):
                self._gmx_arm()  # bytes of a new request on a kept-alive connection
            super().data_received(data)
            if self.cycle is not cycle:  # the headers of a new request are complete
                self._gmx_disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._gmx_disarm()
            super().connection_lost(exc)

        def _gmx_arm(self) -> None:
            self._gmx_disarm()
            self._gmx_timer = self.loop.call_later(header_timeout, self._gmx_expired)

        def _gmx_disarm(self) -> None:
            if self._gmx_timer is not None:
                self._gmx_timer.cancel()
                self._gmx_timer = None

        def _gmx_expired(self) -> None:
            self._gmx_timer = None
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                self.transport.close()

    HeaderTimeoutProtocol.__name__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol
