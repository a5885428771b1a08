"""Every ```python block in README.md and docs/*.md runs as written, or is marked illustrative.

A block is illustrative (shown, never run) when its fence says so (```python illustrative) or
the line before the fence is ``<!-- illustrative -->``. Every other block runs as a script in a
fresh interpreter, with a timeout, in a temporary directory, with a fake OpenAI-compatible
backend (gonka_mux.testing.FakeBackend, any model name) whose base URL is in the environment
variable ``GONKA_MUX_FAKE_URL``; runnable blocks point their endpoints there. The state
directory (``GONKA_MUX_STATE_DIR``: SQLite files, sessions, jobs) is the block's own temporary
directory, so blocks that use the defaults leave nothing behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gonka_mux.testing import FakeBackend

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = "<!-- illustrative -->"
TIMEOUT = 60
_FENCE = re.compile(r"^(\s*)```(\S*)(.*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    illustrative: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        _indent, lang, info = match.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith("```"):
            end += 1
        if lang in ("python", "py"):
            before = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
            marked = "illustrative" in info.split() or before == MARKER
            code = textwrap.dedent("\n".join(lines[i + 1 : end]))
            yield Block(path, i + 1, code + "\n", marked)
        i = end + 1


ALL = [b for path in FILES for b in blocks(path)]
RUNNABLE = [b for b in ALL if not b.illustrative]


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with FakeBackend(name="docs") as backend:
        yield backend.url


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_doc_block_runs(block: Block, fake_url: str, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    env = {
        **os.environ,
        "GONKA_MUX_FAKE_URL": fake_url,
        "GONKA_MUX_STATE_DIR": str(tmp_path / "state"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("OPENAI_API_KEY", None)
    try:
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id}: still running after {TIMEOUT}s")
    assert result.returncode == 0, (
        f"{block.id} failed (mark it `{MARKER}` on the line before the fence if it is only an "
        f"illustration):\n{result.stderr[-3000:]}"
    )


def test_the_runner_finds_and_classifies_blocks(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "```python\nprint(1)\n```\n\n<!-- illustrative -->\n```python\nawait x\n```\n"
        "```python illustrative\nawait y\n```\n```bash\nls\n```\n",
        encoding="utf-8",
    )
    found = list(blocks(doc))
    assert [(b.line, b.illustrative) for b in found] == [(1, False), (6, True), (9, True)]
    assert found[0].code == "print(1)\n"
    assert RUNNABLE, "no runnable block found in README.md and docs/"
