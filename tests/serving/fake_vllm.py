"""A stand-in for a vLLM OpenAI server process, for supervisor tests.

A real process with a real HTTP server on loopback that behaves like vLLM where the supervisor
looks: the port stays closed while "loading", ``/health``, ``/v1/models``, ``/metrics`` (vLLM
names and labels), ``/load``, streaming ``/v1/chat/completions``; SIGTERM drains in-flight requests
(new ones get 500, as vLLM does) for ``--shutdown-timeout`` seconds; a child process stands in for
the engine core in the same process group. Failure modes are switched on by flags:

  --crash-after S     exit with code 3 S seconds after binding
  --crash-once FILE   crash only while FILE does not exist (creates it): crash, restart, recover
  --stall             report running requests whose generated-token counter never moves
  --health-status N   answer /health with N (503 = dead engine)
  --health-after S    ... but only S seconds after binding (healthy until then)
  --ignore-sigterm    ignore SIGTERM (a hung server that must be killed)
  --teardown-traceback  after a drain, print the EngineDeadError traceback vLLM 0.32 prints
                      on every clean shutdown
  --loading-lines N   print N "loading" lines (one per 0.1 s) before binding

It accepts (and ignores) the rest of vLLM's flags, so it runs from a command built for vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("serve", nargs="?")
    p.add_argument("model_pos", nargs="?")
    p.add_argument("--model")
    p.add_argument("--served-model-name", default="fake")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--shutdown-timeout", type=float, default=0.0)
    p.add_argument("--startup-delay", type=float, default=0.2)
    p.add_argument("--crash-after", type=float, default=None)
    p.add_argument("--crash-once", default=None)
    p.add_argument("--stall", action="store_true")
    p.add_argument("--health-status", type=int, default=200)
    p.add_argument("--health-after", type=float, default=0.0)
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--teardown-traceback", action="store_true")
    p.add_argument("--loading-lines", type=int, default=0)
    p.add_argument("--token-delay", type=float, default=0.02)
    p.add_argument("--child-pidfile", default=None)
    p.add_argument("--api-key", default=None)
    args, _unknown = p.parse_known_args(argv)
    return args


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.generated = 0
        self.finished = 0
        self.draining = False
        self.bound_at = time.monotonic()


def make_handler(args: argparse.Namespace, state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *a: object) -> None:
            sys.stdout.write("fake-vllm: " + (format % a) + "\n")
            sys.stdout.flush()

        def _json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                early = time.monotonic() - state.bound_at < args.health_after
                self.send_response(200 if early else args.health_status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/v1/models":
                if args.api_key and self.headers.get("Authorization") != f"Bearer {args.api_key}":
                    self._json(401, {"error": "Unauthorized"})  # vLLM guards /v1 only
                    return
                self._json(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": args.served_model_name,
                                "object": "model",
                                "owned_by": "vllm",
                                "max_model_len": 2048,
                            }
                        ],
                    },
                )
            elif self.path == "/version":
                self._json(200, {"version": "0.0.0-fake"})
            elif self.path == "/load":
                self._json(200, {"server_load": state.running})
            elif self.path == "/metrics":
                with state.lock:
                    running = 1 if args.stall else state.running
                    generated = state.generated
                    finished = state.finished
                labels = f'engine="0",model_name="{args.served_model_name}"'
                done = f'{labels},finished_reason="length"'
                text = (
                    "# TYPE vllm:num_requests_running gauge\n"
                    f"vllm:num_requests_running{{{labels}}} {float(running)}\n"
                    "# TYPE vllm:num_requests_waiting gauge\n"
                    f"vllm:num_requests_waiting{{{labels}}} 0.0\n"
                    "# TYPE vllm:kv_cache_usage_perc gauge\n"
                    f"vllm:kv_cache_usage_perc{{{labels}}} {0.1 * running}\n"
                    "# TYPE vllm:generation_tokens counter\n"
                    f"vllm:generation_tokens_total{{{labels}}} {float(generated)}\n"
                    "# TYPE vllm:request_success counter\n"
                    f"vllm:request_success_total{{{done}}} {float(finished)}\n"
                )
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self._json(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path != "/v1/chat/completions":
                self._json(404, {"error": {"message": "not found"}})
                return
            if state.draining:
                self._json(
                    500,
                    {
                        "error": {
                            "message": "cannot schedule new futures after shutdown",
                            "code": 500,
                        }
                    },
                )
                return
            n = int(body.get("max_tokens") or 8)
            with state.lock:
                state.running += 1
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for i in range(n):
                    time.sleep(args.token_delay)
                    chunk = {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "model": args.served_model_name,
                        "choices": [
                            {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
                        ],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    with state.lock:
                        state.generated += 1
                done = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "model": args.served_model_name,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                }
                self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
                self.close_connection = True
            finally:
                with state.lock:
                    state.running -= 1
                    state.finished += 1

    return Handler


def main() -> int:
    args = parse(sys.argv[1:])
    crash_after = args.crash_after
    if args.crash_once:
        if os.path.exists(args.crash_once):
            crash_after = None
        else:
            open(args.crash_once, "w").close()
            crash_after = crash_after if crash_after is not None else 0.3
    # The "engine core": a child in our process group that a careless stop would leave behind.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if args.child_pidfile:
        with open(args.child_pidfile, "w") as fh:
            fh.write(str(child.pid))
    if args.api_key:  # vLLM logs its non-default arguments, keys included
        sys.stdout.write(f"fake-vllm: non-default args: {{'api_key': ['{args.api_key}']}}\n")
    sys.stdout.write(f"fake-vllm: loading weights for {args.model or args.model_pos}\n")
    sys.stdout.flush()
    for i in range(args.loading_lines):
        sys.stdout.write(f"fake-vllm: pid {os.getpid()} loading shard {i + 1}\n")
        sys.stdout.flush()
        time.sleep(0.1)
    time.sleep(args.startup_delay)  # port closed while loading, as in vLLM

    state = State()
    state.bound_at = time.monotonic()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args, state))
    server.daemon_threads = True
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        if args.ignore_sigterm:
            sys.stdout.write("fake-vllm: ignoring SIGTERM\n")
            sys.stdout.flush()
            return
        state.draining = True
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sys.stdout.write(f"fake-vllm: Starting vLLM server on http://{args.host}:{args.port}\n")
    sys.stdout.flush()

    deadline = time.monotonic() + crash_after if crash_after is not None else None
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            sys.stdout.write("fake-vllm: EngineCore encountered a fatal error\n")
            sys.stdout.flush()
            os._exit(3)
        stop.wait(0.05)

    # Drain: wait for in-flight requests up to the shutdown timeout, then exit.
    sys.stdout.write(f"fake-vllm: draining in-flight requests count={state.running}\n")
    sys.stdout.flush()
    end = time.monotonic() + args.shutdown_timeout
    while state.running and time.monotonic() < end:
        time.sleep(0.02)
    sys.stdout.write(f"fake-vllm: exiting with {state.running} in flight\n")
    if args.teardown_traceback:  # the shape vLLM's engine client logs when its engine is gone
        sys.stdout.write(
            "(APIServer pid=1) ERROR 08-21 10:00:00 [core_client.py:600] Engine core proc "
            "EngineCore_DP0 died unexpectedly, shutting down client.\n"
            "Traceback (most recent call last):\n"
            '  File "/venv/vllm/v1/engine/async_llm.py", line 480, in output_handler\n'
            "    outputs = await engine_core.get_output_async()\n"
            "              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
            "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. "
            "See stack trace (above) for the root cause.\n"
        )
    sys.stdout.flush()
    child.terminate()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
