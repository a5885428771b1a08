"""Check gonka-serve's profiles against the installed vLLM: flags, env vars, parser names.

Run with the interpreter that has vLLM. Reads JSON on stdin::

    {"commands": [{"name", "argv", "env", "tool_call_parser", "reasoning_parser",
                   "chat_template"}, ...],
     "foreign_env": {"HF_HUB_OFFLINE": "huggingface_hub", ...}}

(``argv`` is what follows the launcher prefix: ``[MODEL, --flag, ...]``) and prints one line per
check. Exit 1 when anything fails:

- vLLM's own argument parser rejects a command line (a misspelt or removed flag);
- an environment variable is neither defined in ``vllm.envs.environment_variables`` nor one of
  ``foreign_env`` whose package's source mentions it (vLLM only warns "Unknown vLLM environment
  variable" and ignores it, so a stale recipe variable would otherwise pass silently);
- a tool-call or reasoning parser name is not registered, or its class does not import.

A chat template is reported: present on this host, or not shipped with this vLLM build (the
PyPI wheels carry no ``examples/``; the official image has them under /vllm-workspace).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Any


def _import_first(*paths: str) -> Any:
    for path in paths:
        module_name, _, attr = path.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            continue
    return None


def _registered(manager: Any) -> set[str]:
    if manager is None:
        return set()
    if callable(getattr(manager, "list_registered", None)):
        return set(manager.list_registered())
    names: set[str] = set()
    for attr in ("tool_parsers", "reasoning_parsers", "lazy_parsers"):
        table = getattr(manager, attr, None)
        if isinstance(table, dict):
            names |= set(table)
    return names


def _loads(manager: Any, getter: str, name: str) -> str | None:
    """None when the parser class imports, else the error."""
    get = getattr(manager, getter, None)
    if get is None:
        return None
    try:
        get(name)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


_SOURCE_CACHE: dict[str, str] = {}


def _package_mentions(package: str, name: str) -> bool:
    if package not in _SOURCE_CACHE:
        spec = importlib.util.find_spec(package)
        text = []
        if spec is not None and spec.origin:
            root = Path(spec.origin).parent
            for path in root.rglob("*.py"):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    text.append(path.read_text())
        _SOURCE_CACHE[package] = "\n".join(text)
    return name in _SOURCE_CACHE[package]


def main() -> int:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    data = json.load(sys.stdin)
    commands = data["commands"]
    foreign = data.get("foreign_env", {})
    import vllm.envs as vllm_envs

    known_env = set(getattr(vllm_envs, "environment_variables", {}))
    tools = _import_first(
        "vllm.tool_parsers.ToolParserManager",
        "vllm.entrypoints.openai.tool_parsers.ToolParserManager",
    )
    reasoners = _import_first(
        "vllm.reasoning.ReasoningParserManager",
        "vllm.reasoning.abs_reasoning_parsers.ReasoningParserManager",
    )
    tool_names, reasoning_names = _registered(tools), _registered(reasoners)
    out = sys.stdout
    out.write(
        f"vLLM defines {len(known_env)} environment variables, registers {len(tool_names)} "
        f"tool-call parsers and {len(reasoning_names)} reasoning parsers\n"
    )
    if not known_env or not tool_names or not reasoning_names:
        out.write("FAILED: could not read vLLM's env/parser registries (layout changed?)\n")
        return 1
    failures = 0
    for cmd in commands:
        name, argv = cmd["name"], cmd["argv"]
        parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = parser.parse_args(argv)
        except SystemExit:
            failures += 1
            message = err.getvalue().strip().splitlines()[-1:] or ["(no message)"]
            out.write(f"REJECTED {name}: {message[0]}\n")
            continue
        problems: list[str] = []
        for var in sorted(cmd.get("env", {})):
            if var in known_env:
                continue
            owner = foreign.get(var)
            if var.startswith("VLLM_") or owner is None:
                problems.append(f"env {var} is not defined by vLLM's envs.py (vLLM ignores it)")
            elif not _package_mentions(owner, var):
                problems.append(f"env {var}: {owner} does not read it")
        for kind, parser_name, names, manager, getter in (
            ("tool-call", cmd.get("tool_call_parser"), tool_names, tools, "get_tool_parser"),
            (
                "reasoning",
                cmd.get("reasoning_parser"),
                reasoning_names,
                reasoners,
                "get_reasoning_parser",
            ),
        ):
            if not parser_name:
                continue
            if parser_name not in names:
                problems.append(f"{kind} parser {parser_name!r} is not registered in this vLLM")
            else:
                broken = _loads(manager, getter, parser_name)
                if broken:
                    problems.append(f"{kind} parser {parser_name!r} does not load: {broken}")
        template = cmd.get("chat_template")
        template_note = ""
        if template:
            if Path(template).is_file():
                template_note = f" chat_template={template} (present)"
            else:
                template_note = (
                    f" chat_template={Path(template).name} (not in this vLLM build: checked "
                    "where the official image provides it)"
                )
        if problems:
            failures += 1
            for problem in problems:
                out.write(f"FAILED {name}: {problem}\n")
            continue
        out.write(
            f"ok {name}: model={args.model_tag or args.model} tp={args.tensor_parallel_size} "
            f"dp={args.data_parallel_size} ep={getattr(args, 'enable_expert_parallel', None)} "
            f"tool_parser={args.tool_call_parser} reasoning_parser={args.reasoning_parser} "
            f"env={','.join(sorted(cmd.get('env', {})))} "
            f"shutdown_timeout={args.shutdown_timeout}{template_note}\n"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
