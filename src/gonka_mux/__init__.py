"""gonka_mux: one OpenAI-shaped client over many LLM endpoints.

Gonka network participants (signed requests), Gonka brokers and devshard gateways (Bearer keys),
self-hosted vLLM nodes and ordinary providers sit behind one object shaped like the OpenAI client,
which routes each request to the best endpoint and survives the ones that fail.

Importing this package is cheap: the public names below are loaded on first use, so
``import gonka_mux`` does not pay for importing openai.
"""

from __future__ import annotations

from ._exports import lazy_exports

# Not `from typing import TYPE_CHECKING`: typing costs ~8 ms, the rest of `import gonka_mux` well
# under 1 ms. Type checkers treat a name called TYPE_CHECKING as true.
TYPE_CHECKING = False

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # core
    "AsyncMultiplexer": ".multiplexer",
    "Multiplexer": ".multiplexer",
    "Endpoint": ".endpoint",
    "RoutingSettings": ".settings",
    "RequestContext": ".context",
    "Extension": ".context",
    "EndpointSource": ".sources",
    "HealthPolicy": ".routing",
    "HedgePolicy": ".routing",
    "RetryBudget": ".routing",
    "ErrorPolicy": ".routing",
    "PowerOfTwoChoices": ".routing",
    "WeightedRandom": ".routing",
    "RoundRobin": ".routing",
    # errors
    "GonkaMuxError": ".errors",
    "ConfigError": ".errors",
    "StoreUnavailableError": ".errors",
    "RateLimitError": ".errors",
    "AllEndpointsFailed": ".errors",
    "AllEndpointsRateLimited": ".errors",
    "AllEndpointsUnauthorized": ".errors",
    "AllEndpointsForbidden": ".errors",
    "InvalidRequestError": ".errors",
    "NoEndpointAvailable": ".errors",
    "ModelNotFound": ".errors",
    "DeadlineExceeded": ".errors",
    "StreamInterrupted": ".errors",
    "ContextLengthExceeded": ".errors",
    "Attempt": ".errors",
    # Gonka network
    "register_gonka_models": ".gonka",
    "aregister_gonka_models": ".gonka",
    "add_gonka_broker": ".gonka",
    "aadd_gonka_broker": ".gonka",
}

__all__ = [  # a literal list, so type checkers see the re-exports (tests check it matches)
    "AllEndpointsFailed",
    "AllEndpointsForbidden",
    "AllEndpointsRateLimited",
    "AllEndpointsUnauthorized",
    "AsyncMultiplexer",
    "Attempt",
    "ConfigError",
    "ContextLengthExceeded",
    "DeadlineExceeded",
    "Endpoint",
    "EndpointSource",
    "ErrorPolicy",
    "Extension",
    "GonkaMuxError",
    "HealthPolicy",
    "HedgePolicy",
    "InvalidRequestError",
    "ModelNotFound",
    "Multiplexer",
    "NoEndpointAvailable",
    "PowerOfTwoChoices",
    "RateLimitError",
    "RequestContext",
    "RetryBudget",
    "RoundRobin",
    "RoutingSettings",
    "StoreUnavailableError",
    "StreamInterrupted",
    "WeightedRandom",
    "__version__",
    "aadd_gonka_broker",
    "add_gonka_broker",
    "aregister_gonka_models",
    "register_gonka_models",
]

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
        StoreUnavailableError,
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


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
