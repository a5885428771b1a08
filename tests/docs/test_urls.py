"""Endpoint URLs are checked at add_endpoint: a missing scheme fails at once with the fix."""

from __future__ import annotations

import pytest

from gonka_mux import AsyncMultiplexer, Multiplexer


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("127.0.0.1:8000", "did you mean 'http://127.0.0.1:8000/v1'"),
        ("gpu-1:8000/v1", "did you mean 'http://gpu-1:8000/v1'"),
        ("ftp://host/v1", "needs a scheme and a host"),
        ("http:///v1", "needs a scheme and a host"),
        ("", "non-empty"),
    ],
)
def test_add_endpoint_refuses_a_url_without_scheme_or_host(url: str, message: str) -> None:
    mux = AsyncMultiplexer()
    with pytest.raises(ValueError, match=message):
        mux.add_endpoint(url, models=["m"])


def test_sync_face_checks_too_and_good_urls_pass() -> None:
    with Multiplexer() as mux:
        with pytest.raises(ValueError, match="needs a scheme"):
            mux.add_endpoint("localhost:8000", models=["m"])
        mux.add_endpoint("http://127.0.0.1:8000/v1", models=["m"])
        mux.add_endpoint("https://api.example.com/v1", models=["m"], api_key="sk-test")
