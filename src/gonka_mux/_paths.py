"""Where gonka_mux keeps its state files (usage, rate limits, sessions, memory, jobs, keys)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["state_dir"]


def state_dir() -> Path:
    """The state directory: ``$GONKA_MUX_STATE_DIR``, else ``$XDG_STATE_HOME/gonka_mux``, else
    ``~/.local/state/gonka_mux``.

    Read on each call (never at import) so tests and users can change the environment; the
    directory is not created here, only by the store that writes into it.
    """
    explicit = os.environ.get("GONKA_MUX_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "gonka_mux"
    return Path.home() / ".local" / "state" / "gonka_mux"
