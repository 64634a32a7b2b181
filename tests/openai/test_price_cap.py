"""An app's price cap (issue 13, item 4): ``max_coefficient`` in the body (the SDK's
``extra_body``) or the client's config; the stricter holds; engines never see it."""

from __future__ import annotations

import json

import pytest

from cocoon.errors import BadRequest
from cocoon.nodes.common import request_for
from cocoon.openai import Envelope
from cocoon.wire import Request, decode, encode

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def body(**fields: object) -> bytes:
    return json.dumps({**CHAT, **fields}).encode()


def test_the_body_cap_is_taken_out_and_travels_in_the_envelope() -> None:
    env, parsed = Envelope.parse("chat", body(max_coefficient=1500, temperature=0))
    assert env.max_coefficient == 1500
    assert "max_coefficient" not in parsed
    assert "max_coefficient" not in json.loads(env.body)  # the engine never sees it
    assert json.loads(env.body) == {**CHAT, "temperature": 0}
    req = request_for(env, 7, 1000)
    assert decode(encode(req)) == req and req.max_coefficient == 1500


@pytest.mark.parametrize(("asked", "configured", "holds"), [
    (1500, 0, 1500), (0, 2000, 2000), (1500, 2000, 1500), (3000, 2000, 2000), (None, 0, 0),
    ("null", 2000, 2000)])
def test_the_stricter_cap_holds(asked: int | None, configured: int, holds: int) -> None:
    raw = (body() if asked is None
           else body(max_coefficient=None) if asked == "null" else body(max_coefficient=asked))
    env, _ = Envelope.parse("chat", raw, max_coefficient=configured)
    assert env.max_coefficient == holds
    if asked is None:
        assert env.body == raw  # untouched when there is nothing to take out


@pytest.mark.parametrize("bad", [-1, 1.5, "1500", True, 10**7, [1]])
def test_a_bad_cap_is_a_400_naming_it(bad: object) -> None:
    with pytest.raises(BadRequest) as info:
        Envelope.parse("chat", body(max_coefficient=bad))
    assert info.value.param == "max_coefficient" and info.value.status == 400


def test_requests_without_a_cap_encode_as_before() -> None:
    env, _ = Envelope.parse("chat", body())
    assert request_for(env, 1, 1000) == Request(1, "chat", "m", False, 1000, body(), 0)
