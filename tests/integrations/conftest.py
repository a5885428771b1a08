"""Framework integration tests: offline (socket guard), CrewAI collected only where installed.

CrewAI pins openai<3, so it lives in its own CI leg (``.ci/legs/crewai.sh``) and is not installed
in the main environment: its directory is left out of collection there (not skipped: the leg runs
it). LangChain/LangGraph are in the main environment's ``langchain`` extra and always run.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import sys

import pytest

from . import _netguard

collect_ignore_glob: list[str] = []
if importlib.util.find_spec("crewai") is None:
    collect_ignore_glob.append("crewai/*")

# Frameworks must not find a real key and go to a hosted API by mistake.
os.environ.pop("OPENAI_API_KEY", None)
_netguard.install()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _netguard.attempts:
        sys.stderr.write(f"\nblocked network attempts during tests: {_netguard.attempts}\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@atexit.register
def _late_attempts() -> None:  # telemetry exporters flush at interpreter exit
    if _netguard.attempts:
        sys.stderr.write(f"blocked network attempts (at exit): {_netguard.attempts}\n")
        os._exit(1)
