"""Error's optional usage tail: a failed or cancelled stream reports the tokens generated
before it ended. Without usage it encodes exactly as before the tail existed, so peers that
predate it still decode it; with usage it carries all four counts; anything in between, or a
present all-zero tail, is refused."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cocoon.errors import (
    BadRequest,
    ProtocolError,
    RequestCancelled,
    RequestError,
    RequestTimeout,
    WorkerLost,
)
from cocoon.usage import Usage
from cocoon.wire import End, Error, decode, encode

U64_MAX = 2**64 - 1


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def test_without_usage_the_encoding_is_the_old_one() -> None:
    old = pack([8, 7, "engine_error", "boom", ""])  # what Error encoded to before usage
    assert encode(Error(7, "engine_error", "boom", "")) == old
    assert decode(old) == Error(7, "engine_error", "boom", "", 0, 0, 0, 0)
    assert not decode(old).has_usage


def test_with_usage_round_trips_with_the_whole_tail() -> None:
    msg = Error(7, "cancelled", "cancelled by the requester", "", 12, 5, 3, 1)
    assert encode(msg) == pack([8, 7, "cancelled", "cancelled by the requester", "",
                                12, 5, 3, 1])
    assert decode(encode(msg)) == msg
    assert msg.has_usage


@pytest.mark.parametrize("usage", [(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)])
def test_any_non_zero_count_keeps_the_tail(usage: tuple[int, int, int, int]) -> None:
    msg = Error(1, "timeout", "slow", "", *usage)
    raw = msgpack.unpackb(encode(msg), raw=False)
    assert raw[5:] == list(usage)
    assert decode(encode(msg)) == msg and msg.has_usage


@given(st.integers(0, U64_MAX), st.text(max_size=20),
       st.tuples(*[st.integers(0, U64_MAX)] * 4))
def test_round_trip_is_canonical(rid: int, code: str, usage: tuple[int, ...]) -> None:
    msg = Error(rid, code, "m", "p", *usage)
    payload = encode(msg)
    assert decode(payload) == msg
    assert encode(decode(payload)) == payload
    assert len(msgpack.unpackb(payload, raw=False)) == (9 if any(usage) else 5)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param([8, 1, "c", "m", "", 0, 0, 0, 0], id="all-zero-tail-present"),
        pytest.param([8, 1, "c", "m", "", 1], id="tail-of-one"),
        pytest.param([8, 1, "c", "m", "", 1, 2, 3], id="tail-of-three"),
        pytest.param([8, 1, "c", "m", "", 1, 2, 3, 4, 5], id="tail-too-long"),
        pytest.param([8, 1, "c", "m"], id="required-field-missing"),
        pytest.param([8, 1, "c", "m", "", -1, 0, 0, 0], id="negative-count"),
        pytest.param([8, 1, "c", "m", "", True, 0, 0, 0], id="bool-count"),
        pytest.param([8, 1, "c", "m", "", 1.0, 0, 0, 0], id="float-count"),
        pytest.param([8, 1, "c", "m", "", "1", 0, 0, 0], id="str-count"),
        pytest.param([8, 1, "c", "m", "", None, 0, 0, 0], id="nil-count"),
        pytest.param([8, 1, "c", "m", b"", 1, 0, 0, 0], id="bytes-for-param"),
    ],
)
def test_malformed_usage_is_rejected(raw: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        decode(pack(raw))


def test_arity_error_names_both_lengths() -> None:
    with pytest.raises(ProtocolError, match=r"Error needs 8 \(or 4\) fields, got 5"):
        decode(pack([8, 1, "c", "m", "", 1]))


# --- the one usage type and the one error mapping ---------------------------------------


def test_end_and_error_carry_the_one_usage_type() -> None:
    u = Usage(prompt_tokens=12, completion_tokens=5, cached_tokens=3, reasoning_tokens=1)
    end = End.of(4, u)
    assert end == End(4, 12, 5, 3, 1) and end.usage == u
    err = Error.of(4, RequestTimeout("slow"), u)
    assert err == Error(4, "timeout", "slow", "", 12, 5, 3, 1) and err.usage == u
    assert Error.of(4, BadRequest("no", param="model")) == Error(4, "invalid_request", "no",
                                                                 "model")


@pytest.mark.parametrize("cls", [BadRequest, RequestTimeout, WorkerLost, RequestCancelled])
def test_error_to_exception_is_the_same_failure(cls: type[RequestError]) -> None:
    exc = Error.of(1, cls("what happened", param="p")).to_exception()
    assert type(exc) is cls and exc.message == "what happened" and exc.param == "p"


@pytest.mark.parametrize("counts", [(1, 0, 2, 0), (0, 1, 0, 2)])
def test_contradicting_counts_are_a_protocol_error_when_read_as_usage(
        counts: tuple[int, int, int, int]) -> None:
    # The schema takes any four u64 counts; reading them as usage applies the one rule.
    end = decode(encode(End(1, *counts)))
    with pytest.raises(ProtocolError, match="exceeds"):
        end.usage  # noqa: B018
    with pytest.raises(ProtocolError, match="exceeds"):
        Error(1, "c", "m", "", *counts).usage  # noqa: B018
