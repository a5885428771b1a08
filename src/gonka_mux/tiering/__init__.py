"""Model tiering: route ``model="auto"`` (or a ``tier=`` hint) to a model by rules.

:mod:`gonka_mux.tiering.policy` holds the rules and the policy (see its docstring for the
``[tiering]`` config shape); :mod:`gonka_mux.tiering.feature` plugs it into a Multiplexer.
"""

from __future__ import annotations

from .feature import TIERING_DECISION, TieringFeature
from .policy import *  # noqa: F403
from .policy import __all__ as _policy_all

__all__ = ["TIERING_DECISION", "TieringFeature", *_policy_all]
