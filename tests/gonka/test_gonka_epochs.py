"""Epoch arithmetic: switch height, effective epoch, phases, confirmation PoC, chain time."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from _gonka_support import load_fixture

from gonka_mux.gonka.epochs import (
    ConfirmationPocPhase,
    EpochStages,
    as_int,
    derive_phase,
    parse_chain_status,
    parse_epoch_info,
    parse_rfc3339_ns,
)
from gonka_mux.gonka.errors import GonkaPayloadError
from gonka_mux.testing.fake_gonka import EpochSchedule, FakeGonkaNetwork


def latest(**changes: Any) -> dict[str, Any]:
    payload = load_fixture("v1_epochs_latest.json")
    payload.update(changes)
    return payload


def test_fixture_in_the_inference_phase() -> None:
    info = parse_epoch_info(latest())
    assert info.block_height == 5172020
    assert info.latest_epoch_index == 300
    assert info.phase == "Inference"
    # set_new_validators of epoch 300 (5167420) is behind: the next switch is epoch 301's
    assert info.switch_height == 5184700
    assert info.blocks_until_switch == 5184700 - 5172020
    assert info.effective_epoch_id == 300
    assert not info.next_participants_available
    assert info.safe_for_inference
    assert not info.in_poc
    assert info.confirmation_poc_event is None


def test_during_poc_the_switch_is_this_epochs_set_new_validators() -> None:
    payload = latest(block_height=5184400, phase="PoCValidate")
    payload["latest_epoch"] = {"index": 301, "poc_start_block_height": 5184300}
    payload["epoch_stages"], payload["next_epoch_stages"] = (
        payload["next_epoch_stages"],
        copy.deepcopy(payload["next_epoch_stages"]),
    )
    info = parse_epoch_info(payload)
    assert info.switch_height == 5184700
    assert info.effective_epoch_id == 300  # latest is 301, still before its switch
    assert info.in_poc and not info.safe_for_inference
    assert not info.next_participants_available  # before poc_validation_end
    info = parse_epoch_info({**payload, "block_height": 5184580, "phase": "Inference"})
    assert info.next_participants_available  # N+1's list exists from poc_validation_end
    info = parse_epoch_info({**payload, "block_height": 5184700})
    assert info.switch_height == 5184700  # at the switch height itself: refetch now
    assert info.effective_epoch_id == 301


def test_safe_margin_before_the_next_poc() -> None:
    assert parse_epoch_info(latest(block_height=5184296)).safe_for_inference
    assert not parse_epoch_info(latest(block_height=5184297)).safe_for_inference


def test_confirmation_poc_fixture_blocks_traffic() -> None:
    info = parse_epoch_info(load_fixture("v1_epochs_latest.confirmation_poc_active.json"))
    assert info.is_confirmation_poc_active
    assert info.confirmation_poc_event is not None
    assert info.confirmation_poc_event.phase == ConfirmationPocPhase.GRACE_PERIOD
    assert info.confirmation_poc_blocking
    assert not info.safe_for_inference
    assert info.phase == "Inference"


@pytest.mark.parametrize(
    ("phase", "blocking"),
    [
        (0, False),
        (1, True),
        (2, True),
        (3, True),
        (4, False),
        ("3", True),
        ("CONFIRMATION_POC_VALIDATION", True),
        ("COMPLETED", False),
    ],
)
def test_confirmation_phases(phase: Any, blocking: bool) -> None:
    payload = load_fixture("v1_epochs_latest.confirmation_poc_active.json")
    payload["active_confirmation_poc_event"]["phase"] = phase
    assert parse_epoch_info(payload).confirmation_poc_blocking is blocking


def test_confirmation_poc_flag_without_event_is_conservative() -> None:
    payload = load_fixture("v1_epochs_latest.confirmation_poc_active.json")
    payload["active_confirmation_poc_event"] = None
    assert parse_epoch_info(payload).confirmation_poc_blocking
    payload["is_confirmation_poc_active"] = "false"
    assert not parse_epoch_info(payload).confirmation_poc_blocking


def test_unknown_confirmation_phase_is_an_error() -> None:
    payload = load_fixture("v1_epochs_latest.confirmation_poc_active.json")
    payload["active_confirmation_poc_event"]["phase"] = "DANCING"
    with pytest.raises(GonkaPayloadError):
        parse_epoch_info(payload)


def test_v0_2_15_shape_equals_the_current_one() -> None:
    current = parse_epoch_info(latest())
    transitional = parse_epoch_info(load_fixture("v1_epochs_latest.v0_2_15_shape.json"))
    assert transitional.switch_height == current.switch_height
    for key in ("epoch_length", "poc_stage_duration", "set_new_validators_delay"):
        assert transitional.epoch_params[key] == current.epoch_params[key]
    stringly = latest(block_height="5172020")
    stringly["epoch_stages"] = {k: str(v) for k, v in stringly["epoch_stages"].items()}
    assert parse_epoch_info(stringly).switch_height == current.switch_height


def test_missing_phase_is_derived_from_the_stages() -> None:
    payload = latest()
    del payload["phase"]
    assert parse_epoch_info(payload).phase == "Inference"
    stages = EpochStages.from_payload(payload["epoch_stages"])
    assert derive_phase(stages, stages.poc_start) == "PoCGenerate"
    assert derive_phase(stages, stages.poc_generation_wind_down) == "PoCGenerateWindDown"
    assert derive_phase(stages, stages.poc_validation_start) == "PoCValidate"
    assert derive_phase(stages, stages.poc_validation_wind_down) == "PoCValidateWindDown"
    assert derive_phase(stages, stages.poc_validation_end) == "Inference"


@pytest.mark.parametrize(
    "payload", [[], {}, {"block_height": 1}, {"block_height": "x", "epoch_stages": {}}]
)
def test_bad_payloads(payload: Any) -> None:
    with pytest.raises(GonkaPayloadError):
        parse_epoch_info(payload)


def test_as_int() -> None:
    assert as_int(5) == 5
    assert as_int("17280") == 17280
    assert as_int(" -3 ") == -3
    assert as_int(None, 7) == 7
    assert as_int("", 7) == 7
    assert as_int(4.0) == 4
    for bad in (True, "1.5", 1.5, [1], {"a": 1}):
        with pytest.raises(GonkaPayloadError):
            as_int(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-07-01T10:00:00.000000000Z", 1782900000 * 10**9),
        ("2026-07-01T10:00:00.123456789Z", 1782900000 * 10**9 + 123456789),
        ("2026-07-01T10:00:00.5Z", 1782900000 * 10**9 + 500_000_000),
        ("2026-07-01T12:00:00+02:00", 1782900000 * 10**9),
        ("2026-07-01T08:30:00-01:30", 1782900000 * 10**9),
    ],
)
def test_rfc3339(text: str, expected: int) -> None:
    assert parse_rfc3339_ns(text) == expected


@pytest.mark.parametrize("text", ["2026-07-01", "yesterday", "2026-07-01T10:00:00.1234567891Z"])
def test_rfc3339_rejects(text: str) -> None:
    with pytest.raises(GonkaPayloadError):
        parse_rfc3339_ns(text)


def test_chain_status_with_and_without_envelope() -> None:
    sync = {"latest_block_height": "12", "latest_block_time": "1970-01-01T00:00:01Z"}
    status = parse_chain_status({"result": {"sync_info": sync, "node_info": {"network": "n"}}})
    assert (status.latest_block_height, status.latest_block_time_ns, status.chain_id) == (
        12,
        10**9,
        "n",
    )
    assert parse_chain_status({"sync_info": {**sync, "catching_up": True}}).catching_up


def test_agrees_with_the_fake_chain_at_every_height() -> None:
    """Walk two whole epochs block by block: our arithmetic matches the fake chain's."""
    schedule = EpochSchedule()
    with FakeGonkaNetwork(n_participants=1, schedule=schedule) as net, httpx.Client() as http:
        start = schedule.stages(11)["poc_start"] - 3
        for height in range(start, start + 2 * schedule.epoch_length, 7):
            net.set_block_height(height)
            info = parse_epoch_info(http.get(f"{net.source_url}/v1/epochs/latest").json())
            assert info.effective_epoch_id == net.current_epoch, height
            assert info.phase == net.phase, height
            assert derive_phase(info.epoch_stages, height) == net.phase, height
            switch = info.switch_height
            assert switch >= height
            # the effective epoch changes exactly at the switch height
            assert schedule.effective_epoch(switch) == schedule.effective_epoch(switch - 1) + 1
            if switch > height:
                assert switch == net.next_switch_height()
