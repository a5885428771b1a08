"""GonkaConfig: validation, the environment, precedence, and a repr without the key."""

from __future__ import annotations

import pytest
from _gonka_support import REQUESTER_KEY

from gonka_mux.gonka.config import GonkaConfig, GonkaEndpoint, parse_endpoints
from gonka_mux.gonka.errors import GonkaConfigError
from gonka_mux.gonka.keys import PrivateKey
from gonka_mux.gonka.signing import RequestSigner

TA1 = "gonka1gazevntcqk95rqusjhvwn92y4599y8t3tjqc04"
TA2 = "gonka1y73jrm906eh5unh7lce2ynhhg2lfl5xvmkxxnw"

FULL_ENV = {
    "GONKA_PRIVATE_KEY": "0x" + REQUESTER_KEY,
    "GONKA_ADDRESS": TA2,
    "GONKA_SOURCE_URL": "http://node1:8000, https://node2/v1",
    "GONKA_ENDPOINTS": f"https://ta1.example/v1;{TA1},http://ta2:8000;{TA2}",
    "GONKA_VERIFY_PROOF": "1",
    "GONKA_REFRESH_ENABLED": "false",
    "GONKA_REFRESH_INTERVAL": "12.5",
    "GONKA_DEFAULT_MAX_CONCURRENT": "4",
    "GONKA_REGISTER_AS_FALLBACK": "yes",
    "GONKA_MODEL_NAME_PREFIX": "g:",
    "GONKA_MAX_TOKENS": "512",
    "GONKA_SIGNING_BACKEND": "ecdsa",
}


def test_defaults() -> None:
    config = GonkaConfig.from_env({})
    assert config.private_key is None and not config.has_key
    assert config.source_urls == () and config.endpoints == ()
    assert config.refresh_enabled and config.refresh_interval_seconds == 30.0
    assert not config.verify_proofs and not config.register_as_fallback
    assert config.model_name_prefix == "gonka:"
    assert config.default_max_tokens == 4096
    assert config.default_max_concurrent is None
    with pytest.raises(GonkaConfigError, match="GONKA_PRIVATE_KEY"):
        config.require_key()


def test_every_environment_variable() -> None:
    config = GonkaConfig.from_env(FULL_ENV)
    assert config.private_key == PrivateKey.from_hex(REQUESTER_KEY)
    assert config.address == TA2 == config.requester_address
    assert config.source_urls == ("http://node1:8000", "https://node2")
    assert config.endpoints == (
        GonkaEndpoint("https://ta1.example", TA1),
        GonkaEndpoint("http://ta2:8000", TA2),
    )
    assert config.endpoints[0].base_url == "https://ta1.example/v1"
    assert config.verify_proofs and not config.refresh_enabled
    assert config.refresh_interval_seconds == 12.5
    assert config.default_max_concurrent == 4
    assert config.register_as_fallback
    assert config.model_name_prefix == "g:"
    assert config.default_max_tokens == 512
    signer = config.signer()
    assert isinstance(signer, RequestSigner)
    assert signer.backend == "ecdsa" and signer.address == TA2


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("GONKA_PRIVATE_KEY", REQUESTER_KEY[:-1], "64 hexadecimal"),
        ("GONKA_ADDRESS", "gonka1bad", "bech32"),
        ("GONKA_SOURCE_URL", "node1:8000", "http"),
        ("GONKA_ENDPOINTS", "https://ta1.example", "must look like"),
        ("GONKA_ENDPOINTS", f"ftp://ta1;{TA1}", "http"),
        ("GONKA_VERIFY_PROOF", "maybe", "boolean"),
        ("GONKA_REFRESH_INTERVAL", "0", "at least 1"),
        ("GONKA_REFRESH_INTERVAL", "soon", "number"),
        ("GONKA_DEFAULT_MAX_CONCURRENT", "2.5", "integer"),
        ("GONKA_MAX_TOKENS", "-1", "at least 1"),
    ],
)
def test_bad_environment_values_name_the_variable(variable: str, value: str, needle: str) -> None:
    with pytest.raises(GonkaConfigError) as info:
        GonkaConfig.from_env({variable: value})
    assert info.value.field == variable
    assert needle in str(info.value)
    assert REQUESTER_KEY[:16] not in str(info.value)


def test_precedence_explicit_over_config_over_env(tmp_path) -> None:
    env = {
        "GONKA_SOURCE_URL": "http://env:1",
        "GONKA_MAX_TOKENS": "100",
        "GONKA_MODEL_NAME_PREFIX": "e:",
    }
    config = GonkaConfig(source_urls="http://config:2", default_max_tokens=200)
    resolved = GonkaConfig.resolve(config, environ=env, default_max_tokens=300, source_url=None)
    assert resolved.source_urls == ("http://config:2",)  # None counts as not given
    assert resolved.default_max_tokens == 300  # explicit beats config
    assert resolved.model_name_prefix == "e:"  # env fills what config leaves unset
    resolved = GonkaConfig.resolve(config, environ=env, source_url="http://arg:3")
    assert resolved.source_urls == ("http://arg:3",)


def test_key_and_key_file_are_one_setting(tmp_path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text("22" * 32)
    key_file.chmod(0o600)
    env = {"GONKA_PRIVATE_KEY": REQUESTER_KEY}
    resolved = GonkaConfig.resolve(environ=env, key_file=str(key_file))
    assert resolved.private_key == PrivateKey(bytes.fromhex("22" * 32))
    resolved = GonkaConfig.resolve(environ={"GONKA_PRIVATE_KEY_FILE": str(key_file)})
    assert resolved.private_key == PrivateKey(bytes.fromhex("22" * 32))
    resolved = GonkaConfig.resolve(
        environ={"GONKA_PRIVATE_KEY_FILE": str(key_file)}, private_key=REQUESTER_KEY
    )
    assert resolved.private_key == PrivateKey.from_hex(REQUESTER_KEY)


def test_unknown_settings_are_rejected() -> None:
    with pytest.raises(GonkaConfigError) as info:
        GonkaConfig.resolve(environ={}, refresh_intervall=5)
    assert info.value.field == "refresh_intervall"
    assert "refresh_interval_seconds" in str(info.value)


def test_direct_construction_validates_and_normalizes() -> None:
    config = GonkaConfig(
        private_key=REQUESTER_KEY,
        source_urls="http://a:1/",
        endpoints=[("http://t:1/v1", TA1), f"http://t2:2;{TA2}"],
        verify_proofs="1",  # type: ignore[arg-type]
    )
    assert isinstance(config.private_key, PrivateKey)
    assert config.source_urls == ("http://a:1",)
    assert [e.url for e in config.endpoints] == ["http://t:1", "http://t2:2"]
    assert config.verify_proofs is True
    participant = config.endpoints[0].as_participant(models=["m"])
    assert (participant.address, participant.base_url, participant.models) == (
        TA1,
        "http://t:1/v1",
        ("m",),
    )
    for bad in (
        {"refresh_interval_seconds": 0.5},
        {"default_max_concurrent": 0},
        {"signing_backend": "rsa"},
        {"model_name_prefix": 3},
        {"register_as_fallback": "perhaps"},
    ):
        with pytest.raises(GonkaConfigError):
            GonkaConfig(**bad)  # type: ignore[arg-type]


def test_merged_keeps_explicit_values() -> None:
    config = GonkaConfig(model_name_prefix="x:")
    merged = config.merged(default_max_tokens=64, model_name_prefix=None)
    assert merged.model_name_prefix == "x:" and merged.default_max_tokens == 64
    assert GonkaConfig.resolve(merged, environ={"GONKA_MAX_TOKENS": "9"}).default_max_tokens == 64


def test_repr_hides_the_key() -> None:
    config = GonkaConfig.from_env(FULL_ENV)
    text = repr(config)
    assert "<hidden>" in text
    for form in (REQUESTER_KEY, REQUESTER_KEY.upper(), REQUESTER_KEY[:16]):
        assert form not in text
    assert "source_urls=('http://node1:8000', 'https://node2')" in text
    assert str(config) == text
    assert "private_key=None" in repr(GonkaConfig())


def test_parse_endpoints_rejects_bad_items() -> None:
    with pytest.raises(GonkaConfigError):
        parse_endpoints([42])  # type: ignore[list-item]
    assert parse_endpoints(" , ") == ()


def test_errors_fit_the_package_hierarchy() -> None:
    from gonka_mux.errors import ConfigError, GonkaMuxError
    from gonka_mux.gonka import errors

    for name in (
        "GonkaError",
        "GonkaConfigError",
        "GonkaDiscoveryError",
        "GonkaNoParticipantsError",
        "GonkaPayloadError",
        "GonkaProofVerificationError",
        "GonkaSigningError",
    ):
        assert issubclass(getattr(errors, name), GonkaMuxError), name
    error = errors.GonkaConfigError("GONKA_ADDRESS", "not a gonka1... address")
    assert isinstance(error, ConfigError) and isinstance(error, ValueError)
    assert error.key == error.field == "GONKA_ADDRESS"
    assert str(error) == "<env>: [GONKA_ADDRESS] not a gonka1... address"
