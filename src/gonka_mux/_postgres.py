"""PostgreSQL connections shared by the stores that can live on it (psycopg 3, pooled).

A store is put on PostgreSQL by giving a ``postgresql://`` URL where a file path is accepted
(``[metering] path``, ``[jobs] path``, ``[sessions] path``, ``[memory] path``,
``[gateway] database_url``). One pool per URL per process: every
store on the same database shares it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "close_pools",
    "is_postgres_url",
    "redact_url",
    "require_psycopg",
    "sync_pool",
]

log = logging.getLogger("gonka_mux.postgres")

_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(value: object) -> bool:
    """Whether ``value`` names a PostgreSQL database rather than a file."""
    return isinstance(value, str) and value.lower().startswith(_SCHEMES)


def redact_url(url: str) -> str:
    """``url`` without its password, for logs, reprs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def require_psycopg() -> Any:
    """The ``psycopg`` module, or an ImportError that names the extra to install."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "PostgreSQL stores need psycopg 3 and psycopg-pool: pip install 'gonka-mux[postgres]'"
        ) from exc
    return psycopg


_lock = threading.Lock()
_sync_pools: dict[str, Any] = {}


def sync_pool(url: str, *, max_size: int = 10, timeout: float = 10.0) -> Any:
    """The process's shared ``psycopg_pool.ConnectionPool`` for ``url`` (opened on first use)."""
    require_psycopg()
    from psycopg_pool import ConnectionPool

    with _lock:
        pool = _sync_pools.get(url)
        if pool is None or pool.closed:
            pool = ConnectionPool(
                url,
                min_size=1,
                max_size=max_size,
                timeout=timeout,
                kwargs={"autocommit": True},
                name=f"gonka_mux:{redact_url(url)}",
                open=False,
            )
            # Do not wait for the first connection: a store must open while the database is
            # briefly away (its writes are journalled); errors surface on use, typed.
            pool.open(wait=False)
            _sync_pools[url] = pool
        return pool


def close_pools() -> None:
    """Close every sync pool this process opened (tests, interpreter shutdown)."""
    with _lock:
        pools = list(_sync_pools.values())
        _sync_pools.clear()
    for pool in pools:
        try:
            pool.close()
        except Exception:  # pragma: no cover - best effort at shutdown
            log.debug("closing a PostgreSQL pool failed", exc_info=True)
