"""A request's ticket and the worker's job reports: how a proxy that died mid-request still
learns what its requests generated (see ``Request.ticket`` and ``JobReports``)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from cocoon.errors import ProtocolError
from cocoon.usage import Usage
from cocoon.wire import JobReport, JobReports, Request, decode, encode


def _raw(msg: Any) -> list[Any]:
    out = msgpack.unpackb(encode(msg), raw=False)
    assert isinstance(out, list)
    return out


def test_a_request_without_a_ticket_encodes_as_before() -> None:
    """The ticket is an optional tail: unbilled requests (and clients, which never set it)
    keep the seven-field encoding peers that predate tickets decode."""
    plain = Request(1, "chat", "m", True, 30_000, b"{}", 16)
    assert _raw(plain) == [4, 1, "chat", "m", True, 30_000, b"{}", 16]
    ticketed = Request(1, "chat", "m", True, 30_000, b"{}", 16, ticket=2**63 + 5)
    # the tail (ticket, max_coefficient, seal_size, seal_keys, requires) travels whole once
    # any of it is set
    assert _raw(ticketed) == [4, 1, "chat", "m", True, 30_000, b"{}", 16, 2**63 + 5, 0, 0, b"",
                              ""]
    capped = Request(1, "chat", "m", True, 30_000, b"{}", 16, max_coefficient=1500)
    assert _raw(capped) == [4, 1, "chat", "m", True, 30_000, b"{}", 16, 0, 1500, 0, b"", ""]
    training = Request(1, "fine_tune", "m", True, 30_000, b"{}", 16, requires="train")
    assert _raw(training) == [4, 1, "fine_tune", "m", True, 30_000, b"{}", 16, 0, 0, 0, b"",
                              "train"]
    for msg in (plain, ticketed, capped, training):
        assert decode(encode(msg)) == msg


def test_an_explicit_zero_ticket_is_refused() -> None:
    """One encoding per message: a tail present but all defaults is off-schema."""
    with pytest.raises(ProtocolError, match="optional tail"):
        decode(msgpack.packb([4, 1, "chat", "m", True, 0, b"{}", 0, 0, 0, 0, b"", ""]))


def test_job_reports_round_trip_and_give_usage() -> None:
    msg = JobReports((JobReport.of(9, Usage(5, 3, 2, 1)), JobReport(10, 0, 0, 0, 0)))
    assert _raw(msg) == [16, [[9, 5, 3, 2, 1], [10, 0, 0, 0, 0]]]
    back = decode(encode(msg))
    assert back == msg
    assert isinstance(back, JobReports)
    assert back.jobs[0].usage == Usage(5, 3, 2, 1)


@pytest.mark.parametrize("jobs", [
    [[1, 2, 3, 4]],  # short
    [[1, 2, 3, 4, 5, 6]],  # long
    [[1, 2, -3, 0, 0]],  # negative
    [[1, 2, True, 0, 0]],  # bool for int
    [{"ticket": 1}],  # a map
    "jobs",  # not a list
    [[0, 0, 0, 0, 0]] * 4097,  # more than a frame's list limit
])
def test_malformed_job_reports_are_refused(jobs: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(msgpack.packb([16, jobs]))


def test_contradictory_counts_break_the_protocol_when_read() -> None:
    """Cached tokens above the prompt decode (the schema checks types) but never become a
    Usage: the same one rule as End and Error."""
    report = decode(msgpack.packb([16, [[1, 2, 0, 3, 0]]]))
    assert isinstance(report, JobReports)
    with pytest.raises(ProtocolError, match="JobReport"):
        _ = report.jobs[0].usage
