"""Issue 11, in process: the client's OpenAI surface beyond completions — one model by id
(``client.models.retrieve``) and CORS for browser apps (``client.cors_origins``). A ClientNode
on a free port, not connected to any proxy, its catalog set as the proxy would push it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from cocoon.config import ClientConfig
from cocoon.nodes.client.node import ClientNode, _ProxyLink
from cocoon.wire import CatalogEntry

ORIGIN = "http://localhost:3000"


async def started(**config: Any) -> ClientNode:
    n = ClientNode(ClientConfig(http="127.0.0.1:0", proxy="127.0.0.1:9", **config))
    # as a proxy's Catalog would have set it
    n.links.by_address["127.0.0.1:9"] = _ProxyLink("127.0.0.1:9", "config", catalog=(
        CatalogEntry("SmolLM2-135M-Instruct", 1, 0, 4),
        CatalogEntry("org/model:v1", 2, 1, 8, 2_000_000, 5_000_000)))
    await n.http.start()
    return n


@pytest.fixture
async def node() -> AsyncIterator[ClientNode]:
    n = await started(cors_origins=f"{ORIGIN}, http://other.example")
    try:
        yield n
    finally:
        await n.http.stop()


@pytest.fixture
async def plain() -> AsyncIterator[ClientNode]:
    n = await started()
    try:
        yield n
    finally:
        await n.http.stop()


async def fetch(method: str, url: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, url, headers=headers,
                                                       data=body) as r:
        return r.status, r.headers, await r.read()


# --- GET /v1/models/{id} ------------------------------------------------------------------

async def test_models_retrieve_returns_the_model_object(plain: ClientNode) -> None:
    async with openai.AsyncOpenAI(base_url=plain.http.url + "/v1", api_key="unused",
                                  max_retries=0, timeout=10) as client:
        m = await client.models.retrieve("SmolLM2-135M-Instruct")
        assert (m.id, m.object, m.owned_by) == ("SmolLM2-135M-Instruct", "model", "cocoon")
        # An id with a slash and a colon (as Hugging Face names are) is one path parameter.
        assert (await client.models.retrieve("org/model:v1")).id == "org/model:v1"
        listed = [m.model_dump() for m in (await client.models.list()).data]
        assert (await client.models.retrieve("org/model:v1")).model_dump() == listed[1]


async def test_models_show_how_many_workers_serve_them_and_at_what_price(
        plain: ClientNode) -> None:
    async with openai.AsyncOpenAI(base_url=plain.http.url + "/v1", api_key="unused",
                                  max_retries=0, timeout=10) as client:
        free, priced = [m.model_dump() for m in (await client.models.list()).data]
    assert (free["workers"], free["capacity"]) == (1, 4)
    assert "price_per_million_tokens" not in free  # a proxy without billing
    assert (priced["workers"], priced["active"], priced["capacity"]) == (2, 1, 8)
    assert priced["price_per_million_tokens"] == {"min": "0.002", "max": "0.005",
                                                  "currency": "TON"}


async def test_unknown_model_is_an_openai_404(plain: ClientNode) -> None:
    async with openai.AsyncOpenAI(base_url=plain.http.url + "/v1", api_key="unused",
                                  max_retries=0, timeout=10) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("gpt-nope")
    assert info.value.body == {"message": "The model 'gpt-nope' does not exist",
                               "type": "invalid_request_error", "param": "model",
                               "code": "model_not_found"}
    assert plain.stats.invalid == 1


# --- CORS ---------------------------------------------------------------------------------

async def test_preflight_from_an_allowed_origin(node: ClientNode) -> None:
    status, headers, body = await fetch("OPTIONS", node.http.url + "/v1/chat/completions", {
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})
    assert status == 204 and body == b""
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Allow-Headers"] == \
        "authorization, content-type, x-stainless-os"
    assert int(headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in headers.getall("Vary")


async def test_answers_to_an_allowed_origin_carry_cors_headers(node: ClientNode) -> None:
    # A JSON answer, an error, and the 503 a request gets while no proxy is connected.
    for method, path, body in (("GET", "/v1/models", None),
                               ("GET", "/v1/models/nope", None),
                               ("POST", "/v1/chat/completions",
                                b'{"model":"m","messages":[{"role":"user","content":"x"}]}')):
        status, headers, _ = await fetch(method, node.http.url + path, {
            "Origin": "http://other.example", "Content-Type": "application/json"}, body)
        assert status in (200, 404, 503)
        assert headers["Access-Control-Allow-Origin"] == "http://other.example", path


async def test_other_origins_and_an_unconfigured_client_get_no_cors(
        node: ClientNode, plain: ClientNode) -> None:
    for n, origin in ((node, "http://evil.example"), (plain, ORIGIN)):
        status, headers, _ = await fetch("OPTIONS", n.http.url + "/v1/chat/completions",
                                         {"Origin": origin,
                                          "Access-Control-Request-Method": "POST"})
        assert status == 204  # answered, but a browser refuses: no Allow-Origin
        assert "Access-Control-Allow-Origin" not in headers
        status, headers, _ = await fetch("GET", n.http.url + "/v1/models", {"Origin": origin})
        assert status == 200 and "Access-Control-Allow-Origin" not in headers


async def test_star_allows_any_origin() -> None:
    n = await started(cors_origins="*")
    try:
        status, headers, _ = await fetch("GET", n.http.url + "/v1/models",
                                         {"Origin": "http://anything.example"})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    finally:
        await n.http.stop()
