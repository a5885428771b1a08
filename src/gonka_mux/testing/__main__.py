"""``python -m gonka_mux.testing``: run one fake OpenAI-compatible backend in the foreground.

The first line on stdout is the base URL (``http://127.0.0.1:PORT/v1``), flushed at once, so a
parent process started with ``--port 0`` learns the port from it. Ctrl-C or SIGTERM stops cleanly.
The API key may come from ``--api-key`` or, kept out of the process list, from the
``GONKA_MUX_FAKE_API_KEY`` environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any

from gonka_mux.testing.fake_backend import API_KEY_ENV, FakeBackend, Faults, Reply


def build_parser(prog: str = "python -m gonka_mux.testing") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a fake OpenAI-compatible backend (for offline tests and benchmarks).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: pick a free one)")
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="M",
        help="model id served and listed (repeatable; default fake-model)",
    )
    parser.add_argument("--name", help="backend name, sent as x-fake-backend (default fake-PORT)")
    parser.add_argument("--seed", type=int, help="seed for the fault draws (repeatable runs)")
    parser.add_argument("--api-key", help=f"require this Bearer key (or set ${API_KEY_ENV})")
    parser.add_argument(
        "--strict-models", action="store_true", help="answer unknown models 404 model_not_found"
    )
    faults = parser.add_argument_group("faults (rates are fractions 0..1, delays are seconds)")
    faults.add_argument("--latency", type=float, default=0.0, help="delay before each response")
    faults.add_argument("--jitter", type=float, default=0.0, help="extra uniform delay, 0..J")
    faults.add_argument("--ttft", type=float, default=0.0, help="delay before a stream's 1st chunk")
    faults.add_argument("--inter-chunk", type=float, default=0.0, help="delay between chunks")
    faults.add_argument("--rate-429", type=float, default=0.0)
    faults.add_argument("--retry-after", type=float, help="Retry-After seconds sent with a 429")
    faults.add_argument("--rate-500", type=float, default=0.0)
    faults.add_argument("--rate-hang", type=float, default=0.0, help="never answer")
    faults.add_argument(
        "--rate-drop", type=float, default=0.0, help="close the socket before responding"
    )
    faults.add_argument(
        "--rate-drop-mid-stream", type=float, default=0.0, help="close the socket mid-response"
    )
    faults.add_argument("--rate-malformed", type=float, default=0.0, help="200 with invalid JSON")
    faults.add_argument(
        "--rate-truncate",
        type=float,
        default=0.0,
        help="a stream ends cleanly halfway, with no finish_reason and no [DONE]",
    )
    faults.add_argument(
        "--body-drip",
        type=float,
        default=0.0,
        help="send a JSON reply's body in ~10 pieces, this many seconds apart",
    )
    faults.add_argument(
        "--faults-json", help="a JSON object of Faults fields (applied before the flags above)"
    )
    parser.add_argument("--replies-json", help="a JSON array of scripted replies")
    return parser


def _faults(args: argparse.Namespace) -> Faults:
    base: dict[str, Any] = json.loads(args.faults_json) if args.faults_json else {}
    if not isinstance(base, dict):
        raise ValueError("--faults-json must be a JSON object of Faults fields")
    flags = {
        "latency": args.latency,
        "jitter": args.jitter,
        "ttft": args.ttft,
        "inter_chunk": args.inter_chunk,
        "rate_429": args.rate_429,
        "retry_after": args.retry_after,
        "rate_500": args.rate_500,
        "rate_hang": args.rate_hang,
        "rate_drop_before": args.rate_drop,
        "rate_drop_mid_stream": args.rate_drop_mid_stream,
        "rate_malformed": args.rate_malformed,
        "rate_truncate": args.rate_truncate,
        "body_drip": args.body_drip,
    }
    defaults = Faults()
    base.update({k: v for k, v in flags.items() if v != getattr(defaults, k)})
    return Faults.from_dict(base)


async def _serve(backend: FakeBackend) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, task.cancel)

    def ready(backend: FakeBackend) -> None:
        print(backend.url, flush=True)
        print(
            f"fake backend {backend.name} serving {', '.join(backend.models)} at {backend.url} "
            "(Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )

    with contextlib.suppress(asyncio.CancelledError):
        await backend.serve(ready)


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run one fake backend until interrupted. Returns the exit code (2 for bad options).

    ``prog`` names the command in help and errors (e.g. ``"gonka-mux fake-backend"``).
    """
    try:
        return _main(argv, prog or "python -m gonka_mux.testing")
    except SystemExit as exc:  # argparse: --help, or bad options (message already printed)
        return exc.code if isinstance(exc.code, int) else 2


def _main(argv: list[str] | None, prog: str) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        replies = None
        if args.replies_json:
            items = json.loads(args.replies_json)
            if not isinstance(items, list):
                raise ValueError("--replies-json must be a JSON array of replies")
            replies = [Reply.from_dict(item) for item in items]
        backend = FakeBackend(
            host=args.host,
            port=args.port,
            models=args.models or ("fake-model",),
            replies=replies,
            faults=_faults(args),
            name=args.name,
            seed=args.seed,
            api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
            strict_models=args.strict_models,
        )
    except (TypeError, ValueError) as exc:  # json errors are ValueErrors too
        parser.error(str(exc))
    try:
        asyncio.run(_serve(backend))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
