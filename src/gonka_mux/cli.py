"""The ``gonka-mux`` command line: demo, fake backend, Gonka tools, usage dashboard, gateway."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

# Subcommand groups contributed by optional modules: module path -> its register(subparsers).
_PLUGINS = (
    "gonka_mux.gonka.cli",
    "gonka_mux.dashboard.cli",
    "gonka_mux.gateway.cli",
)


def _demo(args: argparse.Namespace) -> int:
    # Lazy: the demo imports the Multiplexer (openai, ~0.5 s), which no other command needs.
    from .demo import run_demo

    return run_demo(requests=args.requests, concurrency=args.concurrency, seed=args.seed)


def _fake_backend(args: argparse.Namespace) -> int:
    # Lazy: the fake backend's server modules add ~35 ms to every other `gonka-mux` command.
    from .testing.__main__ import main as fake_main

    return fake_main(args.fake_args, prog="gonka-mux fake-backend")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gonka-mux",
        description="One OpenAI-shaped client over many LLM endpoints (Gonka, brokers, vLLM).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="route a conversation and a burst over an embedded local fleet (offline)",
        description="Starts an embedded fleet of fake endpoints (healthy, slow, failing) and "
        "a fake Gonka network, and shows how the Multiplexer routes, fails over and recovers.",
    )
    demo.add_argument("--requests", type=int, default=200, help="burst size (default 200)")
    demo.add_argument("--concurrency", type=int, default=16, help="burst concurrency")
    demo.add_argument("--seed", type=int, default=7, help="random seed for the fleet's faults")
    demo.set_defaults(func=_demo)

    fake = sub.add_parser(
        "fake-backend",
        help="run a fake OpenAI-compatible backend (see `python -m gonka_mux.testing --help`)",
        add_help=False,
    )
    fake.add_argument("fake_args", nargs=argparse.REMAINDER)
    fake.set_defaults(func=_fake_backend)

    for module_name in _PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = getattr(exc, "name", "") or ""
            if missing.startswith("gonka_mux"):
                continue  # that part of the package is not built in this version
            module = None
            _register_missing(sub, module_name, missing)
        if module is not None:
            module.register(sub)
    return parser


def _register_missing(sub: argparse._SubParsersAction, module_name: str, missing: str) -> None:
    extra = {"gonka_mux.gateway.cli": ("gateway", "gateway")}.get(module_name)
    if extra is None:
        return
    name, extra_name = extra

    def fail(_args: argparse.Namespace) -> int:
        print(
            f"`gonka-mux {name}` needs the optional dependency {missing!r}: "
            f"pip install 'gonka-mux[{extra_name}]'",
            file=sys.stderr,
        )
        return 2

    p = sub.add_parser(name, help=f"(needs pip install 'gonka-mux[{extra_name}]')")
    p.set_defaults(func=fail)


def quiet_on_broken_pipe(run: Callable[[], int]) -> int:
    """Run a command; if its reader went away (``gonka-mux usage --json | head``), exit quietly.

    The standard recipe (Python docs, "Note on SIGPIPE"): point stdout at devnull so the
    interpreter's final flush does not raise again, and exit with 1, without a traceback.
    """
    try:
        code = run()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    return quiet_on_broken_pipe(lambda: _main(args_list))


def _main(argv: list[str]) -> int:
    # `gonka-mux [-v] fake-backend ARGS...`: ARGS go to the fake backend's own parser as they
    # are (argparse's REMAINDER refuses ARGS that start with an option, such as `--port 8000`).
    lead = [a for a in argv[:2] if a in ("-v", "--verbose")]
    rest = argv[len(lead) :]
    if rest and rest[0] == "fake-backend":
        if lead:
            logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
        from .testing.__main__ import main as fake_main

        try:
            return fake_main(rest[1:], prog="gonka-mux fake-backend")
        except KeyboardInterrupt:
            return 130
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
