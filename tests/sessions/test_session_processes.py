"""Real processes against the persistent backends: concurrent writers on one session, and a
writer SIGKILLed mid-conversation, after which every committed turn is still there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _session_support import StoreFactory

CHILD = str(Path(__file__).with_name("_session_child.py"))


def _spawn(make: StoreFactory, session: str, worker: str, turns: str) -> subprocess.Popen[str]:
    where = make.url if make.kind != "disk" else str(make.path)  # type: ignore[attr-defined]
    args = [make.kind, where, make.prefix, session, worker, turns]  # type: ignore[attr-defined]
    return subprocess.Popen(
        [sys.executable, CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _turns(log: list[dict]) -> list[tuple[str, str]]:
    """The log as (question, answer) pairs; fails if any turn is split or half-written."""
    assert len(log) % 2 == 0, "a half-written turn"
    pairs = [(log[i]["content"], log[i + 1]["content"]) for i in range(0, len(log), 2)]
    for question, answer in pairs:
        assert question.replace("-q", "-r") == answer, (question, answer)
    return pairs


@pytest.mark.slow
async def test_concurrent_processes_lose_no_turn(make_persistent_store: StoreFactory) -> None:
    make = make_persistent_store
    make()  # creates the file / checks the server before the children start
    children = [_spawn(make, "shared", f"w{w}", "40") for w in range(3)]
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    pairs = _turns(await make().load_messages("shared"))
    assert len(pairs) == 120
    for w in range(3):  # each writer's turns are all there, in its order
        mine = [q for q, _ in pairs if q.startswith(f"w{w}-")]
        assert mine == [f"w{w}-q{i}" for i in range(40)]


@pytest.mark.slow
async def test_killed_writer_loses_nothing_committed(make_persistent_store: StoreFactory) -> None:
    make = make_persistent_store
    make()
    child = _spawn(make, "s", "w", "forever")
    assert child.stdout is not None
    committed = -1
    try:
        for line in child.stdout:
            committed = int(line.split()[1])
            if committed >= 60:
                break
        os.kill(child.pid, signal.SIGKILL)  # mid-conversation: it keeps writing until now
    finally:
        child.kill()
        rest, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    # Turns it reported after the line we stopped at (before the kill landed) count too.
    committed = max([committed, *(int(line.split()[1]) for line in rest.splitlines())])
    assert committed >= 60
    pairs = _turns(await make().load_messages("s"))  # a fresh store: what reached the disk
    # Every turn the child reported committed is there. More may follow (lines still in the
    # pipe's read-ahead buffer when we stopped reading, and the one in flight), but each stored
    # turn is whole and in order: no half turn, no gap.
    assert len(pairs) >= committed + 1
    assert pairs == [(f"w-q{i}", f"w-r{i}") for i in range(len(pairs))]
