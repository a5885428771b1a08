"""Fixtures for the webhook tests: a real receiver on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from webhook_receiver import Receiver, running_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as state:
        yield state
