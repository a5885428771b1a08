"""Cache keys: a hash of the canonical request body, and the rule for what may be cached.

The key is computed on the body as it will be sent (after tiering picked the model and sessions
prepended the stored history: the same question in two different conversations is two different
requests), in a canonical form: keys sorted, compact JSON, the public model name the caller or
tiering chose (not an endpoint's upstream name, so every endpoint of a pool shares entries).
gonka_mux's own keyword arguments (``deadline``, ``session_id``, ...) never reach the body, so
they never split entries. The caller key is part of the key only with ``per_caller=True``.

The canonical text is hashed (SHA-256): a store never holds a prompt, a caller key or anything
else from the request in clear, only the digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

# The body's own encoder (openai's rules for datetimes and pydantic models): the key sees what
# is sent.
from .._validate import _Encoder

__all__ = ["IGNORED_FIELDS", "cache_key", "canonical_body", "is_deterministic"]

#: Body fields that do not change the answer (attribution, retention and routing hints), left
#: out of the key so they do not split entries. Everything else is kept: an unknown field may
#: change the output, and a needless miss is cheaper than a wrong hit.
IGNORED_FIELDS = frozenset(
    {
        "user",
        "metadata",
        "store",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
    }
)

_VERSION = "v1"  # bump when the canonical form changes: old entries then simply miss


_encode = _Encoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
).encode


def canonical_body(kind: str, body: Mapping[str, Any]) -> str:
    """The canonical text of a request body (sorted keys, compact, answer-neutral fields out)."""
    kept = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    return kind + "\n" + _encode(kept)


def cache_key(
    kind: str, body: Mapping[str, Any], *, caller: str | None = None, namespace: str = ""
) -> str:
    """The store key of a request: ``gmx:v1:<kind>:<sha256 hex>``.

    ``caller`` (only when entries are kept per caller) and ``namespace`` go into the digest, so
    a caller key is never readable from the store either.
    """
    digest = hashlib.sha256()
    if namespace:
        digest.update(b"ns\0" + namespace.encode("utf-8", "surrogatepass") + b"\0")
    if caller is not None:
        digest.update(b"caller\0" + caller.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(canonical_body(kind, body).encode("utf-8", "surrogatepass"))
    return f"gmx:{_VERSION}:{kind}:{digest.hexdigest()}"


def is_deterministic(kind: str, body: Mapping[str, Any]) -> bool:
    """Whether the request's own parameters ask for a repeatable answer.

    Embeddings always are. A completion is when it sets ``temperature=0`` or a ``seed`` (the
    provider's promise of repeatability); without either, the caller expects a fresh sample
    on each call and replaying the first one would change the program's meaning.
    """
    if kind == "embeddings":
        return True
    temperature = body.get("temperature")
    if (
        isinstance(temperature, (int, float))
        and not isinstance(temperature, bool)
        and temperature == 0
    ):
        return True
    return body.get("seed") is not None
