"""``gonka-mux address`` and ``gonka-mux discover``: the Gonka subcommands.

:func:`register` adds them to an ``argparse`` subparsers object; each sets ``func`` to a
handler ``(args) -> exit code``. Errors print one line to stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from typing import Any, TextIO

from .errors import GonkaError
from .keys import PrivateKey, load_private_key

__all__ = ["cmd_address", "cmd_discover", "register"]


def register(subparsers: Any) -> None:
    """Add the ``address`` and ``discover`` subcommands to ``subparsers``."""
    address = subparsers.add_parser(
        "address",
        help="print the gonka1... address of a private key",
        description=(
            "Print the Gonka account address of a private key, read from --key-file, "
            "--private-key, GONKA_PRIVATE_KEY or GONKA_PRIVATE_KEY_FILE (in that order)."
        ),
    )
    address.add_argument("--key-file", help="file holding the 64-hex-character private key")
    address.add_argument(
        "--private-key",
        help="the hex private key (visible to other users in the process list: prefer "
        "--key-file or GONKA_PRIVATE_KEY)",
    )
    address.add_argument("--json", action="store_true", help="print address and public key")
    address.set_defaults(func=cmd_address)

    discover = subparsers.add_parser(
        "discover",
        help="list the Gonka participants of an epoch",
        description=(
            "List the participants a Gonka node reports for an epoch, after dropping excluded "
            "and non-allowlisted ones: address, weight, models, URL, plus epoch and phase."
        ),
    )
    discover.add_argument(
        "--source-url",
        action="append",
        help="node base URL (http://host:8000) or file:///participants.json; repeat or "
        "comma-separate for failover (default: GONKA_SOURCE_URL)",
    )
    discover.add_argument("--epoch", default="current", help="'current' or an epoch number")
    discover.add_argument(
        "--verify-proofs", action="store_true", help="verify the ICS23 proof of the list"
    )
    discover.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    discover.add_argument("--json", action="store_true", help="print JSON instead of a table")
    discover.set_defaults(func=cmd_discover)


def _fail(message: str, err: TextIO) -> int:
    print(f"error: {message}", file=err)
    return 2


def cmd_address(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the address of the configured key."""
    out = out or sys.stdout
    try:
        if args.key_file:
            key = PrivateKey.from_file(args.key_file)
        else:
            key = load_private_key(args.private_key)
    except GonkaError as exc:
        return _fail(str(exc), sys.stderr)
    if args.json:
        document = {
            "address": key.address,
            "public_key_base64": base64.b64encode(key.public_key).decode(),
            "public_key_hex": key.public_key.hex(),
        }
        print(json.dumps(document, indent=2), file=out)
    else:
        print(key.address, file=out)
    return 0


def cmd_discover(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Discover participants and print them as a table or JSON."""
    # Lazy: discovery (proofs, epochs) adds ~18 ms to every `gonka-mux` command (its parser
    # imports this module): `gonka-mux --help` 82 -> 100 ms.
    from .discovery import discover

    out = out or sys.stdout
    sources = [s for item in (args.source_url or []) for s in item.split(",") if s.strip()]
    if not sources and os.environ.get("GONKA_SOURCE_URL", "").strip():
        sources = [os.environ["GONKA_SOURCE_URL"]]
    if not sources:
        return _fail("give --source-url URL (or set GONKA_SOURCE_URL)", sys.stderr)
    try:
        result = discover(
            sources,
            epoch=args.epoch,
            verify_proofs=True if args.verify_proofs else None,
            timeout=args.timeout,
        )
    except GonkaError as exc:
        return _fail(str(exc), sys.stderr)
    info = result.epoch_info
    if args.json:
        document = {
            "epoch_id": result.epoch_id,
            "phase": result.phase,
            "source_url": result.source_url,
            "block_height": info.block_height if info else None,
            "switch_height": info.switch_height if info else None,
            "safe_for_inference": info.safe_for_inference if info else None,
            "proof_verified": result.proof_verified,
            "allowlist": sorted(result.allowlist),
            "allowlist_known": result.allowlist_known,
            "classic_api_retired": result.classic_api_retired,
            "excluded": dict(result.excluded),
            "not_allowlisted": list(result.not_allowlisted),
            "models": {m: [p.address for p in ps] for m, ps in sorted(result.by_model.items())},
            "participants": [
                {
                    "address": p.address,
                    "inference_url": p.inference_url,
                    "base_url": p.base_url,
                    "weight": p.weight,
                    "models": list(p.models),
                }
                for p in result.participants
            ],
        }
        print(json.dumps(document, indent=2), file=out)
        return 0
    _print_table(result, out)
    return 0


def _print_table(result: Any, out: TextIO) -> None:
    info = result.epoch_info
    header = f"epoch {result.epoch_id}"
    if info is not None:
        safe = "safe for inference" if info.safe_for_inference else "NOT safe for inference"
        header += (
            f", phase {info.phase} ({safe}), block {info.block_height}, "
            f"next switch at {info.switch_height}"
        )
    print(header, file=out)
    print(f"source: {result.source_url}", file=out)
    if result.allowlist:
        allow = f"{len(result.allowlist)} addresses"
    elif result.allowlist_known:
        allow = "off (every node)"
    else:
        allow = "unknown (no source exposes /chain-api/; refusing TAs are dropped at their 403)"
    print(f"TA allowlist: {allow}", file=out)
    probe = result.classic_api
    if probe is not None:
        state = (
            "RETIRED on this network (410 deprecated, v0.2.14): use a broker or a devshard "
            "gateway (add_gonka_broker)"
            if probe.retired
            else f"served (GET {probe.url} -> {probe.status})"
        )
        print(f"classic signed API: {state}", file=out)
    rows = [("ADDRESS", "WEIGHT", "MODELS", "URL")]
    for p in sorted(result.participants, key=lambda p: -p.weight):
        rows.append((p.address, str(p.weight), ",".join(p.models) or "-", p.inference_url))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}",
            file=out,
        )
    for model, group in sorted(result.by_model.items()):
        weight = sum(p.weight for p in group)
        print(f"model {model}: {len(group)} participants, total weight {weight}", file=out)
    for address, reason in sorted(result.excluded.items()):
        print(f"excluded {address}: {reason}", file=out)
    if result.not_allowlisted:
        print(f"not on the TA allowlist: {', '.join(result.not_allowlisted)}", file=out)
