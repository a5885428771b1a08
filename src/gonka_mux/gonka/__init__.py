"""The Gonka network: keys, request signing, discovery, epochs, proofs, and its Multiplexer glue.

The protocol layer (keys, signing, discovery, epochs, proofs) knows nothing about routing;
``register_gonka_models``/``add_gonka_broker`` put Gonka capacity into a Multiplexer, the
refresh manager follows epochs and ``GonkaErrorPolicy`` maps the nodes' errors. Names are
re-exported lazily, so ``import gonka_mux.gonka`` costs nothing until one is used (openai is
imported only by the Multiplexer-facing parts)::

    from gonka_mux import AsyncMultiplexer
    from gonka_mux.gonka import aregister_gonka_models, add_gonka_broker

    mux = AsyncMultiplexer()
    await aregister_gonka_models(mux, source_url="http://node1.example:8000")  # GONKA_* env
    await mux.chat.completions.create(model="MiniMaxAI/MiniMax-M2.7", messages=[...])

    signer = RequestSigner()                      # GONKA_PRIVATE_KEY / GONKA_PRIVATE_KEY_FILE
    found = discover("http://node1.example:8000")  # participants of the current epoch
    client = make_signed_client(found.for_model("MiniMaxAI/MiniMax-M2.7")[0], None, signer)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .broker import (
        BrokerClient,
        BrokerErrorPolicy,
        BrokerRequestRecord,
        BrokerRequestRefused,
        BrokerStatus,
        GonkaBroker,
        broker_of,
        parse_broker_models,
        parse_broker_status,
    )
    from .config import DEFAULT_BROKER_FIELDS, GonkaConfig, GonkaEndpoint, parse_endpoints
    from .demo import run_gonka_demo
    from .discovery import (
        AccountInfo,
        ClassicApiProbe,
        DiscoveryResult,
        GonkaParticipant,
        NodeIdentity,
        adiscover,
        afetch_chain_status,
        afetch_epoch_info,
        aprobe_classic_api,
        discover,
        fetch_chain_status,
        fetch_epoch_info,
        parse_account,
        parse_allowlist,
        parse_identity,
        parse_models,
        parse_participants,
        parse_pricing,
        probe_classic_api,
    )
    from .epochs import (
        ChainStatus,
        ConfirmationPocPhase,
        EpochInfo,
        EpochStages,
        parse_chain_status,
        parse_epoch_info,
        switch_height,
    )
    from .errors import (
        GonkaConfigError,
        GonkaDiscoveryError,
        GonkaError,
        GonkaNoParticipantsError,
        GonkaPayloadError,
        GonkaProofVerificationError,
        GonkaSigningError,
    )
    from .keys import PrivateKey, address_from_public_key, is_valid_address, load_private_key
    from .policy import (
        ClassicApiRetired,
        GonkaAccessRestricted,
        GonkaAccountError,
        GonkaAuthenticationError,
        GonkaClockSkew,
        GonkaErrorPolicy,
        GonkaModelNotServed,
        GonkaParticipantRefused,
        InsufficientBalance,
        RefusalTracker,
        TransferAgentNotAllowed,
        is_network_retirement,
    )
    from .proofs import verify_participants_proof
    from .refresh import GonkaRefreshManager, RefreshResult
    from .registration import (
        GonkaEndpointGroup,
        GonkaRegistrationResult,
        aadd_gonka_broker,
        add_gonka_broker,
        aregister_gonka_models,
        register_gonka_models,
    )
    from .signing import (
        INTERNAL_HEADERS,
        ChainClockSync,
        GonkaAuth,
        NanoClock,
        RequestSigner,
        available_backends,
        default_clock,
        gonka_auth_flow,
        http_date_ns,
        is_clock_skew_error,
        make_signed_client,
        signing_message,
        ssl_context_for,
    )

_EXPORTS: dict[str, str] = {
    "BrokerClient": "broker",
    "BrokerErrorPolicy": "broker",
    "BrokerRequestRecord": "broker",
    "BrokerRequestRefused": "broker",
    "BrokerStatus": "broker",
    "GonkaBroker": "broker",
    "broker_of": "broker",
    "parse_broker_models": "broker",
    "parse_broker_status": "broker",
    "DEFAULT_BROKER_FIELDS": "config",
    "ClassicApiProbe": "discovery",
    "aprobe_classic_api": "discovery",
    "probe_classic_api": "discovery",
    "GonkaParticipantRefused": "policy",
    "RefusalTracker": "policy",
    "is_network_retirement": "policy",
    "http_date_ns": "signing",
    "GonkaConfig": "config",
    "GonkaEndpoint": "config",
    "parse_endpoints": "config",
    "AccountInfo": "discovery",
    "DiscoveryResult": "discovery",
    "NodeIdentity": "discovery",
    "parse_account": "discovery",
    "parse_identity": "discovery",
    "parse_models": "discovery",
    "parse_pricing": "discovery",
    "GonkaParticipant": "discovery",
    "adiscover": "discovery",
    "afetch_chain_status": "discovery",
    "afetch_epoch_info": "discovery",
    "discover": "discovery",
    "fetch_chain_status": "discovery",
    "fetch_epoch_info": "discovery",
    "parse_allowlist": "discovery",
    "parse_participants": "discovery",
    "ChainStatus": "epochs",
    "ConfirmationPocPhase": "epochs",
    "EpochInfo": "epochs",
    "EpochStages": "epochs",
    "parse_chain_status": "epochs",
    "parse_epoch_info": "epochs",
    "switch_height": "epochs",
    "GonkaConfigError": "errors",
    "GonkaDiscoveryError": "errors",
    "GonkaError": "errors",
    "GonkaNoParticipantsError": "errors",
    "GonkaPayloadError": "errors",
    "GonkaProofVerificationError": "errors",
    "GonkaSigningError": "errors",
    "PrivateKey": "keys",
    "address_from_public_key": "keys",
    "is_valid_address": "keys",
    "load_private_key": "keys",
    "verify_participants_proof": "proofs",
    "run_gonka_demo": "demo",
    "ClassicApiRetired": "policy",
    "GonkaAccessRestricted": "policy",
    "GonkaAccountError": "policy",
    "GonkaAuthenticationError": "policy",
    "GonkaClockSkew": "policy",
    "GonkaErrorPolicy": "policy",
    "GonkaModelNotServed": "policy",
    "InsufficientBalance": "policy",
    "TransferAgentNotAllowed": "policy",
    "GonkaRefreshManager": "refresh",
    "RefreshResult": "refresh",
    "GonkaEndpointGroup": "registration",
    "GonkaRegistrationResult": "registration",
    "aadd_gonka_broker": "registration",
    "add_gonka_broker": "registration",
    "aregister_gonka_models": "registration",
    "register_gonka_models": "registration",
    "INTERNAL_HEADERS": "signing",
    "ChainClockSync": "signing",
    "GonkaAuth": "signing",
    "NanoClock": "signing",
    "RequestSigner": "signing",
    "available_backends": "signing",
    "default_clock": "signing",
    "gonka_auth_flow": "signing",
    "is_clock_skew_error": "signing",
    "make_signed_client": "signing",
    "signing_message": "signing",
    "ssl_context_for": "signing",
}

__all__ = [
    "DEFAULT_BROKER_FIELDS",
    "INTERNAL_HEADERS",
    "AccountInfo",
    "BrokerClient",
    "BrokerErrorPolicy",
    "BrokerRequestRecord",
    "BrokerRequestRefused",
    "BrokerStatus",
    "ChainClockSync",
    "ChainStatus",
    "ClassicApiProbe",
    "ClassicApiRetired",
    "ConfirmationPocPhase",
    "DiscoveryResult",
    "EpochInfo",
    "EpochStages",
    "GonkaAccessRestricted",
    "GonkaAccountError",
    "GonkaAuth",
    "GonkaAuthenticationError",
    "GonkaBroker",
    "GonkaClockSkew",
    "GonkaConfig",
    "GonkaConfigError",
    "GonkaDiscoveryError",
    "GonkaEndpoint",
    "GonkaEndpointGroup",
    "GonkaError",
    "GonkaErrorPolicy",
    "GonkaModelNotServed",
    "GonkaNoParticipantsError",
    "GonkaParticipant",
    "GonkaParticipantRefused",
    "GonkaPayloadError",
    "GonkaProofVerificationError",
    "GonkaRefreshManager",
    "GonkaRegistrationResult",
    "GonkaSigningError",
    "InsufficientBalance",
    "NanoClock",
    "NodeIdentity",
    "PrivateKey",
    "RefreshResult",
    "RefusalTracker",
    "RequestSigner",
    "TransferAgentNotAllowed",
    "aadd_gonka_broker",
    "add_gonka_broker",
    "address_from_public_key",
    "adiscover",
    "afetch_chain_status",
    "afetch_epoch_info",
    "aprobe_classic_api",
    "aregister_gonka_models",
    "available_backends",
    "broker_of",
    "default_clock",
    "discover",
    "fetch_chain_status",
    "fetch_epoch_info",
    "gonka_auth_flow",
    "http_date_ns",
    "is_clock_skew_error",
    "is_network_retirement",
    "is_valid_address",
    "load_private_key",
    "make_signed_client",
    "parse_account",
    "parse_allowlist",
    "parse_broker_models",
    "parse_broker_status",
    "parse_chain_status",
    "parse_endpoints",
    "parse_epoch_info",
    "parse_identity",
    "parse_models",
    "parse_participants",
    "parse_pricing",
    "probe_classic_api",
    "register_gonka_models",
    "run_gonka_demo",
    "signing_message",
    "ssl_context_for",
    "switch_height",
    "verify_participants_proof",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
