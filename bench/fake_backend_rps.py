"""Throughput of the fake backend: requests/s from keep-alive client loops, and server CPU cost.

Spawns ``python -m gonka_mux.testing`` in a child process, drives it for ``--seconds`` from
``--clients`` client processes, each a keep-alive loop of one request at a time, and prints:

* ``client_rps``: completed requests per second seen by the clients. On small machines this is
  bounded by the clients' own CPU (an httpx request costs more CPU than the fake spends on it)
  and by the cost of waking a process on the other end of a socket.
* ``server_cpu_per_request`` and ``server_rps_per_core``: the server process's CPU seconds
  (user + system, from /proc) divided by the requests it served -- what one core of the fake
  can sustain, i.e. the number that must stay high so benchmarks measure the client, not it.

``--client httpx`` (default) and ``httpx2`` use those libraries' ``Client``; ``raw`` writes the
request bytes on a plain socket (the cheapest possible client, to show the server's ceiling).

Usage: ``python bench/fake_backend_rps.py [--seconds 5] [--clients 1] [--client raw] [--stream]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import time
from urllib.parse import urlsplit

from gonka_mux.testing import spawn_fake_backend


def _payload(stream: bool) -> bytes:
    body: dict = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Say hi in five words."}],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def _library_loop(library: str, url: str, payload: bytes, stream: bool, seconds: float) -> int:
    httpx = __import__(library)
    headers = {"content-type": "application/json", "authorization": "Bearer x"}
    count = 0
    with httpx.Client(base_url=url, timeout=10) as client:
        client.post("/chat/completions", content=payload, headers=headers).raise_for_status()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for _ in range(20):
                if stream:
                    with client.stream(
                        "POST", "/chat/completions", content=payload, headers=headers
                    ) as response:
                        for _chunk in response.iter_bytes():
                            pass
                else:
                    client.post("/chat/completions", content=payload, headers=headers).read()
                count += 1
    return count


def _raw_loop(url: str, payload: bytes, stream: bool, seconds: float) -> int:
    parts = urlsplit(url)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = b""
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            sock.sendall(request)
            while True:  # read exactly one response
                head_end = buffer.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = buffer[:head_end].lower()
                    if stream:
                        end = buffer.find(b"\r\n0\r\n\r\n", head_end)
                        if end >= 0:
                            buffer = buffer[end + 7 :]
                            break
                    else:
                        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                        end = head_end + 4 + length
                        if len(buffer) >= end:
                            buffer = buffer[end:]
                            break
                buffer += sock.recv(1 << 16)
            count += 1
    sock.close()
    return count


def _worker(args: argparse.Namespace, url: str, out: multiprocessing.Queue) -> None:
    payload = _payload(args.stream)
    if args.client == "raw":
        out.put(_raw_loop(url, payload, args.stream, args.seconds))
    else:
        out.put(_library_loop(args.client, url, payload, args.stream, args.seconds))


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--client", default="httpx", choices=["httpx", "httpx2", "raw"])
    parser.add_argument("--stream", action="store_true", help="SSE chat completions")
    args = parser.parse_args()

    with spawn_fake_backend(name="bench") as backend:
        queue: multiprocessing.Queue = multiprocessing.Queue()
        workers = [
            multiprocessing.Process(target=_worker, args=(args, backend.url, queue))
            for _ in range(args.clients)
        ]
        cpu_before = _cpu_seconds(backend.pid)
        served_before = backend.request_count
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        total = sum(queue.get(timeout=args.seconds + 60) for _ in workers)
        elapsed = time.perf_counter() - started
        for worker in workers:
            worker.join()
        cpu_after = _cpu_seconds(backend.pid)
        user, system = (after - before for after, before in zip(cpu_after, cpu_before, strict=True))
        server_cpu = user + system
        served = backend.request_count - served_before

    kind = "stream" if args.stream else "json"
    setup = f"{args.client} client, {args.clients} process(es), {os.cpu_count()} cores"
    print(f"fake backend {kind} chat completions ({setup})")
    print(f"requests:               {total} in {elapsed:.2f}s (server served {served})")
    print(f"client_rps:             {total / elapsed:,.0f} req/s")
    if server_cpu > 0 and served:
        print(
            f"server_cpu_per_request: {server_cpu / served * 1e6:,.0f} us "
            f"({user / served * 1e6:,.0f} us user, {system / served * 1e6:,.0f} us system)"
        )
        print(f"server_rps_per_core:    {served / server_cpu:,.0f} req/s per server CPU second")


if __name__ == "__main__":
    main()
