"""The optional HTTP gateway: the Multiplexer behind OpenAI's API, for agents not written in Python.

Needs the ``gateway`` extra (``pip install 'gonka-mux[gateway]'``: starlette and uvicorn)::

    from gonka_mux import AsyncMultiplexer
    from gonka_mux.gateway import KeyStore, create_app

    mux = AsyncMultiplexer.from_config("gonka-mux.toml")
    keys = KeyStore("gateway-keys.sqlite3")
    app = create_app(mux, keys=keys, admin_key=os.environ["GONKA_ADMIN_API_KEY"])
    # serve `app` with any ASGI server, or run `gonka-mux gateway --config gonka-mux.toml`

Names load on first use, so importing this package costs nothing until one is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Gateway, create_app
    from .keys import ApiKey, KeyNotFoundError, KeyStore, KeyStoreError
    from .openapi import openapi_document
    from .services import CallerAccounting

_EXPORTS = {
    "create_app": "app",
    "Gateway": "app",
    "ApiKey": "keys",
    "KeyStore": "keys",
    "KeyStoreError": "keys",
    "KeyNotFoundError": "keys",
    "openapi_document": "openapi",
    "CallerAccounting": "services",
}

__all__ = [
    "ApiKey",
    "CallerAccounting",
    "Gateway",
    "KeyNotFoundError",
    "KeyStore",
    "KeyStoreError",
    "create_app",
    "openapi_document",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gonka_mux.gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
