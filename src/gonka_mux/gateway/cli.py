"""``gonka-mux gateway``: serve a Multiplexer over OpenAI's HTTP API with uvicorn.

::

    gonka-mux gateway --config gonka-mux.toml [--host 0.0.0.0] [--port 9000]
    gonka-mux gateway keys create --name my-agent --tier pro     # prints the key once
    gonka-mux gateway keys list | revoke KEY_ID | set-tier KEY_ID TIER

Settings, first found wins: the flag, the environment (``GONKA_GATEWAY_HOST``,
``GONKA_GATEWAY_PORT``), the config file's ``[gateway]`` table, the default. The admin API key is
``GONKA_ADMIN_API_KEY``; when it is unset, one is generated on the first start, printed once and
stored hashed next to the API keys (``--new-admin-key`` replaces it).

``[gateway]`` keys: ``host``, ``port``, ``keys_db``, ``database_url``, ``max_body_bytes``,
``allow_private_webhooks``. ``database_url`` (or ``GONKA_GATEWAY_DATABASE_URL``), a
``postgresql://`` URL, puts the API keys, and the usage records and jobs unless their sections
name a ``path`` of their own, in one PostgreSQL database: replicas given the same URL share
them (see "Running replicas" in docs/gateway.md). Limits, tiers, metering, sessions, memory
and webhooks come from their own sections of the same file (``[limits]``, ``[metering]``,
``[sessions]``, ``[memory]``, ``[webhooks]``). A gateway always has them all: without
``[limits]`` every key gets the ``default`` tier (``GONKA_DEFAULT_RPM`` /
``GONKA_DEFAULT_TPM``), and the others default to files in the state directory
(``GONKA_MUX_STATE_DIR``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gonka_mux._exceptions import ConfigError
from gonka_mux._paths import state_dir

# Checked without importing (importing starlette and uvicorn is slow): `gonka-mux` builds every
# subcommand's parser on each run, and without the extra this module must fail to import so the
# main CLI can say which extra to install.
for _dependency in ("starlette", "uvicorn"):
    if importlib.util.find_spec(_dependency) is None:
        raise ImportError(f"No module named {_dependency!r}", name=_dependency)

__all__ = ["register"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_KEEP_ALIVE = 5.0
DEFAULT_MAX_CONNECTIONS = 1024
MIN_ADMIN_KEY_CHARS = 32
_GATEWAY_KEYS = {
    "host",
    "port",
    "keys_db",
    "database_url",
    "max_body_bytes",
    "allow_private_webhooks",
    "header_timeout",
    "body_timeout",
    "keep_alive_timeout",
    "max_connections",
    "memory_quota_bytes",
    "max_memory_entry_bytes",
}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_size(value: Any, key: str) -> int:
    """A byte count from a config value: an integer, or a string such as ``"16MiB"``,
    ``"16MB"`` (decimal) or ``"4096"``. Raises :class:`ConfigError` otherwise."""
    import re

    expected = "a byte count such as 16777216, '16MiB' or '16MB'"
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise ConfigError(f"got {value!r}", key=key, expected=expected)
        number = int(float(match.group(1)) * _SIZE_UNITS[unit])
    else:
        raise ConfigError(f"got {value!r}", key=key, expected=expected)
    if number < 1:
        raise ConfigError(f"got {value!r}", key=key, expected="a positive byte count")
    return number


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"got {value!r}", key=key, expected="true or false (a TOML boolean)")
    return value


def _seconds(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"got {value!r}", key=key, expected="a number of seconds > 0")
    return float(value)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"got {value!r}", key=key, expected="an integer >= 1")
    return value


def check_admin_key(value: str) -> None:
    """Refuse an admin key too short or too uniform to resist guessing (at least 32
    characters, at least 16 different ones: e.g. ``openssl rand -hex 32``)."""
    if len(value) < MIN_ADMIN_KEY_CHARS or len(set(value)) < 16:
        raise ConfigError(
            "GONKA_ADMIN_API_KEY is too weak: use at least 32 random bytes, e.g. "
            "`openssl rand -hex 32` or "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
            key="GONKA_ADMIN_API_KEY",
        )


def register(subparsers: Any) -> None:
    """Add ``gateway`` (and ``gateway keys ...``) to the ``gonka-mux`` command line."""
    p = subparsers.add_parser(
        "gateway",
        help="serve the Multiplexer over OpenAI's HTTP API (API keys, limits, metering)",
        description="Serve a Multiplexer built from --config over an OpenAI-compatible HTTP API "
        "with API keys, per-key rate limits, metering, sessions, memory, background jobs and an "
        "admin API. See docs/gateway.md.",
    )
    p.add_argument("--config", help="the gonka-mux TOML file (endpoints, limits, [gateway])")
    p.add_argument("--host", help=f"bind address (GONKA_GATEWAY_HOST, default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, help=f"port (GONKA_GATEWAY_PORT, default {DEFAULT_PORT})")
    p.add_argument("--keys-db", help="API key database (default: the state directory)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.add_argument(
        "--http",
        choices=["auto", "httptools", "h11"],
        default="auto",
        help="HTTP parser (default auto: httptools when installed, as the gateway extra does)",
    )
    p.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop (default auto: uvloop when installed, as the gateway extra does)",
    )
    p.add_argument(
        "--new-admin-key",
        action="store_true",
        help="generate a new admin key even if one was generated before (printed once)",
    )
    p.set_defaults(func=_serve)
    sub = p.add_subparsers(dest="gateway_command", metavar="{keys}")
    keys = sub.add_parser("keys", help="create, list, revoke API keys or change their tier")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", dest="keys_config", help="the TOML file ([gateway].keys_db, [limits] tiers)"
    )
    common.add_argument("--keys-db", dest="keys_keys_db", help="API key database")
    actions = keys.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make a key (printed once)", parents=[common])
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--tier", default="default", help="rate-limit tier (default 'default')")
    actions.add_parser("list", help="list keys (never their secrets)", parents=[common])
    revoke = actions.add_parser("revoke", help="revoke a key", parents=[common])
    revoke.add_argument("key_id")
    set_tier = actions.add_parser("set-tier", help="change a key's tier", parents=[common])
    set_tier.add_argument("key_id")
    set_tier.add_argument("tier")
    keys.set_defaults(func=_keys)


def _fail(message: str) -> int:
    print(f"gonka-mux gateway: {message}", file=sys.stderr)
    return 2


def _gateway_section(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    section = config.get("gateway") or {}
    if not isinstance(section, Mapping):
        raise ConfigError("must be a table", source=source, key="gateway")
    unknown = sorted(set(section) - _GATEWAY_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)}",
            source=source,
            key="gateway",
            expected="one of " + ", ".join(sorted(_GATEWAY_KEYS)),
        )
    return dict(section)


def _state_path(name: str) -> Path:
    return state_dir() / name


def _database_url(section: Mapping[str, Any], source: str = "<env>") -> str | None:
    """``GONKA_GATEWAY_DATABASE_URL`` or ``[gateway] database_url``: a ``postgresql://`` URL,
    checked here (a typo must not silently fall back to per-process SQLite). Error messages show
    the URL without its password."""
    from gonka_mux._postgres import is_postgres_url, redact_url

    from_env = os.environ.get("GONKA_GATEWAY_DATABASE_URL")
    value = from_env if from_env else section.get("database_url")
    key = "GONKA_GATEWAY_DATABASE_URL" if from_env else "gateway.database_url"
    if value is None:
        return None
    expected = "a postgresql:// URL, e.g. postgresql://gonka:PASSWORD@db:5432/gonka"
    if not isinstance(value, str):
        kind = type(value).__name__
        raise ConfigError(f"got a {kind}", source=source, key=key, expected=expected)
    if not is_postgres_url(value):
        # Not a URL we understand: show only its scheme, in case a password is in it.
        scheme = value.split("://", 1)[0] if "://" in value else "no scheme"
        raise ConfigError(f"got a URL with {scheme!r}", source=source, key=key, expected=expected)
    if "keys_db" in section:
        raise ConfigError(
            f"both keys_db and {key} ({redact_url(value)}) are set",
            source=source,
            key="gateway.keys_db",
            expected="one of them: database_url also holds the keys",
        )
    return value


def _keys_db(flag: str | None, section: Mapping[str, Any], database_url: str | None = None) -> str:
    return str(
        flag or database_url or section.get("keys_db") or _state_path("gateway-keys.sqlite3")
    )


def _share_database(config: Mapping[str, Any], url: str) -> dict[str, Any]:
    """``config`` with usage records (``[metering]``) and jobs (``[webhooks]``) on the
    gateway's database, unless their sections choose a store of their own: replicas must
    share them too, or usage is split across hosts and a job dies with its replica."""
    shared = dict(config)
    metering = shared.get("metering", {})
    # A section that is not a table is left as it is: the feature's own check refuses it.
    if (
        isinstance(metering, Mapping)
        and "path" not in metering
        and metering.get("store", "sqlite") == "sqlite"
    ):
        shared["metering"] = {**metering, "path": url}
    webhooks = shared.get("webhooks", {})
    if isinstance(webhooks, Mapping) and "path" not in webhooks:
        shared["webhooks"] = {**webhooks, "path": url}
    return shared


def _shared_jobs(config: Mapping[str, Any]) -> bool:
    """Whether ``[webhooks]`` puts the jobs on a database other processes share."""
    from gonka_mux._postgres import is_postgres_url

    webhooks = config.get("webhooks")
    return isinstance(webhooks, Mapping) and is_postgres_url(webhooks.get("path"))


def _setting(flag: Any, env: str, section: Mapping[str, Any], name: str, default: Any) -> Any:
    if flag is not None:
        return flag
    if os.environ.get(env):
        return os.environ[env]
    return section.get(name, default)


def _read_config(path: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the whole config, its [gateway] table); empty without a file."""
    if path is None:
        return {}, {}
    # Lazy: gonka_mux.config adds ~16 ms to every `gonka-mux` command (each run builds this parser).
    from gonka_mux.config import load_config

    data, source = load_config(path)
    return data, _gateway_section(data, source)


def _check_tier(config: Mapping[str, Any], tier: str) -> None:
    """Refuse a tier the config's [limits] does not define (no config: any name goes)."""
    if not config:
        return
    # Lazy: gonka_mux.limits adds ~24 ms (asyncio) to every `gonka-mux` command.
    from gonka_mux.limits import LimitsConfig

    limits = config.get("limits")
    if isinstance(limits, Mapping):
        # where the limiter keeps its state is the limits feature's business, not a tier's
        limits = {k: v for k, v in limits.items() if k not in ("backend", "path", "redis_url")}
    tiers = LimitsConfig.from_dict(limits).tiers
    if tier not in tiers:
        raise ConfigError(
            f"unknown tier {tier!r}", key="tier", expected="one of " + ", ".join(sorted(tiers))
        )


def _keys(args: argparse.Namespace) -> int:
    # Lazy: the key store (hashlib, hmac, secrets) adds ~4 ms to every `gonka-mux` command.
    from gonka_mux._exceptions import StoreUnavailableError

    from .keys import KeyNotFoundError, KeyStoreError, open_key_store

    try:
        config, section = _read_config(args.keys_config or args.config)
        if args.keys_action in ("create", "set-tier"):
            _check_tier(config, args.tier)
    except ConfigError as exc:
        return _fail(str(exc))
    try:
        database_url = _database_url(section, args.keys_config or args.config or "<env>")
        store = open_key_store(_keys_db(args.keys_keys_db or args.keys_db, section, database_url))
    except (ConfigError, StoreUnavailableError) as exc:
        return _fail(str(exc))
    try:
        if args.keys_action == "create":
            record, plaintext = store.create(name=args.name, tier=args.tier)
            print(f"id:   {record.id}\ntier: {record.tier}\nkey:  {plaintext}")
            print("The key is shown only now; store it safely.", file=sys.stderr)
        elif args.keys_action == "list":
            for key in store.list():
                state = "active" if key.active else "revoked"
                print(f"{key.id}  {key.tier:<12} {state:<8} {key.name}")
        elif args.keys_action == "revoke":
            print(f"revoked {store.revoke(args.key_id).id}")
        else:
            record = store.set_tier(args.key_id, args.tier)
            print(f"{record.id} tier {record.tier}")
    except (KeyNotFoundError, KeyStoreError, StoreUnavailableError) as exc:
        return _fail(str(exc).strip("'\""))
    finally:
        store.close()
    return 0


def _admin_key(store: Any, new: bool) -> str | None:
    """The admin key to use; generated (and printed once) when none is set or stored."""
    from_env = os.environ.get("GONKA_ADMIN_API_KEY")
    if from_env is not None:
        check_admin_key(from_env)
        return from_env
    if store.admin_key_hash() is not None and not new:
        print(
            "gonka-mux gateway: admin API key: the one generated on an earlier start (stored "
            f"hashed in {store.path}); set GONKA_ADMIN_API_KEY or pass --new-admin-key to "
            "replace it.",
            file=sys.stderr,
        )
        return None  # the app checks against the stored hash
    plaintext = store.generate_admin_key()
    print(
        "gonka-mux gateway: generated an admin API key; it is shown only now and stored "
        f"hashed in {store.path}:\n\n    {plaintext}\n",
        file=sys.stderr,
    )
    return plaintext


def _enable_defaults(mux: Any, database_url: str | None = None) -> None:
    """Turn on what a gateway always offers and the config left off."""
    if getattr(mux, "limiter", None) is None:
        mux.enable_limits(None)
    if getattr(mux, "meter", None) is None:
        if database_url is not None:
            from gonka_mux.metering.stores import open_usage_store

            mux.enable_metering(open_usage_store(database_url))
        else:
            mux.enable_metering()
    if getattr(mux, "sessions", None) is None:
        mux.enable_sessions()
    if getattr(mux, "memory", None) is None:
        mux.enable_memory()


def _secure_state_dir() -> None:
    """State files readable by this user only: files 0600 in a 0700 directory (the umask
    covers every store the process opens; files from an older version are tightened)."""
    os.umask(0o077)
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        directory.chmod(0o700)
        for path in directory.iterdir():
            if path.is_file() and not path.is_symlink():
                path.chmod(0o600)
    except OSError:  # not ours to change (a shared directory): the umask still applies
        pass


def _serve(args: argparse.Namespace) -> int:
    # optional extra: gateway (uvicorn, and starlette under .app). Importing them and the
    # Multiplexer (openai) takes ~0.5 s, which no other `gonka-mux` command should pay.
    import uvicorn

    from gonka_mux._exceptions import StoreUnavailableError
    from gonka_mux.config import load_config
    from gonka_mux.multiplexer import AsyncMultiplexer

    from .app import DEFAULT_MAX_BODY, create_app
    from .keys import open_key_store

    if args.config is None:
        return _fail(
            "--config FILE is required: it lists the endpoints to serve (see "
            "docs/configuration.md and docs/gateway.md)"
        )
    try:
        data, source = load_config(args.config)
        section = _gateway_section(data, source)
        database_url = _database_url(section, source)
        if database_url is None:
            mux = AsyncMultiplexer.from_config(args.config)
        else:
            data = _share_database(data, database_url)
            try:
                mux = AsyncMultiplexer.from_config(data)
            except ConfigError as exc:  # built from a dict: name the file, as without the URL
                raise ConfigError(str(exc).replace("<dict>", source, 1)) from None
            mux.config_source = source  # type: ignore[attr-defined]
        if _shared_jobs(data):
            # Jobs a replica claimed and then died with are taken over by a running job runner:
            # every replica runs one from the start, not only after its first job request.
            mux.on_start(mux.start_jobs)
        host = str(_setting(args.host, "GONKA_GATEWAY_HOST", section, "host", DEFAULT_HOST))
        port_text = _setting(args.port, "GONKA_GATEWAY_PORT", section, "port", DEFAULT_PORT)
        try:
            port = int(port_text)
            if not 0 <= port <= 65535:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(
                f"invalid port {port_text!r}", key="gateway.port", expected="0..65535"
            ) from None
        max_body = parse_size(
            section.get("max_body_bytes", DEFAULT_MAX_BODY), "gateway.max_body_bytes"
        )
        allow_private = _bool(
            section.get("allow_private_webhooks", False), "gateway.allow_private_webhooks"
        )
        header_timeout = _seconds(
            section.get("header_timeout", DEFAULT_HEADER_TIMEOUT), "gateway.header_timeout"
        )
        body_timeout = _seconds(
            section.get("body_timeout", DEFAULT_BODY_TIMEOUT), "gateway.body_timeout"
        )
        keep_alive = _seconds(
            section.get("keep_alive_timeout", DEFAULT_KEEP_ALIVE), "gateway.keep_alive_timeout"
        )
        max_connections = _positive_int(
            section.get("max_connections", DEFAULT_MAX_CONNECTIONS), "gateway.max_connections"
        )
        memory_options: dict[str, int] = {}
        for name in ("memory_quota_bytes", "max_memory_entry_bytes"):
            if name in section:
                memory_options[name] = parse_size(section[name], f"gateway.{name}")
        from_env = os.environ.get("GONKA_ADMIN_API_KEY")
        if from_env is not None:
            check_admin_key(from_env)
        _secure_state_dir()
        _enable_defaults(mux, database_url)
        store = open_key_store(_keys_db(args.keys_db, section, database_url))
        admin_key = _admin_key(store, args.new_admin_key)
    except (ConfigError, StoreUnavailableError) as exc:
        return _fail(str(exc))
    app = create_app(
        mux,
        keys=store,
        admin_key=admin_key,
        max_body_bytes=max_body,
        allow_private_webhooks=allow_private,
        body_timeout=body_timeout,
        close_mux=True,
        **memory_options,
    )
    from .server import header_timeout_protocol

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=args.log_level,
        http=getattr(args, "http", "auto"),
        loop=getattr(args, "loop", "auto"),
        lifespan="on",
        timeout_keep_alive=keep_alive,
        limit_concurrency=max_connections,
        server_header=False,
    )
    config.load()
    config.http_protocol_class = header_timeout_protocol(config.http_protocol_class, header_timeout)
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        store.close()
    return 0
