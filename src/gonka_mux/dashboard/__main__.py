"""``python -m gonka_mux.dashboard usage ...`` (the same as ``gonka-mux usage ...``)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
