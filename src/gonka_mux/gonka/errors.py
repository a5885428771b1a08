"""Errors of the Gonka protocol layer (keys, signing, discovery, proofs, configuration).

These are plain exceptions, not HTTP-shaped openai errors: they describe a local failure (a bad
key, an unreachable discovery source, a proof that does not verify). Messages say what to do next
and never contain a private key.

They derive from :class:`GonkaError`, itself a ``gonka_mux.errors.GonkaMuxError``;
:class:`GonkaConfigError` is also a ``gonka_mux.errors.ConfigError`` (a ``ValueError``). The
bases come from ``gonka_mux._exceptions`` so that this module does not import openai.
"""

from __future__ import annotations

from gonka_mux._exceptions import ConfigError, GonkaMuxError

__all__ = [
    "GonkaConfigError",
    "GonkaDiscoveryError",
    "GonkaError",
    "GonkaNoParticipantsError",
    "GonkaPayloadError",
    "GonkaProofVerificationError",
    "GonkaSigningError",
]


class GonkaError(GonkaMuxError):
    """Base class of every error raised by the Gonka protocol layer."""


class GonkaConfigError(GonkaError, ConfigError):
    """A Gonka setting (``field``: an argument, an environment variable or a file) is missing
    or invalid; ``message`` says what is accepted."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        source = "<env>" if field.startswith("GONKA_") else None
        ConfigError.__init__(self, message, source=source, key=field)


class GonkaPayloadError(GonkaError, ValueError):
    """A Gonka JSON payload does not have the documented shape (``what`` names the field)."""

    def __init__(self, what: str, message: str) -> None:
        self.what = what
        super().__init__(f"unexpected Gonka payload: {what}: {message}")


class GonkaSigningError(GonkaError):
    """A request could not be signed (for example its body is a stream that cannot be read)."""


class GonkaDiscoveryError(GonkaError):
    """A discovery source could not be read or answered something unusable.

    ``source_url`` is the source (or the last one tried), ``status_code`` the HTTP status when
    there was a response, ``cause`` the underlying exception or a short reason, and ``attempts``
    one ``(source_url, reason)`` pair per source tried when several were.
    """

    def __init__(
        self,
        source_url: str,
        status_code: int | None = None,
        cause: BaseException | str | None = None,
        *,
        attempts: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.source_url = source_url
        self.status_code = status_code
        self.cause = cause
        self.attempts = attempts
        if len(attempts) > 1:
            tried = "; ".join(f"{url}: {reason}" for url, reason in attempts)
            message = f"every discovery source failed ({tried})"
        else:
            detail = f"HTTP {status_code}" if status_code is not None else "no usable response"
            if cause is not None:
                detail += f": {_describe(cause)}"
            message = f"discovery from {source_url} failed ({detail})"
        super().__init__(
            message + ". Check the source URL (a Gonka node base URL such as "
            "http://host:8000, or file:///path/participants.json), or add more sources."
        )


class GonkaNoParticipantsError(GonkaError):
    """Discovery succeeded but left no usable participant (all excluded or not allowlisted)."""

    def __init__(self, epoch: int | str | None, source_url: str, reason: str = "") -> None:
        self.epoch = epoch
        self.source_url = source_url
        self.reason = reason
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"no usable Gonka participant in epoch {epoch} from {source_url}{why}. "
            "Try another source URL, or configure endpoints explicitly (GONKA_ENDPOINTS)."
        )


class GonkaProofVerificationError(GonkaError):
    """The ICS23 proof attached to a participants payload did not verify.

    ``expected_hash`` and ``computed_hash`` are hex strings (empty when not applicable) and
    ``proof_type`` names the step that failed (``ics23:iavl``, ``ics23:simple``, ``app_hash``,
    ``participants``, ``payload``).
    """

    def __init__(
        self,
        message: str,
        *,
        expected_hash: str = "",
        computed_hash: str = "",
        proof_type: str = "",
    ) -> None:
        self.expected_hash = expected_hash
        self.computed_hash = computed_hash
        self.proof_type = proof_type
        detail = ""
        if expected_hash or computed_hash:
            detail = f" (expected {expected_hash or '?'}, computed {computed_hash or '?'})"
        super().__init__(
            f"participant list proof verification failed at {proof_type or 'proof'}: "
            f"{message}{detail}. The source may be faulty or malicious: use another source "
            "URL, or turn verification off (GONKA_VERIFY_PROOF=0) if you trust it."
        )


def _describe(cause: BaseException | str) -> str:
    if isinstance(cause, BaseException):
        text = str(cause)
        return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    return cause
