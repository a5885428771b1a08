"""Keys and addresses: loading, bech32 addresses, RIPEMD-160, and keeping the secret secret."""

from __future__ import annotations

import base64
import hashlib
import logging
import pickle
from typing import Any

import pytest
from _gonka_support import REQUESTER_KEY
from hypothesis import given, settings
from hypothesis import strategies as st

from gonka_mux.gonka.config import GonkaConfig
from gonka_mux.gonka.errors import GonkaConfigError
from gonka_mux.gonka.keys import (
    PrivateKey,
    address_from_public_key,
    is_valid_address,
    load_private_key,
    requester_address,
    ripemd160,
    ripemd160_pure,
    validate_address,
)
from gonka_mux.gonka.signing import GonkaAuth, RequestSigner

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def secret_forms(hex_key: str) -> list[str]:
    """Every way a secret could leak into text."""
    raw = bytes.fromhex(hex_key)
    return [
        hex_key.lower(),
        hex_key.upper(),
        hex_key[:16].lower(),  # even a prefix is a leak
        base64.b64encode(raw).decode(),
        repr(raw),
    ]


def assert_no_secret(text: str, hex_key: str = REQUESTER_KEY) -> None:
    for form in secret_forms(hex_key):
        assert form not in text, f"secret leaked as {form!r} in {text!r}"


# --- RIPEMD-160 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "digest"),
    [
        (b"", "9c1185a5c5e9fc54612808977ee8f548b2258d31"),
        (b"abc", "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"),
        (b"message digest", "5d0689ef49d2fae572b881b123a85ffa21595f36"),
        (b"a" * 1_000, "aa69deee9a8922e92f8105e007f76110f381e9cf"),
        (
            b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
            "9b752e45573d4b39f4dbd3323cab82bf63326bfb",
        ),
    ],
)
def test_pure_ripemd160_matches_reference_vectors(data: bytes, digest: str) -> None:
    assert ripemd160_pure(data).hex() == digest
    assert ripemd160(data).hex() == digest


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_pure_ripemd160_matches_openssl_on_random_input(data: bytes) -> None:
    try:
        reference = hashlib.new("ripemd160", data).digest()
    except ValueError:  # OpenSSL 3 without the legacy provider: fall back to a known vector
        reference = ripemd160(data)
    assert ripemd160_pure(data) == reference


def test_ripemd160_falls_back_when_openssl_lacks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_new = hashlib.new

    def new_without_ripemd(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.lower() == "ripemd160":
            raise ValueError("unsupported hash type ripemd160")
        return real_new(name, *args, **kwargs)

    monkeypatch.setattr(hashlib, "new", new_without_ripemd)
    assert ripemd160(b"abc").hex() == "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"
    key = PrivateKey(
        bytes.fromhex("866159b0421fd9ca1435236a1b80b4c13e738439518395b9f9aecda850d4ab9d")
    )
    assert key.address == "gonka1y73jrm906eh5unh7lce2ynhhg2lfl5xvmkxxnw"


# --- addresses ----------------------------------------------------------------------------------


def test_addresses_of_the_test_vector_keys(vector: dict[str, Any]) -> None:
    developer = PrivateKey.from_hex(vector["developer_private_key_hex"])
    assert developer.public_key.hex() == vector["developer_compressed_pubkey_hex"]
    assert (
        base64.b64encode(developer.public_key).decode()
        == vector["developer_pubkey_base64_as_on_chain"]
    )
    assert developer.address == vector["developer_address"]
    ta = PrivateKey.from_hex(vector["transfer_agent_private_key_hex"])
    assert ta.address == vector["transfer_agent_address"]
    assert address_from_public_key(developer.public_key) == vector["developer_address"]


def test_public_key_is_the_same_with_ecdsa_only(monkeypatch: pytest.MonkeyPatch, vector) -> None:
    monkeypatch.setitem(__import__("sys").modules, "coincurve", None)  # as if not installed
    key = PrivateKey.from_hex(vector["developer_private_key_hex"])
    assert key.public_key.hex() == vector["developer_compressed_pubkey_hex"]


def test_address_validation(vector: dict[str, Any]) -> None:
    good = vector["developer_address"]
    assert is_valid_address(good)
    assert is_valid_address(vector["transfer_agent_address"])
    flipped = good[:-1] + ("q" if good[-1] != "q" else "p")
    assert not is_valid_address(flipped)  # checksum
    assert not is_valid_address(good.upper())
    assert not is_valid_address("cosmos1y73jrm906eh5unh7lce2ynhhg2lfl5xvmkxxnw")
    assert not is_valid_address("")
    assert validate_address(f"  {good} ") == good
    with pytest.raises(GonkaConfigError) as info:
        validate_address(flipped, field="GONKA_ADDRESS")
    assert info.value.field == "GONKA_ADDRESS"
    assert "bech32" in str(info.value)


@pytest.mark.parametrize(
    "where",
    ["validate_address", "GONKA_ADDRESS", "address=", "GONKA_ENDPOINTS", "source_url", "pair"],
)
def test_a_key_given_as_an_address_is_never_echoed(where: str) -> None:
    from gonka_mux.gonka.config import parse_endpoints
    from gonka_mux.gonka.discovery import normalize_sources

    secret = REQUESTER_KEY
    attempts = {
        "validate_address": lambda: validate_address(secret),
        "GONKA_ADDRESS": lambda: GonkaConfig.from_env({"GONKA_ADDRESS": secret}),
        "address=": lambda: GonkaConfig(address=f"0x{secret}"),
        "GONKA_ENDPOINTS": lambda: GonkaConfig.from_env({"GONKA_ENDPOINTS": secret}),
        "source_url": lambda: normalize_sources(secret),
        "pair": lambda: parse_endpoints([("https://h:8000", secret)]),
    }
    with pytest.raises(GonkaConfigError) as info:
        attempts[where]()
    text = f"{info.value} {info.value!r} {info.value.message}"
    assert secret not in text and secret[:16] not in text
    if where != "GONKA_ENDPOINTS":  # there the value has no ';': described, not judged
        assert "PRIVATE KEY" in text
    assert "expected" in text or "must" in text or "not an http" in text


def test_a_bad_address_is_described_by_its_shape() -> None:
    with pytest.raises(GonkaConfigError) as info:
        validate_address("gonka1notreallyanaddress")
    message = str(info.value)
    assert "notreally" not in message
    assert "24 characters" in message and "starting with 'gonka1'" in message
    assert "44 characters" in message  # what was expected


def test_address_rejects_uncompressed_public_key() -> None:
    with pytest.raises(GonkaConfigError):
        address_from_public_key(b"\x04" + b"\x01" * 64)


# --- loading keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [REQUESTER_KEY, "0x" + REQUESTER_KEY, REQUESTER_KEY.upper(), f"  {REQUESTER_KEY}\n"],
)
def test_from_hex_accepts_common_forms(text: str) -> None:
    assert PrivateKey.from_hex(text) == PrivateKey(bytes.fromhex(REQUESTER_KEY))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (REQUESTER_KEY[:-1], "got 63 characters"),
        (REQUESTER_KEY + "00", "got 66 characters"),
        (REQUESTER_KEY[:-1] + "z", "non-hexadecimal"),
        ("00" * 32, "out of range"),
        (f"{SECP256K1_ORDER:064x}", "out of range"),
        ("", "got 0 characters"),
    ],
)
def test_bad_keys_get_clear_errors_without_the_key(text: str, needle: str) -> None:
    with pytest.raises(GonkaConfigError) as info:
        PrivateKey.from_hex(text, field="GONKA_PRIVATE_KEY")
    message = str(info.value)
    assert needle in message
    assert info.value.field == "GONKA_PRIVATE_KEY"
    assert isinstance(info.value, ValueError)
    assert_no_secret(message)
    if len(text) >= 16:
        assert text[:16].lower() not in message.lower()
    # The chained cause must not carry the key either (from None drops it).
    assert info.value.__cause__ is None


def test_bad_key_in_env_names_the_variable_and_hides_value() -> None:
    bad = REQUESTER_KEY[:-2] + "xy"
    with pytest.raises(GonkaConfigError) as info:
        load_private_key(environ={"GONKA_PRIVATE_KEY": bad})
    assert info.value.field == "GONKA_PRIVATE_KEY"
    assert_no_secret(str(info.value))
    assert bad[:20] not in str(info.value)


def test_load_precedence(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = "22" * 32
    key_file = tmp_path / "key.hex"
    key_file.write_text(f"# requester key\n{other}\n")
    key_file.chmod(0o600)
    env = {"GONKA_PRIVATE_KEY": REQUESTER_KEY, "GONKA_PRIVATE_KEY_FILE": str(key_file)}
    assert load_private_key("33" * 32, environ=env) == PrivateKey(bytes.fromhex("33" * 32))
    assert load_private_key(key_file=key_file, environ=env) == PrivateKey(bytes.fromhex(other))
    assert load_private_key(environ=env) == PrivateKey(bytes.fromhex(REQUESTER_KEY))
    assert load_private_key(environ={"GONKA_PRIVATE_KEY_FILE": str(key_file)}) == PrivateKey(
        bytes.fromhex(other)
    )
    key = PrivateKey(bytes.fromhex(other))
    assert load_private_key(key) is key
    with pytest.raises(GonkaConfigError, match="GONKA_PRIVATE_KEY"):
        load_private_key(environ={})


def test_key_file_errors(tmp_path) -> None:
    with pytest.raises(GonkaConfigError, match="does not exist"):
        PrivateKey.from_file(tmp_path / "missing")
    two = tmp_path / "two"
    two.write_text(f"{REQUESTER_KEY}\n{REQUESTER_KEY}\n")
    with pytest.raises(GonkaConfigError, match="exactly one line") as info:
        PrivateKey.from_file(two)
    assert_no_secret(str(info.value))
    bad = tmp_path / "bad"
    bad.write_text(REQUESTER_KEY[:-1] + "g")
    with pytest.raises(GonkaConfigError) as info:
        PrivateKey.from_file(bad)
    assert str(bad) in str(info.value)
    assert_no_secret(str(info.value))


def test_world_readable_key_file_is_warned_about(tmp_path, caplog) -> None:
    path = tmp_path / "key"
    path.write_text(REQUESTER_KEY)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="gonka_mux.gonka"):
        PrivateKey.from_file(path)
    assert "chmod 600" in caplog.text
    assert_no_secret(caplog.text)
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="gonka_mux.gonka"):
        PrivateKey.from_file(path)
    assert caplog.text == ""


def test_requester_address_override(caplog, vector) -> None:
    key = PrivateKey.from_hex(REQUESTER_KEY)
    assert requester_address(key, environ={}) == key.address
    other = vector["developer_address"]
    with caplog.at_level(logging.WARNING, logger="gonka_mux.gonka"):
        assert requester_address(key, environ={"GONKA_ADDRESS": other}) == other
    assert "differs" in caplog.text
    assert requester_address(key, key.address, environ={"GONKA_ADDRESS": other}) == key.address
    with pytest.raises(GonkaConfigError) as info:
        requester_address(key, environ={"GONKA_ADDRESS": "gonka1notanaddress"})
    assert info.value.field == "GONKA_ADDRESS"


# --- the secret never shows -----------------------------------------------------------------------


def test_no_object_holding_the_key_shows_it(vector) -> None:
    key = PrivateKey.from_hex(REQUESTER_KEY)
    signer = RequestSigner(REQUESTER_KEY)
    auth = GonkaAuth(signer, vector["transfer_agent_address"])
    config = GonkaConfig(private_key=REQUESTER_KEY, source_urls="http://node:8000")
    for obj in (key, signer, auth, config, signer._backend):
        for text in (repr(obj), str(obj), f"{obj}", f"{obj!r}"):
            assert_no_secret(text)
    assert key.address in repr(key)
    assert "<hidden>" in repr(config)
    # Containers and exception arguments built from these objects stay clean too.
    assert_no_secret(repr([key, signer, {"cfg": config}]))
    assert_no_secret(str(ValueError(key, signer, config)))


def test_keys_and_signers_refuse_pickling() -> None:
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(PrivateKey.from_hex(REQUESTER_KEY))
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(RequestSigner(REQUESTER_KEY))


def test_signing_and_loading_log_nothing_secret(caplog, tmp_path, vector) -> None:
    path = tmp_path / "key"
    path.write_text(REQUESTER_KEY)
    path.chmod(0o644)  # provoke the permission warning
    with caplog.at_level(logging.DEBUG):
        key = PrivateKey.from_file(path)
        signer = RequestSigner(key, address=vector["developer_address"])  # provoke a warning
        signer.sign(b"{}", 1, vector["transfer_agent_address"])
        for bad in (REQUESTER_KEY[:-1] + "x", REQUESTER_KEY[:40]):
            with pytest.raises(GonkaConfigError):
                load_private_key(environ={"GONKA_PRIVATE_KEY": bad})
    assert caplog.records  # the warnings did happen
    assert_no_secret(caplog.text)
