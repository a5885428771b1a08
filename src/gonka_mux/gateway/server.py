"""uvicorn hardening the gateway's CLI applies: a deadline for a request's headers.

uvicorn drops idle keep-alive connections (``timeout_keep_alive``) but waits for ever on a
client that sends its request headers a byte at a time (slowloris). The protocol class made here
closes a connection whose request headers are not complete ``header_timeout`` seconds after the
connection opened or after its previous response finished. Slow bodies are the app's to bound
(``create_app(body_timeout=...)``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["header_timeout_protocol"]


def header_timeout_protocol(base: type[Any], header_timeout: float) -> type[Any]:
    """A subclass of uvicorn's HTTP protocol ``base`` (h11 or httptools) with a header deadline."""

    class HeaderTimeoutProtocol(base):  # type: ignore[misc,valid-type]
        _gmx_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
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
