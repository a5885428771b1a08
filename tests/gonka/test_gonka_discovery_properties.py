"""Discovery parsing never raises anything but a library error, whatever JSON a source sends.

Property tests (hypothesis) over the participants, epoch, identity and the other discovery
payloads: arbitrary JSON values, and the real fixtures with any one part replaced by an
arbitrary JSON value. A bad source moves on to the next; ``models`` must be a list of strings.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _gonka_support import load_fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gonka_mux.gonka.discovery import (
    adiscover,
    discover,
    parse_account,
    parse_allowlist,
    parse_identity,
    parse_models,
    parse_participants,
    parse_pricing,
)
from gonka_mux.gonka.epochs import parse_chain_status, parse_epoch_info
from gonka_mux.gonka.errors import GonkaDiscoveryError, GonkaError
from gonka_mux.gonka.proofs import verify_participants_proof

# Everything json.loads can return (it accepts NaN and Infinity, so they are here too).
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

PARSERS: dict[str, Callable[[Any], Any]] = {
    "participants": parse_participants,
    "epochs/latest": parse_epoch_info,
    "identity": parse_identity,
    "models": parse_models,
    "allowlist": parse_allowlist,
    "pricing": parse_pricing,
    "account": parse_account,
    "chain status": parse_chain_status,
}
FIXTURES: dict[str, tuple[str, ...]] = {
    "participants": (
        "v1_epochs_current_participants.json",
        "v1_epochs_current_participants.v0_2_15_shape.json",
    ),
    "epochs/latest": (
        "v1_epochs_latest.json",
        "v1_epochs_latest.v0_2_15_shape.json",
        "v1_epochs_latest.confirmation_poc_active.json",
    ),
    "identity": ("v1_identity.json", "v1_identity.delegate_ta.client_expected.json"),
    "models": ("v1_models.json", "v1_models.legacy.json"),
    "allowlist": ("chain-api_productscience_inference_inference_params.json",),
    "pricing": ("v1_pricing.json",),
    "account": ("v2_accounts_address.json",),
}
FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def only_library_errors(parse: Callable[[Any], Any], payload: Any) -> None:
    try:
        parse(payload)
    except GonkaError:
        pass  # a typed, documented refusal: fine


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON document (the root included)."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths(child, (*prefix, index))


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copied = copy.deepcopy(document)
    node = copied
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return copied


def mutations(kind: str) -> st.SearchStrategy[Any]:
    documents = [load_fixture(name) for name in FIXTURES[kind]]
    return st.sampled_from(documents).flatmap(
        lambda doc: st.tuples(st.sampled_from(list(paths(doc))), JSON).map(
            lambda pv: replaced(doc, pv[0], pv[1])
        )
    )


@pytest.mark.parametrize("kind", sorted(PARSERS))
@FAST
@given(payload=JSON)
def test_any_json_value_gives_a_result_or_a_library_error(kind: str, payload: Any) -> None:
    only_library_errors(PARSERS[kind], payload)


@pytest.mark.parametrize("kind", sorted(FIXTURES))
@FAST
@given(data=st.data())
def test_a_real_payload_with_any_part_replaced(kind: str, data: st.DataObject) -> None:
    payload = data.draw(mutations(kind))
    only_library_errors(PARSERS[kind], payload)


@FAST
@given(data=st.data())
def test_proof_verification_of_any_mutated_payload(data: st.DataObject) -> None:
    payload = data.draw(mutations("participants"))
    only_library_errors(verify_participants_proof, payload)


@FAST
@given(models=JSON)
def test_models_must_be_a_list_of_strings(models: Any) -> None:
    payload = load_fixture("v1_epochs_current_participants.json")
    for entry in payload["active_participants"]["participants"]:
        entry["models"] = models
    try:
        parsed = parse_participants(payload)
    except GonkaError:
        return
    if models is None:  # Go omits an empty list
        models = []
    valid = isinstance(models, list) and all(isinstance(m, str) and m for m in models)
    for participant in parsed.participants:
        assert valid and set(participant.models) == set(models)
    if not valid:
        assert parsed.participants == ()


def deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("excluded_participants is a number", lambda p: p.update(excluded_participants=1)),
        ("excluded_participants is a string", lambda p: p.update(excluded_participants="abc")),
        (
            "models is a number",
            lambda p: [e.update(models=5) for e in p["active_participants"]["participants"]],
        ),
        (
            "models is a string",
            lambda p: [e.update(models="abc") for e in p["active_participants"]["participants"]],
        ),
        (
            "epoch_id nested deeper than the stack",
            lambda p: p["active_participants"].update(epoch_id=deep(sys.getrecursionlimit() * 3)),
        ),
    ],
)
def test_named_bad_payloads_are_library_errors(name: str, change: Callable[[Any], Any]) -> None:
    payload = load_fixture("v1_epochs_current_participants.json")
    change(payload)
    try:
        parsed = parse_participants(payload)
    except GonkaError:
        return
    # "abc" is not three models a, b, c: such participants are skipped as malformed
    assert all(p.models and "a" not in p.models for p in parsed.participants)
    assert parsed.participants == () and parsed.skipped == 2


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return f"file://{path}"


@pytest.mark.parametrize(
    "bad",
    [
        '{"active_participants": {"participants": []}, "excluded_participants": 1}',
        '{"active_participants": {"participants": [{"index": "gonka1a", '
        '"inference_url": "http://h", "models": 5}]}}',
        "[" * 100_000 + "]" * 100_000,  # json.loads: RecursionError
        '{"active_participants": ' + "[" * 5000 + "]" * 5000 + "}",
        "not json at all",
    ],
)
async def test_a_bad_source_moves_on_to_the_next(tmp_path, bad: str) -> None:
    good = write(
        tmp_path, "good.json", json.dumps(load_fixture("v1_epochs_current_participants.json"))
    )
    broken = write(tmp_path, "bad.json", bad)
    found = discover([broken, good], probe_classic=False)
    assert found.source_url == good and len(found.participants) == 2
    assert (await adiscover([broken, good])).source_url == good
    with pytest.raises(GonkaDiscoveryError):
        discover([broken])


async def test_deep_json_from_a_host_moves_on(net) -> None:
    from gonka_mux.testing._server import Response

    participant = net.participants[0]
    original = net._discovery

    async def deep_participants(request, node):  # this host sends JSON 100,000 levels deep
        if node is participant and request.path.endswith("/participants"):
            return Response("[" * 100_000 + "]" * 100_000, 200, content_type="application/json")
        return await original(request, node)

    net._discovery = deep_participants
    found = await adiscover([participant.url, net.participants[1].url])
    assert found.source_url == net.participants[1].url
