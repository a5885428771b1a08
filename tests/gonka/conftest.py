"""Fixtures for the Gonka protocol tests: the signing vector, a requester, a fake network."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _gonka_support import MODEL, REQUESTER_KEY, load_fixture

from gonka_mux.gonka.signing import RequestSigner
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork


@pytest.fixture
def vector() -> dict[str, Any]:
    return load_fixture("signing_test_vector.json")


@pytest.fixture
def signer() -> RequestSigner:
    return RequestSigner(REQUESTER_KEY)


@pytest.fixture
def net(signer: RequestSigner) -> Iterator[FakeGonkaNetwork]:
    with FakeGonkaNetwork(n_participants=3, models=[MODEL]) as network:
        network.add_account(signer)
        yield network
