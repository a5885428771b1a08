"""gonka_mux: one OpenAI-shaped client over many LLM endpoints.

Gonka network participants (signed requests), Gonka brokers and devshard gateways (Bearer keys),
self-hosted vLLM nodes and ordinary providers sit behind one object shaped like the OpenAI client,
which routes each request to the best endpoint and survives the ones that fail.

Importing this package is cheap: the public names below are loaded on first use, so
``import gonka_mux`` does not pay for importing openai.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # core
    "AsyncMultiplexer": "gonka_mux.multiplexer",
    "Multiplexer": "gonka_mux.multiplexer",
    "Endpoint": "gonka_mux.endpoint",
    "RoutingSettings": "gonka_mux.settings",
    "RequestContext": "gonka_mux.context",
    "Extension": "gonka_mux.context",
    "EndpointSource": "gonka_mux.sources",
    "HealthPolicy": "gonka_mux.routing",
    "HedgePolicy": "gonka_mux.routing",
    "RetryBudget": "gonka_mux.routing",
    "ErrorPolicy": "gonka_mux.routing",
    "PowerOfTwoChoices": "gonka_mux.routing",
    "WeightedRandom": "gonka_mux.routing",
    "RoundRobin": "gonka_mux.routing",
    # errors
    "GonkaMuxError": "gonka_mux.errors",
    "ConfigError": "gonka_mux.errors",
    "RateLimitError": "gonka_mux.errors",
    "AllEndpointsFailed": "gonka_mux.errors",
    "AllEndpointsRateLimited": "gonka_mux.errors",
    "AllEndpointsUnauthorized": "gonka_mux.errors",
    "AllEndpointsForbidden": "gonka_mux.errors",
    "InvalidRequestError": "gonka_mux.errors",
    "NoEndpointAvailable": "gonka_mux.errors",
    "ModelNotFound": "gonka_mux.errors",
    "DeadlineExceeded": "gonka_mux.errors",
    "StreamInterrupted": "gonka_mux.errors",
    "ContextLengthExceeded": "gonka_mux.errors",
    "Attempt": "gonka_mux.errors",
    # Gonka network
    "register_gonka_models": "gonka_mux.gonka",
    "aregister_gonka_models": "gonka_mux.gonka",
    "add_gonka_broker": "gonka_mux.gonka",
    "aadd_gonka_broker": "gonka_mux.gonka",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from .context import Extension, RequestContext
    from .endpoint import Endpoint
    from .errors import (
        AllEndpointsFailed,
        AllEndpointsForbidden,
        AllEndpointsRateLimited,
        AllEndpointsUnauthorized,
        Attempt,
        ConfigError,
        ContextLengthExceeded,
        DeadlineExceeded,
        GonkaMuxError,
        InvalidRequestError,
        ModelNotFound,
        NoEndpointAvailable,
        RateLimitError,
        StreamInterrupted,
    )
    from .gonka import (
        aadd_gonka_broker,
        add_gonka_broker,
        aregister_gonka_models,
        register_gonka_models,
    )
    from .multiplexer import AsyncMultiplexer, Multiplexer
    from .routing import (
        ErrorPolicy,
        HealthPolicy,
        HedgePolicy,
        PowerOfTwoChoices,
        RetryBudget,
        RoundRobin,
        WeightedRandom,
    )
    from .settings import RoutingSettings
    from .sources import EndpointSource


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gonka_mux' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
