"""The one mapping from whatever stopped a request to what the requester is told
(nodes.common.as_request_error): each kind of failure gets its code and HTTP status, and the
message names only where and the exception's type, never its text."""

from __future__ import annotations

import asyncio

import pytest

from cocoon.errors import (
    BadRequest,
    ConfigError,
    EngineError,
    InsufficientFunds,
    PaymentRequired,
    ProtocolError,
    RequestCancelled,
    RequestError,
    RequestTimeout,
    TransportError,
    VoucherInvalid,
    WorkerLost,
)
from cocoon.nodes.common import as_request_error


@pytest.mark.parametrize(("exc", "cls", "status"), [
    (asyncio.CancelledError(), RequestCancelled, 499),
    (InsufficientFunds("balance 3, needs 9"), PaymentRequired, 402),
    (TransportError("reset"), WorkerLost, 502),
    (TimeoutError(), RequestTimeout, 504),
    (ProtocolError("secret prompt text"), RequestError, 500),
    (ValueError("secret prompt text"), RequestError, 500),
    (VoucherInvalid("bad signature"), RequestError, 500),  # not a 402: a bug, not a balance
])
def test_each_failure_has_its_code_and_status(exc: BaseException, cls: type[RequestError],
                                              status: int) -> None:
    err = as_request_error(exc, where="proxy")
    assert type(err) is cls and err.status == status
    assert "secret" not in err.message


def test_a_request_error_is_itself_and_the_fallback_names_the_place() -> None:
    bad = BadRequest("no", param="model")
    assert as_request_error(bad, where="worker") is bad
    err = as_request_error(KeyError("x"), where="worker error", fallback=EngineError)
    assert type(err) is EngineError and err.message == "worker error: KeyError"
    assert err.code == "engine_error"
    assert as_request_error(ConfigError("k"), where="w").code == "internal_error"
