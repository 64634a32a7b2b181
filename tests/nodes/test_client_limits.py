"""Issue 10, item 6, in process: the client's HTTP surface against slow, idle, oversize and
broken requests (a ClientNode on a free port, not connected to any proxy), the shared
HttpServer's connection limits, Retry-After, and the rate-limited log of an app's mistakes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from cocoon.config import ClientConfig
from cocoon.errors import NoWorkerAvailable, RequestError
from cocoon.nodes.client.node import ClientNode
from cocoon.nodes.common import HttpServer, LogLimiter, error_response, open_sse
from cocoon.openai import Envelope
from cocoon.wire import MAX_REQUEST_BODY

IDLE_S = 0.5
BODY_S = 0.5
CANARY = "canary-7f3e9a-prompt"


@pytest.fixture
async def node() -> AsyncIterator[ClientNode]:
    n = ClientNode(ClientConfig(http="127.0.0.1:0", proxy="127.0.0.1:9",
                                http_idle_timeout_s=IDLE_S, http_body_timeout_s=BODY_S))
    await n.http.start()
    try:
        yield n
    finally:
        await n.http.stop()


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": CANARY}], **kw}


async def post(url: str, body: bytes) -> tuple[int, dict[str, Any], Any]:
    async with aiohttp.ClientSession() as s, s.post(
            url + "/v1/chat/completions", data=body,
            headers={"Content-Type": "application/json"}) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection (TimeoutError if it
    keeps it open longer than ``within``)."""
    out = b""
    async with asyncio.timeout(within):
        while chunk := await reader.read(65536):
            out += chunk
    return out


# --- Retry-After ----------------------------------------------------------------------------

async def test_not_connected_is_503_with_retry_after(node: ClientNode) -> None:
    async with openai.AsyncOpenAI(base_url=node.http.url + "/v1", api_key="unused",
                                  max_retries=0, timeout=10) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="m", messages=chat()["messages"])
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.body["code"] == "no_worker_available"  # type: ignore[index]


@pytest.mark.parametrize(("status", "retry_after"), [
    (503, "1"), (429, "1"), (400, None), (500, None), (502, None), (504, None)])
def test_error_response_sets_retry_after_on_429_and_503(status: int,
                                                         retry_after: str | None) -> None:
    err = RequestError("x")
    err.status = status
    response = error_response(err)
    assert response.status == status
    assert response.headers.get("Retry-After") == retry_after
    assert response.body is not None
    assert json.loads(bytes(response.body))["error"]["message"] == "x"  # type: ignore[arg-type]
    assert error_response(NoWorkerAvailable("none")).headers["Retry-After"] == "1"


# --- consistent limits ----------------------------------------------------------------------

async def test_body_over_the_frame_limit_is_413_in_openai_shape(node: ClientNode) -> None:
    # valid JSON just over the wire frame's room for a body
    big = json.dumps(chat(messages=[{"role": "user",
                                     "content": "a" * (MAX_REQUEST_BODY + 1000)}])).encode()
    status, headers, body = await post(node.http.url, big)
    assert status == 413, body
    assert body["error"]["code"] == "request_too_large"
    assert body["error"]["type"] == "invalid_request_error"
    assert str(MAX_REQUEST_BODY) in body["error"]["message"]
    # The largest body that fits is accepted (and answered 503 here: no proxy).
    pad = MAX_REQUEST_BODY - len(json.dumps(chat(messages=[{"role": "user", "content": ""}])))
    fits = json.dumps(chat(messages=[{"role": "user", "content": "a" * pad}])).encode()
    assert len(fits) == MAX_REQUEST_BODY
    status, headers, body = await post(node.http.url, fits)
    assert status == 503, body
    assert headers["Retry-After"] == "1"
    status, _, body = await post(node.http.url, fits + b" ")
    assert status == 413, body


@pytest.mark.parametrize(("raw", "param"), [
    (json.dumps(chat(max_tokens=2**64)).encode(), "max_tokens"),
    (json.dumps(chat(max_tokens=10**30)).encode(), "max_tokens"),
    (json.dumps(chat(max_completion_tokens=2**64)).encode(), "max_completion_tokens"),
    (json.dumps(chat(seed=2**64)).encode(), "seed"),
    (json.dumps(chat(logit_bias={"1": 1000})).encode(), "logit_bias"),
    (b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}',
     "messages[0].content"),
])
async def test_out_of_range_and_invalid_unicode_are_400(node: ClientNode, raw: bytes,
                                                        param: str) -> None:
    status, _, body = await post(node.http.url, raw)
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param


async def test_an_unexpected_failure_is_a_500_in_openai_shape(
        node: ClientNode, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Envelope, "parse", broken)
    with caplog.at_level(logging.INFO):
        for _ in range(30):
            status, headers, body = await post(node.http.url, json.dumps(chat()).encode())
            assert status == 500
            assert headers["Content-Type"].startswith("application/json")
            assert body["error"]["type"] == "server_error"
    ours = [r for r in caplog.records if r.name == "cocoon.nodes.client.node"]
    assert 1 <= len(ours) <= 10  # the bug is logged, with its traceback, but not 30 times
    assert ours[0].exc_info is not None
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")]


async def test_a_failure_after_the_stream_is_committed_ends_it_with_an_error_event(
        node: ClientNode) -> None:
    """The client's error middleware on a handler that fails mid-stream: the app gets an
    ``error`` event in OpenAI's shape (it cannot get a status any more), not a cut stream."""
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await open_sse(request)
        await response.write(b'data: {"x":1}\n\n')
        raise RuntimeError("a bug mid-stream")

    app = web.Application(middlewares=[node._openai_errors])
    app.router.add_post("/v1/chat/completions", handler)
    http = HttpServer(app, "127.0.0.1:0", "test.http")
    await http.start()
    try:
        async with aiohttp.ClientSession() as s, s.post(
                http.url + "/v1/chat/completions", data=b"{}") as r:
            assert r.status == 200
            events = [e for e in (await r.read()).split(b"\n\n") if e]
    finally:
        await http.stop()
    assert events[0] == b'data: {"x":1}'
    assert json.loads(events[1].removeprefix(b"data: "))["error"]["type"] == "server_error"


async def test_a_burst_of_bad_requests_logs_a_few_lines_without_content(
        node: ClientNode, caplog: pytest.LogCaptureFixture) -> None:
    bad = [json.dumps(chat(max_tokens=2**64)).encode(),
           b'{"model":"m","messages":[{"role":"user","content":"' + CANARY.encode()
           + b'\\ud800"}]}',
           b"{not json " + CANARY.encode()]
    with caplog.at_level(logging.DEBUG):
        async with aiohttp.ClientSession() as s:
            for i in range(300):
                async with s.post(node.http.url + "/v1/chat/completions",
                                  data=bad[i % len(bad)]) as r:
                    assert r.status == 400
    assert node.stats.invalid == 300
    logged = [r for r in caplog.records if r.name.startswith(("cocoon", "aiohttp"))]
    assert 1 <= len(logged) <= 10
    assert not any(r.exc_info for r in logged)
    assert not any(CANARY in r.getMessage() for r in caplog.records)


# --- slow and idle connections --------------------------------------------------------------

async def test_idle_connection_is_closed(node: ClientNode) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http.port)
    try:
        assert await read_until_closed(reader, IDLE_S + 2) == b""
    finally:
        writer.close()


async def test_idle_keep_alive_connection_is_closed(node: ClientNode) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http.port)
    try:
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await read_until_closed(reader, IDLE_S + 2)
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def test_slow_headers_are_cut_off(node: ClientNode) -> None:
    """Slowloris: a byte of headers every 50 ms never completes a request; the connection
    closes once the idle limit passes, whatever keeps trickling."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http.port)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for _ in range(int((IDLE_S + 3) / 0.05)):
            try:
                writer.write(b"X")
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            try:
                if await asyncio.wait_for(reader.read(1), 0.05) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed
        assert loop.time() - start < IDLE_S + 2
    finally:
        writer.close()


async def test_slow_body_is_408_and_not_kept_alive(node: ClientNode) -> None:
    body = json.dumps(chat()).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http.port)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        answer = b""
        for i in range(min(len(body), int((BODY_S + 3) / 0.05))):
            writer.write(body[i:i + 1])
            try:
                answer += await asyncio.wait_for(reader.read(65536), 0.05)
            except TimeoutError:
                continue
            if b"\r\n\r\n" in answer:
                break
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert b"Connection: close" in head
        assert loop.time() - start < BODY_S + 2
        rest += await reader.read(65536) if not rest else b""
        assert json.loads(rest)["error"]["code"] == "request_timeout"
    finally:
        writer.close()


async def test_every_roles_http_server_closes_idle_connections() -> None:
    """The shared HttpServer (the proxy's and worker's stats surfaces use it too)."""
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    http = HttpServer(app, "127.0.0.1:0", "test.http", idle_timeout_s=IDLE_S)
    await http.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
        try:
            assert await read_until_closed(reader, IDLE_S + 2) == b""
        finally:
            writer.close()
    finally:
        await http.stop()


# --- the log limiter ------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_log_limiter_logs_a_burst_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limiter = LogLimiter(logging.getLogger("test.limiter"), "bad requests", burst=3,
                         interval_s=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.limiter"):
        for i in range(5000):
            limiter.log(logging.INFO, "bad %d", i)
        assert [r.getMessage() for r in caplog.records] == ["bad 0", "bad 1", "bad 2"]
        assert limiter.suppressed == 4997
        clock.t += 5
        limiter.flush()  # the interval is not over: nothing yet
        assert len(caplog.records) == 3
        clock.t += 5
        limiter.flush()
        assert caplog.records[-1].getMessage() == (
            "suppressed 4997 similar bad requests in the last 10s")
        assert caplog.records[-1].levelno == logging.WARNING
        limiter.log(logging.INFO, "bad again")  # a new interval logs again
        assert caplog.records[-1].getMessage() == "bad again"
        assert limiter.suppressed == 0
        clock.t += 60
        limiter.flush()  # nothing was held back: no summary
        assert caplog.records[-1].getMessage() == "bad again"
