"""CrewAI offline: telemetry, tracing and the version check are switched off before import."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

# Must run before crewai is imported (it reads some of these at import time).
os.environ.update(
    {
        "CREWAI_DISABLE_TELEMETRY": "true",
        "CREWAI_DISABLE_TRACKING": "true",
        "OTEL_SDK_DISABLED": "true",
        "CREWAI_DISABLE_VERSION_CHECK": "true",
        "CREWAI_TRACING_ENABLED": "false",
        "CREWAI_TESTING": "true",
        "CREWAI_STORAGE_DIR": tempfile.mkdtemp(prefix="gonka-mux-crewai-"),
    }
)
atexit.register(functools.partial(shutil.rmtree, os.environ["CREWAI_STORAGE_DIR"], True))
