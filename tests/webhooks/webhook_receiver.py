"""A real webhook receiver on 127.0.0.1 that verifies signatures and dedupes by delivery id."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gonka_mux.webhooks import SignatureVerificationError, verify_signature

SECRET = "whsec_test_0123456789abcdefghij"


def independent_signature_ok(secret: str, header: str, body: bytes) -> bool:
    """The receiver's own check, written from the spec without the library."""
    parts = dict(p.split("=", 1) for p in header.split(","))
    expected = hmac.new(
        secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


@dataclass
class Received:
    delivery_id: str
    event: str
    body: bytes
    signature: str
    verified: bool
    status: int
    at: float = field(default_factory=time.time)


@dataclass
class Receiver:
    """Records every POST; processes each delivery id once (the receiver-side dedupe).

    ``fail_before_processing``: per delivery id, answer 500 this many times without processing.
    ``fail_after_processing``: per delivery id, process, then answer 500 this many times (a lost
    acknowledgement). ``respond``: overrides the status for a (delivery id, nth request) pair.
    """

    secret: str = SECRET
    url: str = ""
    fail_before_processing: int = 0
    fail_after_processing: int = 0
    respond: Callable[[str, int], int | None] | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    processed: dict[str, dict[str, Any]] = field(default_factory=dict)
    job_process_count: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, headers: Any, body: bytes) -> int:
        signature = headers.get("X-Gonka-Mux-Signature", "")
        delivery_id = headers.get("X-Gonka-Mux-Delivery", "")
        event = headers.get("X-Gonka-Mux-Event", "")
        try:
            verify_signature(self.secret, headers, body)
            verified = independent_signature_ok(self.secret, signature, body)
        except SignatureVerificationError:
            verified = False
        with self.lock:
            nth = sum(1 for r in self.received if r.delivery_id == delivery_id) + 1
            status = self._decide(delivery_id, nth, verified, body)
            self.received.append(Received(delivery_id, event, body, signature, verified, status))
        return status

    def _decide(self, delivery_id: str, nth: int, verified: bool, body: bytes) -> int:
        if not verified:
            return 400
        if self.respond is not None:
            forced = self.respond(delivery_id, nth)
            if forced is not None:
                return forced
        if nth <= self.fail_before_processing:
            return 500
        if delivery_id not in self.processed:  # exactly-once processing by delivery id
            payload = json.loads(body)
            self.processed[delivery_id] = payload
            self.job_process_count[payload["job"]["id"]] += 1
        if nth <= self.fail_before_processing + self.fail_after_processing:
            return 500
        return 200

    def requests_for(self, delivery_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.delivery_id == delivery_id]

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return
            time.sleep(0.01)
        raise AssertionError(f"receiver got {len(self.received)} requests, wanted {count}")


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    """Serve a Receiver on a free loopback port in a thread."""
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = state.handle(self.headers, body)
            payload = b"ok" if status == 200 else b"receiver says no"
            self.send_response(status)
            for name, value in state.extra_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/gonka"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
