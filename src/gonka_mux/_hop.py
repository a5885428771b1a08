"""A lighter send to an endpoint, for the gateway's relay (``mux.chat.completions.relay``).

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

Where the HTTP client is the Multiplexer's own shared one, plain (no auth, hooks, cookies, proxy
or connection cap: see ``_wire.target_for``), the request does not go through httpx2 at all but
on ``_wire``'s HTTP/1.1 connections (httpx2 and httpcore2 were ~40% of the gateway's CPU per
relayed stream): the same bytes on the wire, the same results and errors (``_wire`` raises
httpx2's exception classes, converted here as httpx2's are), the body of a stream handed to
:class:`~gonka_mux._raw_stream.RawSSEStream` as it is read. A stream asked for as chunk objects
(openai's own stream class) and a redirect (httpx2 follows it by its rules) go by httpx2.

Only plain clients qualify (see :func:`direct_hop`): openai 3.x's ``AsyncOpenAI`` with no SDK
retries, no hook that changes requests per call (an overridden ``_prepare_request`` or
``_build_headers``, a provider runtime, workload identity, a refreshing API key) and no
per-request options; anything else goes through ``client.post`` as before.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import openai
from openai import APIConnectionError, APIResponseValidationError, APITimeoutError

from ._raw_stream import RawSSEStream as _RawSSEStream

try:  # openai 3.x (httpx2); under 2.x the hop is not used
    from httpx2 import Timeout as _Timeout
    from openai._httpx2 import request_exceptions, timeout_exceptions
except ImportError:  # pragma: no cover
    request_exceptions = timeout_exceptions = None  # type: ignore[assignment]
    _Timeout = None  # type: ignore[assignment,misc]

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

    __slots__ = ("client", "headers", "http", "url", "wire")

    def __init__(self, client: Any, url: str, headers: list[tuple[str, str]]) -> None:
        self.client = client
        self.http = client._client
        self.url = url
        self.headers = headers
        self.wire: Any = None  # a _wire.WireTarget where the HTTP client is plain

    @classmethod
    async def make(cls, client: Any, path: str, make_options: Any) -> DirectHop:
        from openai._models import FinalRequestOptions

        options = FinalRequestOptions.construct(
            method="post", url=path, content=b"{}", **make_options()
        )
        options = await client._prepare_options(options)
        template = client._build_request(options, retries_taken=0)
        headers = [(k, v) for k, v in template.headers.multi_items() if k.lower() not in _SKIP]
        hop = cls(client, str(template.url), headers)
        hop.wire = _wire_target(hop.http, hop.url, headers)
        return hop

    def build_request(self, content: bytes, timeout: Any) -> Any:
        """The httpx2 request ``client.post`` would send."""
        headers = self.headers
        read = getattr(timeout, "read", None)
        if read is not None:
            headers = [*headers, ("x-stainless-read-timeout", str(read))]
        return self.http.build_request(
            "POST", self.url, headers=headers, content=content, timeout=timeout
        )

    async def post(
        self,
        content: bytes,
        timeout: Any,
        cast_to: Any,
        stream_cls: Any = None,
        stream_type: Any = None,
    ) -> Any:
        """``client.post(path, content=..., stream=stream_cls is not None)``'s result."""
        wire = self.wire
        if (
            wire is not None
            and isinstance(timeout, _Timeout)
            and (stream_cls is None or stream_cls is _RawSSEStream)
            and wire.usable()
        ):
            result = await self._post_wire(wire, content, timeout, cast_to, stream_cls, stream_type)
            if result is not _REDO:
                return result
        request = self.build_request(content, timeout)
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

    async def _post_wire(
        self,
        wire: Any,
        content: bytes,
        timeout: Any,
        cast_to: Any,
        stream_cls: Any,
        stream_type: Any,
    ) -> Any:
        """:meth:`post` on the wire client (``_wire``): the same results and errors."""
        from ._wire import WireResponse

        read = timeout.read
        extra = b"" if read is None else b"x-stainless-read-timeout: %s\r\n" % str(read).encode()
        try:
            conn, read_timeout = await wire.send(content, extra, timeout)
        except timeout_exceptions() as err:
            raise APITimeoutError(request=self.build_request(content, timeout)) from err
        except request_exceptions() as err:
            raise APIConnectionError(request=self.build_request(content, timeout)) from err
        response = WireResponse(conn, wire.pool, read_timeout, self, content, timeout)
        try:
            return await self._wire_result(response, cast_to, stream_cls, stream_type)
        except BaseException:
            await response.aclose()  # closes the connection unless its response was read whole
            raise

    async def _wire_result(
        self, response: Any, cast_to: Any, stream_cls: Any, stream_type: Any
    ) -> Any:
        status = response.status_code
        if status in _REDIRECTS and response.header(b"location") is not None:
            # httpx2 follows it (or hands it back) by its own rules: the request goes that way,
            # and so do this endpoint's next ones (an endpoint that redirects once keeps doing
            # so: one POST sent twice, not every one)
            await response.aclose()
            self.wire = None
            return _REDO
        if response.header(b"set-cookie") is not None:
            # kept in the client's jar, as httpx2 does; with cookies, later calls go by httpx2
            self.http.cookies.extract_cookies(response.as_httpx(b""))
        client = self.client
        if stream_cls is not None and status < 400:
            return stream_cls(cast_to=stream_type, response=response, client=client, options=None)
        try:
            body = await response.aread_raw()
        except timeout_exceptions() as err:
            raise APITimeoutError(request=response.request) from err
        except request_exceptions() as err:
            raise APIConnectionError(request=response.request) from err
        full = None
        if status >= 400 or response.header(b"content-encoding") is not None:
            try:
                full = response.as_httpx(body)  # decodes the body (httpx2 does so in its send)
            except request_exceptions() as err:
                raise APIConnectionError(request=response.request) from err
            if status >= 400:
                raise client._make_status_error_from_response(full) from None
            body = full.content  # decoded by httpx2
        try:
            data = json.loads(body)
        except ValueError:
            if full is None:  # (a decoded body is not given to httpx2 to decode again)
                full = response.as_httpx(body)
            raise APIResponseValidationError(
                response=full,
                body=full.text[:1000],
                message="The endpoint's reply is not JSON.",
            ) from None
        # a decoded reply: its httpx2 response (a new one would decode the JSON text again)
        return _parse(client, data, cast_to, response if full is None else full)


_REDO = object()  # the wire client handed the request back to httpx2 (a redirect)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _wire_target(http: Any, url: str, headers: list[tuple[str, str]]) -> Any:
    """``_wire.target_for(...)`` where httptools is installed (the gateway extra), else None."""
    try:
        from . import _wire
    except ImportError:  # no httptools: httpx2 sends
        return None
    try:
        return _wire.target_for(http, url, headers)
    except Exception:  # an httpx2 laid out differently: keep its own path
        log.debug("no wire client for this endpoint", exc_info=True)
        return None


def _parse(client: Any, data: Any, cast_to: Any, response: Any) -> Any:
    """``data`` as ``cast_to``: pydantic's validation where the reply conforms (some 4 us for a
    chat completion, where openai's lenient ``construct_type`` takes some 70), else openai's own
    lenient construction, as ``client.post`` does. ``response``: httpx2's, or a
    ``_wire.WireResponse`` (an httpx2 one is made of it for openai's lenient path)."""
    from openai._models import add_request_id
    from pydantic import ValidationError

    wire = hasattr(response, "as_httpx")
    if wire:  # no httpx2 Headers built for one header
        raw_id = response.header(b"x-request-id")
        request_id = None if raw_id is None else raw_id.decode("latin-1")
    else:
        request_id = response.headers.get("x-request-id")
    try:
        parsed = cast_to.model_validate(data)
    except (ValidationError, AttributeError, TypeError):
        if wire:
            response = response.as_httpx(json.dumps(data).encode())
        parsed = client._process_response_data(data=data, cast_to=cast_to, response=response)
    add_request_id(parsed, request_id)
    return parsed
