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

from typing import TYPE_CHECKING

from gonka_mux._exports import lazy_exports

if TYPE_CHECKING:
    from .app import Gateway, create_app
    from .keys import (
        ApiKey,
        KeyNotFoundError,
        KeyStore,
        KeyStoreError,
        PostgresKeyStore,
        open_key_store,
    )
    from .openapi import openapi_document

_EXPORTS = {
    "create_app": ".app",
    "Gateway": ".app",
    "ApiKey": ".keys",
    "KeyStore": ".keys",
    "KeyStoreError": ".keys",
    "KeyNotFoundError": ".keys",
    "PostgresKeyStore": ".keys",
    "open_key_store": ".keys",
    "openapi_document": ".openapi",
}

__all__ = [
    "ApiKey",
    "Gateway",
    "KeyNotFoundError",
    "KeyStore",
    "KeyStoreError",
    "PostgresKeyStore",
    "create_app",
    "open_key_store",
    "openapi_document",
]


# app imports starlette; keys and openapi need nothing beyond gonka_mux.
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, extras={".app": "gateway"})
