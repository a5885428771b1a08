"""Schemathesis fuzzes every operation of the gateway's OpenAPI document against a live gateway
(uvicorn on loopback, fake endpoints behind it): valid and invalid input alike must never get a
5xx, and every 4xx must be an OpenAI-format error. Responses are also checked against the
document (status codes, content types, schemas), so the document cannot drift from the code."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gonka_mux.gateway import openapi_document
from gonka_mux.testing import FakeFleet

from ._serve import serve_in_thread
from .conftest import ADMIN_KEY, make_gateway

pytestmark = [
    pytest.mark.slow,
    # schemathesis's own strategies use `random`; hypothesis warns about it, not about us.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]


def _label(operation: Any) -> str:
    return f"{operation.method.upper()} {operation.path}"


SCHEMA = schemathesis.openapi.from_dict(openapi_document())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


def _has_input(operation: Any) -> bool:
    spec = openapi_document()["paths"][operation.path][operation.method.lower()]
    return bool(spec.get("parameters") or spec.get("requestBody"))


# Negative data needs something to make invalid: operations without input get valid data only.
CASES = [
    (operation, mode)
    for operation in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _has_input(operation)
]
EXAMPLES = 15
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(base URL, API key) of a gateway whose webhooks go nowhere: a fuzzed webhook_url may
    name any host, and tests never send traffic off this machine."""
    tmp = tmp_path_factory.mktemp("fuzz")
    delivered: list[str] = []

    def webhook_sink(request: httpx.Request) -> httpx.Response:
        delivered.append(str(request.url))
        return httpx.Response(200)

    with FakeFleet([{"name": "a"}, {"name": "b"}]) as fleet:

        async def build() -> tuple[Any, Any]:
            app, state = await make_gateway(list(fleet), tmp)
            mux = state["mux"]
            mux.features["jobs"].runner_options["http_client"] = httpx.AsyncClient(
                transport=httpx.MockTransport(webhook_sink)
            )
            _, key = state["keys"].create(name="fuzzer")
            state["key"] = key
            loop = asyncio.get_running_loop()
            state["loop"] = loop

            async def local_dns(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
                # The fuzzer names any host; the delivery-time SSRF check resolves it. Answer
                # with a documentation address (the guard refuses it: nothing is sent) instead
                # of asking a real resolver.
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.10", port or 443))]

            loop.getaddrinfo = local_dns  # type: ignore[method-assign]
            return app, state

        with serve_in_thread(build) as (url, state):
            yield url, state["key"]
            asyncio.run_coroutine_threadsafe(state["mux"].aclose(), state["loop"]).result(10)


def _assert_openai_error(response: Any) -> None:
    content_type = (response.headers.get("content-type") or [""])[0]  # header -> list of values
    assert content_type.startswith("application/json"), response.text
    error = json.loads(response.text)["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "param" in error and "code" in error


@pytest.mark.parametrize(
    ("operation", "mode"), CASES, ids=[f"{_label(op)} {mode}" for op, mode in CASES]
)
def test_fuzz_operation(live, operation, mode):
    url, key = live
    token = ADMIN_KEY if operation.path.startswith("/admin") else key
    strategy = operation.as_strategy(generation_mode=mode)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, known_model=st.booleans())
    def run(case: Any, known_model: bool) -> None:
        body = case.body
        if known_model and isinstance(body, dict) and isinstance(body.get("model"), str):
            body["model"] = "m"  # reach the endpoints too, not only the 404 for unknown models
        response = case.call(
            base_url=url, headers={**(case.headers or {}), "Authorization": f"Bearer {token}"}
        )
        assert response.status_code < 500 or response.status_code == 501, response.text
        if response.status_code == 400 and response.text == "Invalid HTTP request received.":
            return  # uvicorn's HTTP parser refused bytes that never reached the application
        if response.status_code >= 400:
            _assert_openai_error(response)
        if mode is GenerationMode.POSITIVE:
            case.validate_response(response, checks=CHECKS)

    run()
