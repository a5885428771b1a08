"""Fault attribution: the mux blames the right party for each failure, on both faces.

A refused credential quarantines that endpoint (and never leaks the key); the caller's own bad
input is refused locally, before any endpoint is touched or blamed; an upstream 400 is the
caller's too; ``timeout=`` is a per-attempt timeout; a stream that ends without its terminal
event is an interruption, not a normal end; ``deadline`` bounds a slowly dripped body; endpoints
can be marked ready, draining or gone, or retired by group; a 404 for the model takes that
endpoint out of the model's pool.

Every test runs against real loopback fake backends, through ``AsyncMultiplexer`` and through the
sync ``Multiplexer`` (driven from a worker thread). Names that the fault-attribution work adds
(``InvalidRequestError``, ``mark_ready``, ...) are looked up inside the tests, so one missing name
fails only the tests that use it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest

import gonka_mux
from gonka_mux import AsyncMultiplexer, HealthPolicy, Multiplexer
from gonka_mux.testing import FakeBackend, FakeBackendSpec, FakeFleet, Faults, Reply, StatusError

MSG = [{"role": "user", "content": "hello"}]
# A distinctive wrong key: it must show up nowhere (logs, errors, reprs, stats).
SECRET = "sk-gonka-mux-test-WRONG-KEY-7f3a91c2e4"
LIMITS = {"tiers": {"free": {"rpm": 60_000, "tpm": 100_000_000}}, "default_tier": "free"}
LONG_TEXT = "one two three four five six seven eight"


def api(name: str) -> Any:
    """A public name of gonka_mux, looked up when a test needs it (it may not exist yet)."""
    return getattr(gonka_mux, name)


class Face:
    """One face of the Multiplexer, driven from an async test.

    The sync ``Multiplexer`` runs in a worker thread, so the test's loop stays free and both
    faces are exercised by the same test body.
    """

    def __init__(self, kind: str, **settings: Any) -> None:
        self.kind = kind
        self.mux: Any = AsyncMultiplexer(**settings) if kind == "async" else Multiplexer(**settings)

    def add(self, fb: FakeBackend, name: str | None = None, **options: Any) -> Any:
        options.setdefault("models", ["m"])
        return self.mux.add_endpoint(fb.url, name=name or fb.name, **options)

    async def create(self, **params: Any) -> Any:
        params.setdefault("model", "m")
        params.setdefault("messages", MSG)
        if self.kind == "async":
            return await self.mux.chat.completions.create(**params)
        return await asyncio.to_thread(lambda: self.mux.chat.completions.create(**params))

    async def text(self, **params: Any) -> str:
        return (await self.create(**params)).choices[0].message.content

    async def stream(self, **params: Any) -> tuple[list[Any], BaseException | None]:
        """Every chunk of a stream, and the exception that ended it (None: a normal end).

        Only exceptions raised while iterating are returned; one raised by ``create`` itself
        propagates.
        """
        params.update(stream=True)
        params.setdefault("model", "m")
        params.setdefault("messages", MSG)
        chunks: list[Any] = []
        if self.kind == "async":
            stream = await self.mux.chat.completions.create(**params)
            try:
                async for chunk in stream:
                    chunks.append(chunk)
            except Exception as exc:
                return chunks, exc
            finally:
                await stream.close()
            return chunks, None

        def read() -> BaseException | None:
            stream = self.mux.chat.completions.create(**params)
            try:
                for chunk in stream:
                    chunks.append(chunk)
            except Exception as exc:
                return exc
            finally:
                stream.close()
            return None

        return chunks, await asyncio.to_thread(read)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A lifecycle method of the mux (sync or async, whichever the face provides)."""
        result = getattr(self.mux, method)(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    def endpoint(self, name: str) -> dict[str, Any]:
        return self.mux.stats()["endpoints"][name]

    def state(self, name: str) -> str:
        return self.endpoint(name)["state"]

    async def close(self) -> None:
        if self.kind == "async":
            await self.mux.aclose()
        else:
            await asyncio.to_thread(self.mux.close)


@pytest.fixture(params=["async", "sync"])
async def face(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Face]]:
    """A factory of Faces of one kind (``AsyncMultiplexer`` or ``Multiplexer``), closed after."""
    made: list[Face] = []

    def make(**settings: Any) -> Face:
        made.append(Face(request.param, **settings))
        return made[-1]

    yield make
    for item in made:
        await item.close()


def chats(fb: FakeBackend) -> int:
    return sum(1 for r in fb.requests if r.path.endswith("/chat/completions"))


def gone_from_rotation(snapshot: dict[str, Any] | None) -> bool:
    """A removed endpoint may vanish from stats() or stay listed as removed/gone."""
    return snapshot is None or bool(snapshot.get("removed")) or snapshot.get("state") == "gone"


def no_secret_anywhere(caplog: pytest.LogCaptureFixture, *things: Any) -> None:
    for record in caplog.records:
        assert SECRET not in record.getMessage(), record.getMessage()
    assert SECRET not in caplog.text
    for thing in things:
        assert SECRET not in (thing if isinstance(thing, str) else repr(thing))


# =========================================================================== refused credentials


@pytest.mark.parametrize("refusal", ["401-wrong-key", "403"])
async def test_endpoint_refusing_credentials_is_quarantined_and_the_healthy_one_serves_all(
    face: Callable[..., Face], caplog: pytest.LogCaptureFixture, refusal: str
) -> None:
    """A wrong key (401) or a 403 on one endpoint costs nothing: 20/20 served, it is quarantined
    after its first refusal, one warning names it, and the key shows up nowhere."""
    caplog.set_level(logging.DEBUG, logger="gonka_mux")
    specs = [
        FakeBackendSpec(
            name="keyless-east",
            api_key="sk-the-right-key" if refusal == "401-wrong-key" else None,
            faults=Faults(status_errors={403: 1.0}) if refusal == "403" else None,
        ),
        FakeBackendSpec(name="healthy-west"),
    ]
    with FakeFleet(specs) as fleet:
        mux = face(strategy="round_robin")
        bad = mux.add(fleet["keyless-east"], api_key=SECRET)
        mux.add(fleet["healthy-west"], api_key="sk-whatever")
        for _ in range(20):
            assert await mux.text() == "ok from healthy-west"
        assert fleet["keyless-east"].request_count == 1  # nothing after its first refusal
        assert chats(fleet["healthy-west"]) == 20
        assert mux.state("keyless-east") == "quarantined"
        warnings = [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING
            and (r.name == "gonka_mux" or r.name.startswith("gonka_mux."))
            and "keyless-east" in r.getMessage()
        ]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        no_secret_anywhere(
            caplog, mux.mux, bad, mux.mux.endpoints, json.dumps(mux.mux.stats(), default=str)
        )


@pytest.mark.parametrize("status", [401, 403])
async def test_every_endpoint_refusing_raises_all_endpoints_unauthorized(
    face: Callable[..., Face], caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """When every endpoint refuses the credentials the caller gets AllEndpointsUnauthorized (an
    openai.AuthenticationError) naming each endpoint and holding no key."""
    caplog.set_level(logging.DEBUG, logger="gonka_mux")
    if status == 401:
        specs = [
            FakeBackendSpec(name="refuser-one", api_key="sk-right-one"),
            FakeBackendSpec(name="refuser-two", api_key="sk-right-two"),
        ]
    else:
        faults = Faults(status_errors=[StatusError(403, message="Forbidden for this project")])
        specs = [
            FakeBackendSpec(name="refuser-one", faults=faults),
            FakeBackendSpec(name="refuser-two", faults=faults),
        ]
    with FakeFleet(specs) as fleet:
        mux = face()
        mux.add(fleet["refuser-one"], api_key=SECRET)
        mux.add(fleet["refuser-two"], api_key=SECRET)
        with pytest.raises(openai.APIStatusError) as info:
            await mux.create()
        error = info.value
        assert isinstance(error, api("AllEndpointsUnauthorized")), repr(error)
        assert isinstance(error, openai.AuthenticationError)
        message = str(error)
        assert "refuser-one" in message and "refuser-two" in message
        assert fleet.request_counts() == {"refuser-one": 1, "refuser-two": 1}
        assert mux.state("refuser-one") == mux.state("refuser-two") == "quarantined"
        to_dict = getattr(error, "to_dict", dict)
        no_secret_anywhere(caplog, message, error, json.dumps(to_dict()), str(error.body))


# ================================================================ the caller's own errors


def _deep_list(depth: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


async def invalid_request(make_call: Callable[[], Awaitable[Any]]) -> Any:
    """The InvalidRequestError that ``make_call()`` raises; anything else fails the test.

    The call is built only once the class is known to exist (no coroutine is left un-awaited),
    and a wrong exception is reported by type and message: the traceback of a RecursionError
    (5,000-deep nesting) would drown the report.
    """
    expected = api("InvalidRequestError")
    try:
        await make_call()
    except expected as exc:
        return exc
    except Exception as exc:  # reported below, without its traceback
        summary = f"expected InvalidRequestError, got {type(exc).__name__}: {str(exc)[:300]}"
    else:
        summary = "expected InvalidRequestError, but the request was accepted"
    pytest.fail(summary, pytrace=False)


# (id, params factory, limits on?, the .param it must name (a prefix))
BAD_INPUTS: list[tuple[str, Callable[[], dict[str, Any]], bool, str]] = [
    (
        "nan-content",
        lambda: {"messages": [{"role": "user", "content": math.nan}]},
        False,
        "messages",
    ),
    (
        "lone-surrogate",
        lambda: {"messages": [{"role": "user", "content": "\ud800"}]},
        False,
        "messages",
    ),
    (
        "set-content",
        lambda: {"messages": [{"role": "user", "content": {"a", "b"}}]},
        False,
        "messages",
    ),
    (
        "5000-deep-lists",
        lambda: {"messages": [{"role": "user", "content": _deep_list(5000)}]},
        False,
        "messages",
    ),
    ("timeout-str", lambda: {"timeout": "x"}, False, "timeout"),
    ("model-list", lambda: {"model": ["m"]}, False, "model"),
    ("deadline-str", lambda: {"deadline": "5"}, False, "deadline"),
    ("deadline-zero", lambda: {"deadline": 0}, False, "deadline"),
    ("deadline-negative", lambda: {"deadline": -1}, False, "deadline"),
    ("deadline-nan", lambda: {"deadline": math.nan}, False, "deadline"),
    ("messages-int", lambda: {"messages": 123}, False, "messages"),
    ("messages-int-limits", lambda: {"messages": 123}, True, "messages"),
    ("mux-metadata-str-limits", lambda: {"mux_metadata": "x"}, True, "mux_metadata"),
    ("stream-str", lambda: {"stream": "yes"}, False, "stream"),
]


@pytest.mark.parametrize(
    "params,limits,param", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
async def test_callers_bad_input_is_refused_locally_without_touching_an_endpoint(
    face: Callable[..., Face],
    params: Callable[[], dict[str, Any]],
    limits: bool,
    param: str,
) -> None:
    """The caller's own bad input raises InvalidRequestError (a BadRequestError and a ValueError)
    naming the parameter, with no upstream request and no endpoint blamed."""
    with FakeFleet(["a", "b"]) as fleet:
        mux = face()
        mux.add(fleet["a"])
        mux.add(fleet["b"])
        if limits:
            mux.mux.enable_limits(LIMITS)
        error = await invalid_request(lambda: mux.create(**params()))
        assert isinstance(error, openai.BadRequestError) and isinstance(error, ValueError)
        assert isinstance(error.param, str) and error.param.startswith(param), error.param
        assert fleet.request_counts() == {"a": 0, "b": 0}
        for name in ("a", "b"):
            snapshot = mux.endpoint(name)
            assert snapshot["requests"] == 0 and snapshot["state"] == "healthy"
            assert not snapshot["failures"]


async def test_bad_requests_leave_the_mux_ready_for_the_next_good_one(
    face: Callable[..., Face],
) -> None:
    """After five bad requests the next valid request is served at once (< 1 s): refusing the
    caller's input neither cools endpoints nor waits for capacity."""
    with FakeFleet(["a", "b"]) as fleet:
        mux = face()
        mux.add(fleet["a"])
        mux.add(fleet["b"])
        invalid = api("InvalidRequestError")
        for bad in (
            {"messages": [{"role": "user", "content": math.nan}]},
            {"deadline": 0},
            {"timeout": "x"},
            {"stream": "yes"},
            {"model": ["m"]},
        ):
            with pytest.raises(invalid):
                await mux.create(**bad)
        started = time.monotonic()
        assert (await mux.text()).startswith("ok from")
        assert time.monotonic() - started < 1.0
        assert sum(fleet.request_counts().values()) == 1


async def test_upstream_400_is_raised_at_once_without_failover_or_health_change(
    face: Callable[..., Face],
) -> None:
    """An upstream 400 (not about context length) is the caller's error: one attempt, no
    failover, no endpoint blamed; the endpoint's own openai error (as the plain client raises
    it) with ``.endpoint`` naming the endpoint and a note saying it was not retried."""
    refusal = Faults(
        status_errors=[StatusError(400, message="Invalid value for 'temperature': 7.")]
    )
    with FakeFleet(
        [
            FakeBackendSpec(name="alpha", faults=refusal),
            FakeBackendSpec(name="bravo", faults=refusal),
        ]
    ) as fleet:
        mux = face()
        mux.add(fleet["alpha"])
        mux.add(fleet["bravo"])
        with pytest.raises(openai.BadRequestError) as info:
            await mux.create(temperature=7)
        error = info.value
        assert type(error) is openai.BadRequestError, repr(error)  # drop-in: the same class
        assert error.status_code == 400
        assert "temperature" in error.message
        counts = fleet.request_counts()
        assert sum(counts.values()) == 1, counts  # no failover
        tried = next(name for name, count in counts.items() if count)
        assert error.endpoint == tried
        assert any(tried in note for note in getattr(error, "__notes__", []))
        for name in ("alpha", "bravo"):
            snapshot = mux.endpoint(name)
            assert snapshot["state"] == "healthy" and snapshot["consecutive_failures"] == 0
        fleet.clear()
        for fb in fleet:
            fb.set_faults(Faults())
        assert (await mux.text()).startswith("ok from")


# ============================================================= timeout, streams, deadline


async def test_timeout_keyword_is_accepted(face: Callable[..., Face]) -> None:
    """create(..., timeout=5) works like openai's (it used to clash with the mux's own timeout),
    for plain and streamed requests."""
    with FakeFleet(["a"]) as fleet:
        mux = face()
        mux.add(fleet["a"])
        assert await mux.text(timeout=5) == "ok from a"
        chunks, error = await mux.stream(timeout=5.0)
        assert error is None
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok from a"


async def test_timeout_is_per_attempt_and_fails_over_to_a_fast_endpoint(
    face: Callable[..., Face],
) -> None:
    """timeout= bounds each attempt, as in openai: a slow endpoint (1 s) times out at 0.3 s and
    the request fails over to the fast one."""
    with FakeFleet(
        [FakeBackendSpec(name="slow", faults=Faults(latency=1.0)), FakeBackendSpec(name="fast")]
    ) as fleet:
        mux = face(strategy="round_robin")
        mux.add(fleet["slow"])
        mux.add(fleet["fast"])
        for _ in range(2):  # round robin: one of the two starts on the slow endpoint
            assert await mux.text(timeout=0.3) == "ok from fast"
        assert fleet["slow"].request_count >= 1


async def test_stream_without_its_terminal_event_raises_stream_interrupted(
    face: Callable[..., Face],
) -> None:
    """A stream that ends cleanly but without finish_reason/[DONE] raises StreamInterrupted while
    iterating, with what arrived in .partial["content"]."""
    with FakeFleet([FakeBackendSpec(name="a", faults=Faults(rate_truncate=1.0))]) as fleet:
        fleet["a"].set_replies([Reply(LONG_TEXT)] * 4)
        mux = face()
        mux.add(fleet["a"])
        chunks, error = await mux.stream()
        assert isinstance(error, api("StreamInterrupted")), repr(error)
        partial = error.partial["content"]
        assert partial and LONG_TEXT.startswith(partial) and partial != LONG_TEXT
        received = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert received == partial


async def test_a_complete_stream_still_ends_normally(face: Callable[..., Face]) -> None:
    """A stream with its finish_reason and [DONE] ends without an error."""
    with FakeFleet(["a"]) as fleet:
        fleet["a"].set_replies([Reply(LONG_TEXT)])
        mux = face()
        mux.add(fleet["a"])
        chunks, error = await mux.stream()
        assert error is None
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == LONG_TEXT
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


async def test_deadline_bounds_a_slowly_dripped_body(face: Callable[..., Face]) -> None:
    """deadline= covers the whole answer: a JSON body dripped over ~5 s (each read in time)
    ends in DeadlineExceeded within 2 s for deadline=1."""
    with FakeFleet([FakeBackendSpec(name="drip", faults=Faults(body_drip=0.5))]) as fleet:
        mux = face()
        mux.add(fleet["drip"])
        started = time.monotonic()
        with pytest.raises(Exception) as info:  # the class is checked below
            await mux.create(deadline=1.0)
        elapsed = time.monotonic() - started
        assert isinstance(info.value, api("DeadlineExceeded")), repr(info.value)
        assert elapsed < 2.0


# =========================================================================== lifecycle


@pytest.mark.parametrize(
    "faults,state",
    [
        (Faults(rate_500=1.0), "ejected"),
        (Faults(status_errors={401: 1.0}), "quarantined"),
        (Faults(rate_429=1.0, retry_after=60), "cooling"),
    ],
    ids=["ejected-by-500", "quarantined-by-401", "cooling-after-429"],
)
async def test_mark_ready_puts_a_fixed_endpoint_back_at_once(
    face: Callable[..., Face], faults: Faults, state: str
) -> None:
    """mark_ready(name) clears an ejection, a quarantine or a cooldown at once: the fixed
    endpoint gets the very next request."""
    with FakeFleet([FakeBackendSpec(name="a", faults=faults)]) as fleet:
        mux = face(health=HealthPolicy(eject_after=1, ejection_time=60), wait_for_capacity=0)
        mux.add(fleet["a"])
        with pytest.raises(openai.APIError):
            await mux.create()
        assert mux.state("a") == state
        with pytest.raises(openai.APIError):
            await mux.create()  # still out of rotation: refused without a request
        assert fleet["a"].request_count == 1
        fleet["a"].set_faults(Faults())
        await mux.call("mark_ready", "a")
        assert mux.state("a") == "healthy"
        assert await mux.text() == "ok from a"
        assert fleet["a"].request_count == 2


async def test_mark_draining_stops_new_requests_and_lets_in_flight_ones_finish(
    face: Callable[..., Face],
) -> None:
    """mark_draining(name): from that moment no new request goes to it, while the request in
    flight on it finishes successfully; stats() shows "draining"."""
    with FakeFleet(
        [FakeBackendSpec(name="a", faults=Faults(latency=0.8)), FakeBackendSpec(name="b")]
    ) as fleet:
        mux = face()
        mux.add(fleet["a"])
        mux.add(fleet["b"])
        in_flight = asyncio.ensure_future(mux.text(route_to="a"))
        try:
            await asyncio.to_thread(fleet["a"].wait_for_requests, 1, 5.0)
            await mux.call("mark_draining", "a")
            assert mux.state("a") == "draining"
            for _ in range(6):
                assert await mux.text() == "ok from b"
            assert await in_flight == "ok from a"
            assert fleet["a"].request_count == 1
        finally:
            # never leave a task whose exception nobody retrieves: asyncio would log its
            # traceback whenever it is collected, and on CPython 3.11 that can land inside
            # pytest's own ast.parse and crash the run ("AST constructor recursion depth")
            in_flight.cancel()
            await asyncio.gather(in_flight, return_exceptions=True)


async def test_mark_gone_removes_the_endpoint(face: Callable[..., Face]) -> None:
    """mark_gone(name) takes the endpoint out at once: requests go to the others."""
    with FakeFleet(["a", "b"]) as fleet:
        mux = face()
        mux.add(fleet["a"])
        mux.add(fleet["b"])
        await mux.call("mark_gone", "a")
        assert gone_from_rotation(mux.mux.stats()["endpoints"].get("a"))
        for _ in range(6):
            assert await mux.text() == "ok from b"
        assert fleet["a"].request_count == 0


async def test_retire_group_removes_every_endpoint_of_the_group(face: Callable[..., Face]) -> None:
    """retire_group(group, reason=...) removes all of that group's endpoints at once; requests
    go to the others."""
    with FakeFleet(["g1", "g2", "other"]) as fleet:
        mux = face(strategy="round_robin")
        mux.add(fleet["g1"], group="g")
        mux.add(fleet["g2"], group="g")
        mux.add(fleet["other"])
        for _ in range(3):
            await mux.text()
        assert fleet.request_counts() == {"g1": 1, "g2": 1, "other": 1}
        await mux.call("retire_group", "g", reason="epoch 12 ended")
        endpoints = mux.mux.stats()["endpoints"]
        assert gone_from_rotation(endpoints.get("g1")) and gone_from_rotation(endpoints.get("g2"))
        for _ in range(6):
            assert await mux.text() == "ok from other"
        assert fleet.request_counts() == {"g1": 1, "g2": 1, "other": 7}


@pytest.mark.parametrize("how", ["strict-models", "status-404"])
async def test_404_for_the_model_fails_over_and_the_endpoint_is_gone_for_it(
    face: Callable[..., Face], how: str
) -> None:
    """A 404 for the model on one endpoint fails over within the same call, and that endpoint is
    "gone" for the model's pool: it gets no more requests."""
    if how == "strict-models":
        lost = FakeBackendSpec(name="lost", models=["another-model"], strict_models=True)
    else:
        lost = FakeBackendSpec(name="lost", faults=Faults(status_errors=[StatusError(404)]))
    with FakeFleet([lost, FakeBackendSpec(name="found")]) as fleet:
        mux = face(strategy="round_robin")
        mux.add(fleet["lost"])
        mux.add(fleet["found"])
        for _ in range(6):  # round robin: the first or second request starts on "lost"
            assert await mux.text() == "ok from found"
        assert fleet["lost"].request_count == 1
        assert mux.state("lost") == "gone"


async def test_credentials_in_a_url_never_reach_names_logs_or_stats(caplog) -> None:
    """A key pasted into the URL (user:key@host, ?api_key=) is not shown by the default
    endpoint name, the stats or the quarantine warning."""
    import logging

    from gonka_mux import AsyncMultiplexer
    from gonka_mux.testing import FakeBackend

    secret = "sk-url-secret-0042"
    with FakeBackend(api_key="right") as fb:
        url = fb.url.replace("http://", f"http://user:{secret}@") + f"?api_key={secret}"
        mux = AsyncMultiplexer()
        ep = mux.add_endpoint(url, models=["m"], api_key="wrong")
        caplog.set_level(logging.DEBUG, logger="gonka_mux")
        # (the URL's query makes some httpx versions send a path the fake does not serve:
        # a 404 instead of the 401; either way the error must not show the secret)
        with pytest.raises(openai.APIStatusError) as info:
            await mux.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
        shown = [ep.name, repr(ep), str(mux.stats()), str(info.value), caplog.text]
        assert all(secret not in text for text in shown)
        await mux.aclose()
