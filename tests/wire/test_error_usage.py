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

from cocoon.errors import ProtocolError
from cocoon.wire import Error, decode, encode

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
