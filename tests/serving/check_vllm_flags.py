"""Parse gonka-serve's command lines with the installed vLLM's own argument parser.

Run with the interpreter that has vLLM; reads ``[[name, argv], ...]`` (argv after the launcher
prefix: ``[MODEL, --flag, ...]``) as JSON on stdin and prints one line per command. Exit 1 when
vLLM rejects any of them, so a profile with a misspelt or removed flag fails CI.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys


def main() -> int:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    commands = json.load(sys.stdin)
    failures = 0
    for name, argv in commands:
        parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = parser.parse_args(argv)
        except SystemExit:
            failures += 1
            message = err.getvalue().strip().splitlines()[-1:] or ["(no message)"]
            sys.stdout.write(f"REJECTED {name}: {message[0]}\n")
            continue
        sys.stdout.write(
            f"ok {name}: model={args.model_tag or args.model} tp={args.tensor_parallel_size} "
            f"dp={args.data_parallel_size} tool_parser={args.tool_call_parser} "
            f"reasoning_parser={args.reasoning_parser} shutdown_timeout={args.shutdown_timeout}\n"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
