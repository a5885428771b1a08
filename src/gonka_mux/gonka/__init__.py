"""The Gonka protocol layer: keys, request signing, participant discovery, epochs, proofs.

Nothing here knows about routing. Names are re-exported lazily, so ``import gonka_mux.gonka``
costs nothing until one is used (and openai is only imported by ``make_signed_client``)::

    from gonka_mux.gonka import RequestSigner, GonkaAuth, discover

    signer = RequestSigner()                      # GONKA_PRIVATE_KEY / GONKA_PRIVATE_KEY_FILE
    found = discover("http://node1.example:8000")  # participants of the current epoch
    client = make_signed_client(found.for_model("MiniMaxAI/MiniMax-M2.7")[0], None, signer)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import GonkaConfig, GonkaEndpoint, parse_endpoints
    from .discovery import (
        AccountInfo,
        DiscoveryResult,
        GonkaParticipant,
        NodeIdentity,
        adiscover,
        afetch_chain_status,
        afetch_epoch_info,
        discover,
        fetch_chain_status,
        fetch_epoch_info,
        parse_account,
        parse_allowlist,
        parse_identity,
        parse_models,
        parse_participants,
        parse_pricing,
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
    from .proofs import verify_participants_proof
    from .signing import (
        INTERNAL_HEADERS,
        GonkaAuth,
        NanoClock,
        RequestSigner,
        available_backends,
        default_clock,
        make_signed_client,
        signing_message,
    )

_EXPORTS: dict[str, str] = {
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
    "INTERNAL_HEADERS": "signing",
    "GonkaAuth": "signing",
    "NanoClock": "signing",
    "RequestSigner": "signing",
    "available_backends": "signing",
    "default_clock": "signing",
    "make_signed_client": "signing",
    "signing_message": "signing",
}

__all__ = [
    "INTERNAL_HEADERS",
    "AccountInfo",
    "ChainStatus",
    "ConfirmationPocPhase",
    "DiscoveryResult",
    "EpochInfo",
    "EpochStages",
    "GonkaAuth",
    "GonkaConfig",
    "GonkaConfigError",
    "GonkaDiscoveryError",
    "GonkaEndpoint",
    "GonkaError",
    "GonkaNoParticipantsError",
    "GonkaParticipant",
    "GonkaPayloadError",
    "GonkaProofVerificationError",
    "GonkaSigningError",
    "NanoClock",
    "NodeIdentity",
    "PrivateKey",
    "RequestSigner",
    "address_from_public_key",
    "adiscover",
    "afetch_chain_status",
    "afetch_epoch_info",
    "available_backends",
    "default_clock",
    "discover",
    "fetch_chain_status",
    "fetch_epoch_info",
    "is_valid_address",
    "load_private_key",
    "make_signed_client",
    "parse_account",
    "parse_allowlist",
    "parse_chain_status",
    "parse_endpoints",
    "parse_epoch_info",
    "parse_identity",
    "parse_models",
    "parse_participants",
    "parse_pricing",
    "signing_message",
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
