"""Gonka account keys: load a secp256k1 private key and derive its ``gonka1...`` address.

A key comes from an explicit argument, the ``GONKA_PRIVATE_KEY`` environment variable (hex, with
or without ``0x``) or a key file holding the same hex text (``GONKA_PRIVATE_KEY_FILE``). The
address is ``bech32("gonka", ripemd160(sha256(compressed_public_key)))``, as the chain derives it.

The secret never appears in a ``repr``, a log line or an exception message: :class:`PrivateKey`
shows only its address, and errors about a bad key describe its shape, never its value.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import struct
from collections.abc import Mapping
from pathlib import Path

import bech32

from .errors import GonkaConfigError

__all__ = [
    "ADDRESS_PREFIX",
    "PrivateKey",
    "address_from_public_key",
    "describe_shape",
    "is_valid_address",
    "load_private_key",
    "public_key_from_secret",
    "requester_address",
    "ripemd160",
    "validate_address",
]

logger = logging.getLogger("gonka_mux.gonka")

ADDRESS_PREFIX = "gonka"
ENV_PRIVATE_KEY = "GONKA_PRIVATE_KEY"
ENV_PRIVATE_KEY_FILE = "GONKA_PRIVATE_KEY_FILE"
ENV_ADDRESS = "GONKA_ADDRESS"

# Order of the secp256k1 group: a private key is an integer in [1, N-1].
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class PrivateKey:
    """A secp256k1 private key. Its ``repr`` shows the derived address, never the secret."""

    __slots__ = ("_address", "_public_key", "_secret")

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, (bytes, bytearray)) or len(secret) != 32:
            raise GonkaConfigError(
                "private_key", "a private key must be exactly 32 bytes (64 hexadecimal characters)"
            )
        if not 0 < int.from_bytes(secret, "big") < SECP256K1_ORDER:
            raise GonkaConfigError(
                "private_key", "the value is not a valid secp256k1 private key (out of range)"
            )
        self._secret = bytes(secret)
        self._public_key: bytes | None = None
        self._address: str | None = None

    @classmethod
    def from_hex(cls, text: str, *, field: str = "private_key") -> PrivateKey:
        """Parse 64 hex characters, optionally prefixed with ``0x`` and surrounded by spaces."""
        if not isinstance(text, str):
            raise GonkaConfigError(field, f"expected a hex string, got {type(text).__name__}")
        cleaned = text.strip()
        if cleaned[:2].lower() == "0x":
            cleaned = cleaned[2:]
        if len(cleaned) != 64:
            raise GonkaConfigError(
                field,
                "not a valid private key: expected 64 hexadecimal characters (32 bytes, optional "
                f"0x prefix), got {len(cleaned)} characters",
            )
        try:
            secret = bytes.fromhex(cleaned)
        except ValueError:
            # Deliberately drop the ValueError: its text can quote part of the secret.
            raise GonkaConfigError(
                field, "not a valid private key: it contains non-hexadecimal characters"
            ) from None
        try:
            return cls(secret)
        except GonkaConfigError as exc:
            raise GonkaConfigError(field, exc.message) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PrivateKey:
        """Read a key file holding the hex key (the first non-empty, non-comment line)."""
        file = Path(path).expanduser()
        field = f"key file {file}"
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise GonkaConfigError(field, "the file does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise GonkaConfigError(field, f"cannot read it ({type(exc).__name__})") from None
        _warn_if_readable_by_others(file)
        lines = [ln.strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if len(lines) != 1:
            raise GonkaConfigError(
                field, "expected exactly one line holding the 64-character hex private key"
            )
        return cls.from_hex(lines[0], field=field)

    @property
    def public_key(self) -> bytes:
        """The 33-byte compressed public key."""
        if self._public_key is None:
            self._public_key = public_key_from_secret(self._secret)
        return self._public_key

    @property
    def address(self) -> str:
        """The ``gonka1...`` account address of this key."""
        if self._address is None:
            self._address = address_from_public_key(self.public_key)
        return self._address

    def secret_bytes(self) -> bytes:
        """The raw 32-byte secret, for a signing backend. Never log or display it."""
        return self._secret

    def __repr__(self) -> str:
        return f"PrivateKey(address={self.address!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivateKey):
            return NotImplemented
        return self._secret == other._secret

    def __hash__(self) -> int:
        return hash(self.public_key)

    def __reduce__(self) -> tuple[object, ...]:
        # Refuse pickling: a pickle would carry the secret to wherever it is written.
        raise TypeError("PrivateKey cannot be pickled; pass the key source (env/file) instead")


def load_private_key(
    value: PrivateKey | str | bytes | None = None,
    *,
    key_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PrivateKey:
    """Load the requester key from ``value``, ``key_file``, ``GONKA_PRIVATE_KEY`` or
    ``GONKA_PRIVATE_KEY_FILE``, in that order. Raises :class:`GonkaConfigError` when none is set.
    """
    env = os.environ if environ is None else environ
    if isinstance(value, PrivateKey):
        return value
    if isinstance(value, (bytes, bytearray)):
        return PrivateKey(bytes(value))
    if value is not None:
        return PrivateKey.from_hex(value)
    if key_file is not None:
        return PrivateKey.from_file(key_file)
    if env.get(ENV_PRIVATE_KEY, "").strip():
        return PrivateKey.from_hex(env[ENV_PRIVATE_KEY], field=ENV_PRIVATE_KEY)
    if env.get(ENV_PRIVATE_KEY_FILE, "").strip():
        return PrivateKey.from_file(env[ENV_PRIVATE_KEY_FILE].strip())
    raise GonkaConfigError(
        "private_key",
        "no Gonka private key given: pass private_key=..., or set GONKA_PRIVATE_KEY (64 hex "
        "characters) or GONKA_PRIVATE_KEY_FILE (a file holding them)",
    )


def requester_address(
    key: PrivateKey,
    address: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The address to send as ``X-Requester-Address``: ``address``, else ``GONKA_ADDRESS``, else
    the key's own address. An override that differs from the key's address is logged, because
    the chain verifies the signature against the account's public key.
    """
    env = os.environ if environ is None else environ
    override = address if address is not None else (env.get(ENV_ADDRESS, "").strip() or None)
    if override is None:
        return key.address
    field = "address" if address is not None else ENV_ADDRESS
    override = validate_address(override, field=field)
    if override != key.address:
        logger.warning(
            "requester address %s differs from the private key's address %s; the chain will "
            "reject signatures unless that account's public key is this key's",
            override,
            key.address,
        )
    return override


def public_key_from_secret(secret: bytes) -> bytes:
    """Compressed public key of ``secret``; coincurve when installed, python-ecdsa otherwise."""
    try:  # optional extra: coincurve ('fast')
        import coincurve
    except ImportError:
        # Lazy: python-ecdsa costs ~45 ms to import; it is needed only without coincurve.
        import ecdsa

        signing_key = ecdsa.SigningKey.from_string(secret, curve=ecdsa.SECP256k1)
        verifying_key = signing_key.get_verifying_key()
        return bytes(verifying_key.to_string("compressed"))  # type: ignore[union-attr]
    return bytes(coincurve.PrivateKey(secret).public_key.format(compressed=True))


def address_from_public_key(public_key: bytes, hrp: str = ADDRESS_PREFIX) -> str:
    """``bech32(hrp, ripemd160(sha256(public_key)))`` for a 33-byte compressed key."""
    if len(public_key) != 33 or public_key[0] not in (2, 3):
        raise GonkaConfigError("public_key", "expected a 33-byte compressed secp256k1 public key")

    digest = ripemd160(hashlib.sha256(public_key).digest())
    words = bech32.convertbits(digest, 8, 5)
    assert words is not None  # 20 bytes always convert
    return str(bech32.bech32_encode(hrp, words))


def is_valid_address(address: str, hrp: str = ADDRESS_PREFIX) -> bool:
    """True when ``address`` is a checksummed bech32 account address with prefix ``hrp``."""
    if not isinstance(address, str) or address.lower() != address:
        return False
    decoded_hrp, words = bech32.bech32_decode(address)
    if decoded_hrp != hrp or words is None:
        return False
    data = bech32.convertbits(words, 5, 8, False)
    return data is not None and len(data) == 20


def describe_shape(value: object) -> str:
    """What ``value`` looks like, without showing it: its type, length and character classes
    (used in errors about values that may be secrets pasted into the wrong place)."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    text = value.strip()
    if not text:
        return "an empty string"
    bare = text[2:] if text[:2].lower() == "0x" else text
    if len(bare) == 64 and all(c in "0123456789abcdefABCDEF" for c in bare):
        return (
            "64 hexadecimal characters, which looks like a PRIVATE KEY: never put a key there "
            "(and if it was shared, move the funds to a new key)"
        )
    classes = []
    if any(c.isdigit() for c in text):
        classes.append("digits")
    if any(c.isalpha() and c.islower() for c in text):
        classes.append("lower-case letters")
    if any(c.isalpha() and c.isupper() for c in text):
        classes.append("upper-case letters")
    if any(not c.isalnum() for c in text):
        classes.append("other characters")
    head = "starting with 'gonka1'" if text.startswith("gonka1") else "not starting with 'gonka1'"
    return f"{len(text)} characters ({', '.join(classes) or 'none'}), {head}"


def validate_address(address: str, *, field: str = "address", hrp: str = ADDRESS_PREFIX) -> str:
    """Return ``address`` stripped, or raise :class:`GonkaConfigError` if it is not valid.

    The error never shows the value (a private key pasted as an address must not reach a log):
    it says what was expected and describes what was given.
    """
    cleaned = address.strip() if isinstance(address, str) else address
    if not is_valid_address(cleaned, hrp):
        raise GonkaConfigError(
            field,
            f"expected a {hrp}1... bech32 account address (the prefix {hrp}1 and 38 lower-case "
            f"letters and digits, 44 characters in all, with a valid checksum); got "
            f"{describe_shape(address)}. Check for typos.",
        )
    return cleaned


def ripemd160(data: bytes) -> bytes:
    """RIPEMD-160 of ``data``; hashlib's when OpenSSL provides it, a pure-Python one otherwise."""
    try:
        return hashlib.new("ripemd160", data).digest()
    except ValueError:  # OpenSSL 3 moved RIPEMD-160 to the legacy provider
        return ripemd160_pure(data)


def _warn_if_readable_by_others(file: Path) -> None:
    try:
        mode = file.stat().st_mode
    except OSError:
        return
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "key file %s is readable by other users; restrict it with `chmod 600 %s`", file, file
        )


# --- pure-Python RIPEMD-160 (ISO/IEC 10118-3), used only when hashlib lacks it ---------------

_R_LEFT = (
    *range(16),
    *(7, 4, 13, 1, 10, 6, 15, 3, 12, 0, 9, 5, 2, 14, 11, 8),
    *(3, 10, 14, 4, 9, 15, 8, 1, 2, 7, 0, 6, 13, 11, 5, 12),
    *(1, 9, 11, 10, 0, 8, 12, 4, 13, 3, 7, 15, 14, 5, 6, 2),
    *(4, 0, 5, 9, 7, 12, 2, 10, 14, 1, 3, 8, 11, 6, 15, 13),
)
_R_RIGHT = (
    *(5, 14, 7, 0, 9, 2, 11, 4, 13, 6, 15, 8, 1, 10, 3, 12),
    *(6, 11, 3, 7, 0, 13, 5, 10, 14, 15, 8, 12, 4, 9, 1, 2),
    *(15, 5, 1, 3, 7, 14, 6, 9, 11, 8, 12, 2, 10, 0, 4, 13),
    *(8, 6, 4, 1, 3, 11, 15, 0, 5, 12, 2, 13, 9, 7, 10, 14),
    *(12, 15, 10, 4, 1, 5, 8, 7, 6, 2, 13, 14, 0, 3, 9, 11),
)
_S_LEFT = (
    *(11, 14, 15, 12, 5, 8, 7, 9, 11, 13, 14, 15, 6, 7, 9, 8),
    *(7, 6, 8, 13, 11, 9, 7, 15, 7, 12, 15, 9, 11, 7, 13, 12),
    *(11, 13, 6, 7, 14, 9, 13, 15, 14, 8, 13, 6, 5, 12, 7, 5),
    *(11, 12, 14, 15, 14, 15, 9, 8, 9, 14, 5, 6, 8, 6, 5, 12),
    *(9, 15, 5, 11, 6, 8, 13, 12, 5, 12, 13, 14, 11, 8, 5, 6),
)
_S_RIGHT = (
    *(8, 9, 9, 11, 13, 15, 15, 5, 7, 7, 8, 11, 14, 14, 12, 6),
    *(9, 13, 15, 7, 12, 8, 9, 11, 7, 7, 12, 7, 6, 15, 13, 11),
    *(9, 7, 15, 11, 8, 6, 6, 14, 12, 13, 5, 14, 13, 13, 7, 5),
    *(15, 5, 8, 11, 14, 14, 6, 14, 6, 9, 12, 9, 12, 5, 15, 8),
    *(8, 5, 12, 9, 12, 5, 14, 6, 8, 13, 6, 5, 15, 13, 11, 11),
)
_K_LEFT = (0x00000000, 0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xA953FD4E)
_K_RIGHT = (0x50A28BE6, 0x5C4DD124, 0x6D703EF3, 0x7A6D76E9, 0x00000000)
_MASK = 0xFFFFFFFF


def _f(round_: int, x: int, y: int, z: int) -> int:
    if round_ == 0:
        return x ^ y ^ z
    if round_ == 1:
        return (x & y) | (~x & z)
    if round_ == 2:
        return (x | ~y) ^ z
    if round_ == 3:
        return (x & z) | (y & ~z)
    return x ^ (y | ~z)


def _rol(value: int, shift: int) -> int:
    value &= _MASK
    return ((value << shift) | (value >> (32 - shift))) & _MASK


def ripemd160_pure(data: bytes) -> bytes:
    """Pure-Python RIPEMD-160 (slow; only for the address, computed once per key)."""
    h = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0]
    padded = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", 8 * len(data))
    for offset in range(0, len(padded), 64):
        x = struct.unpack("<16L", padded[offset : offset + 64])
        al, bl, cl, dl, el = h
        ar, br, cr, dr, er = h
        for j in range(80):
            round_ = j >> 4
            t = _rol(al + _f(round_, bl, cl, dl) + x[_R_LEFT[j]] + _K_LEFT[round_], _S_LEFT[j])
            al, el, dl, cl, bl = el, dl, _rol(cl, 10), bl, (t + el) & _MASK
            t = _rol(
                ar + _f(4 - round_, br, cr, dr) + x[_R_RIGHT[j]] + _K_RIGHT[round_], _S_RIGHT[j]
            )
            ar, er, dr, cr, br = er, dr, _rol(cr, 10), br, (t + er) & _MASK
        t = (h[1] + cl + dr) & _MASK
        h[1] = (h[2] + dl + er) & _MASK
        h[2] = (h[3] + el + ar) & _MASK
        h[3] = (h[4] + al + br) & _MASK
        h[4] = (h[0] + bl + cr) & _MASK
        h[0] = t
    return struct.pack("<5L", *h)
