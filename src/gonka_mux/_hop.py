"""A lighter send to an endpoint, for the gateway's relay (``execute(relay=True)``).

openai's ``client.post`` rebuilds the same request on every call: it copies the options twice,
merges and validates headers, re-parses the URL and wraps the send in its retry loop (the
Multiplexer's clients never retry). On a 0-latency endpoint that is about a quarter of the
gateway's CPU per request. :class:`DirectHop` asks the client to build its request once (the
SDK's own headers, auth, URL and query), keeps the headers and URL, and then only builds an HTTP
request per call on the client's own HTTP client (so its transport, pools and ``auth=`` hooks,
such as Gonka request signing, still apply). What comes back is what ``client.post`` returns:
the same openai error for a 4xx/5xx, ``APITimeoutError``/``APIConnectionError`` for the
transport, the same response class or stream class (a reply is validated by pydantic, which is
fast, and built leniently as openai does only when it does not conform).

Only plain clients qualify (see :func:`direct_hop`): openai 3.x's ``AsyncOpenAI`` with no SDK
retries, no hook that changes requests per call (an overridden ``_prepare_request`` or
``_build_headers``, a provider runtime, workload identity, a refreshing API key) and no
per-request options; anything else goes through ``client.post`` as before.
"""

from __future__ import annotations

import logging
from typing import Any

import openai
from openai import APIConnectionError, APIResponseValidationError, APITimeoutError

try:  # openai 3.x (httpx2); under 2.x the hop is not used
    from openai._httpx2 import request_exceptions, timeout_exceptions
except ImportError:  # pragma: no cover
    request_exceptions = timeout_exceptions = None  # type: ignore[assignment]

log = logging.getLogger("gonka_mux.core")

__all__ = ["DirectHop", "direct_hop"]

_ATTR = "_gonka_mux_hops"  # per-client cache: {path: DirectHop | None}
# Hooks a client class may override to change each request: a class that does keeps the SDK path.
_HOOKS = ("_prepare_request", "_prepare_options", "_build_headers", "_build_request", "request")
_SKIP = frozenset({"content-length", "x-stainless-read-timeout"})


def _plain(client: Any) -> bool:
    if timeout_exceptions is None or not isinstance(client, openai.AsyncOpenAI):
        return False
    cls = type(client)
    for hook in _HOOKS:
        if getattr(cls, hook, None) is not getattr(openai.AsyncOpenAI, hook, None):
            return False
    for attr in ("_provider_runtime", "workload_identity", "_api_key_provider"):
        if getattr(client, attr, None) is not None:
            return False
    return client.max_retries == 0 and client.custom_auth is None


async def direct_hop(client: Any, path: str, make_options: Any) -> DirectHop | None:
    """The hop for ``client`` and ``path`` (made once, then cached on the client), or None when
    the client must go through ``client.post``."""
    attrs = getattr(client, "__dict__", None)
    if attrs is None:  # a client without instance attributes is no plain openai client
        return None
    hops = attrs.get(_ATTR)
    if hops is None:
        hops = attrs[_ATTR] = {}
    try:
        return hops[path]  # type: ignore[no-any-return]
    except KeyError:
        pass
    hop = None
    if _plain(client):
        try:
            hop = await DirectHop.make(client, path, make_options)
        except Exception:  # an SDK that builds requests differently: keep its own path
            log.debug("no direct hop for this client", exc_info=True)
    hops[path] = hop
    return hop


class DirectHop:
    """One client's POST to one path, its headers and URL built once by the SDK."""

    __slots__ = ("client", "headers", "http", "url")

    def __init__(self, client: Any, url: str, headers: list[tuple[str, str]]) -> None:
        self.client = client
        self.http = client._client
        self.url = url
        self.headers = headers

    @classmethod
    async def make(cls, client: Any, path: str, make_options: Any) -> DirectHop:
        from openai._models import FinalRequestOptions

        options = FinalRequestOptions.construct(
            method="post", url=path, content=b"{}", **make_options()
        )
        options = await client._prepare_options(options)
        template = client._build_request(options, retries_taken=0)
        headers = [(k, v) for k, v in template.headers.multi_items() if k.lower() not in _SKIP]
        return cls(client, str(template.url), headers)

    async def post(
        self,
        content: bytes,
        timeout: Any,
        cast_to: Any,
        stream_cls: Any = None,
        stream_type: Any = None,
    ) -> Any:
        """``client.post(path, content=..., stream=stream_cls is not None)``'s result."""
        headers = self.headers
        read = getattr(timeout, "read", None)
        if read is not None:
            headers = [*headers, ("x-stainless-read-timeout", str(read))]
        request = self.http.build_request(
            "POST", self.url, headers=headers, content=content, timeout=timeout
        )
        stream = stream_cls is not None
        try:
            response = await self.http.send(request, stream=stream)
        except timeout_exceptions() as err:
            raise APITimeoutError(request=request) from err
        except request_exceptions() as err:
            raise APIConnectionError(request=request) from err
        if response.status_code >= 400:
            if not response.is_closed:
                await response.aread()
            raise self.client._make_status_error_from_response(response) from None
        client = self.client
        if stream:
            return stream_cls(cast_to=stream_type, response=response, client=client, options=None)
        try:
            data = response.json()
        except ValueError:
            raise APIResponseValidationError(
                response=response,
                body=response.text[:1000],
                message="The endpoint's reply is not JSON.",
            ) from None
        return _parse(client, data, cast_to, response)


def _parse(client: Any, data: Any, cast_to: Any, response: Any) -> Any:
    """``data`` as ``cast_to``: pydantic's validation where the reply conforms (some 4 us for a
    chat completion, where openai's lenient ``construct_type`` takes some 70), else openai's own
    lenient construction, as ``client.post`` does."""
    from openai._models import add_request_id
    from pydantic import ValidationError

    try:
        parsed = cast_to.model_validate(data)
    except (ValidationError, AttributeError, TypeError):
        parsed = client._process_response_data(data=data, cast_to=cast_to, response=response)
    add_request_id(parsed, response.headers.get("x-request-id"))
    return parsed
