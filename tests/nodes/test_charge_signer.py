"""The client's ChargeSigner: its key file, its seqnos (strictly increasing, also across
restarts), its refusal to sign less, and its small state file."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.chain.vouchers import parse_voucher, public_key, verify_voucher
from cocoon.errors import ConfigError, PaymentError
from cocoon.ledger.errors import VoucherInvalid
from cocoon.nodes.client import payments
from cocoon.nodes.client.payments import ChargeSigner

CHAN = "0:" + "ab" * 32
OTHER_CHAN = "0:" + "cd" * 32


class Clock:
    """A controllable wall clock for the signer's millisecond seqnos."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def time_ns(self) -> int:
        return self.ms * 1_000_000


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(1_700_000_000_000)
    monkeypatch.setattr(payments, "time", SimpleNamespace(time_ns=c.time_ns))
    return c


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    return str(tmp_path / "keys" / "client-chain.key")


def state_of(key_file: str) -> Path:
    return Path(key_file + ".signed.json")


def pubkey_of(key_file: str) -> bytes:
    key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return public_key(key)


def test_creates_a_private_ed25519_key(key_file: str, clock: Clock) -> None:
    signer = ChargeSigner(key_file, CHAN)
    mode = stat.S_IMODE(Path(key_file).stat().st_mode)
    assert mode == 0o600
    assert (signer.channel, signer.seqno, signer.cumulative) == (CHAN, 0, 0)
    assert not state_of(key_file).exists()  # nothing signed yet
    pub = pubkey_of(key_file)
    assert len(pub) == 32
    # the same key is used again, not replaced
    again = ChargeSigner(key_file, CHAN)
    verify_voucher(again.sign(0), pub)


def test_refuses_a_key_file_others_can_read(key_file: str, clock: Clock) -> None:
    ChargeSigner(key_file, CHAN)
    Path(key_file).chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        ChargeSigner(key_file, CHAN)


def test_voucher_verifies_under_the_key(key_file: str, clock: Clock) -> None:
    signer = ChargeSigner(key_file, CHAN)
    voucher = signer.sign(12_345)
    assert (voucher.kind, voucher.channel, voucher.cumulative) == ("client", CHAN, 12_345)
    pub = pubkey_of(key_file)
    assert verify_voucher(voucher, pub) is voucher
    parsed = parse_voucher(voucher.body_boc())
    assert parsed == voucher
    verify_voucher(parsed, pub)
    with pytest.raises(VoucherInvalid):
        verify_voucher(parsed, public_key(b"\x01" * 32))


def test_seqno_is_the_clock_or_last_plus_one(key_file: str, clock: Clock) -> None:
    signer = ChargeSigner(key_file, CHAN)
    first = signer.sign(10)
    assert first.seqno == clock.ms  # unix milliseconds
    # same millisecond, or a clock that went backwards: still strictly increasing
    assert signer.sign(20).seqno == clock.ms + 1
    clock.ms -= 60_000
    assert signer.sign(20).seqno == first.seqno + 2
    clock.ms += 10**6
    assert signer.sign(30).seqno == clock.ms
    assert signer.seqno == clock.ms and signer.cumulative == 30


def test_seqnos_increase_without_a_fake_clock(key_file: str) -> None:
    signer = ChargeSigner(key_file, CHAN)
    seqnos = [signer.sign(n).seqno for n in range(50)]
    assert seqnos == sorted(set(seqnos))  # strictly increasing


def test_seqnos_increase_across_a_new_signer(key_file: str, clock: Clock) -> None:
    first = ChargeSigner(key_file, CHAN)
    last = [first.sign(n).seqno for n in (1, 2, 3)][-1]
    clock.ms -= 3_600_000  # restarted with a clock an hour behind
    second = ChargeSigner(key_file, CHAN)
    assert (second.seqno, second.cumulative) == (last, 3)
    voucher = second.sign(3)
    assert voucher.seqno == last + 1
    verify_voucher(voucher, pubkey_of(key_file))
    third = ChargeSigner(key_file, CHAN)
    assert third.sign(4).seqno == last + 2


def test_state_file_records_the_last_voucher(key_file: str, clock: Clock) -> None:
    voucher = ChargeSigner(key_file, CHAN).sign(77)
    assert json.loads(state_of(key_file).read_text()) == {
        "channel": CHAN, "seqno": voucher.seqno, "cumulative": 77}
    leftovers = [p.name for p in Path(key_file).parent.iterdir()]
    assert sorted(leftovers) == sorted([Path(key_file).name, state_of(key_file).name])


def test_refuses_to_sign_less(key_file: str, clock: Clock) -> None:
    signer = ChargeSigner(key_file, CHAN)
    signed = signer.sign(500)
    with pytest.raises(PaymentError, match="already signed 500"):
        signer.sign(499)
    with pytest.raises(PaymentError):
        signer.sign(-1)
    assert (signer.seqno, signer.cumulative) == (signed.seqno, 500)  # unchanged
    assert json.loads(state_of(key_file).read_text())["seqno"] == signed.seqno
    assert signer.sign(500).cumulative == 500  # the same amount again is fine


def test_refuses_to_sign_less_after_restart(key_file: str, clock: Clock) -> None:
    ChargeSigner(key_file, CHAN).sign(900)
    with pytest.raises(PaymentError):
        ChargeSigner(key_file, CHAN).sign(899)


def test_refuses_amounts_outside_coins(key_file: str, clock: Clock) -> None:
    signer = ChargeSigner(key_file, CHAN)
    with pytest.raises(ValueError):
        signer.sign(1 << 120)
    assert (signer.seqno, signer.cumulative) == (0, 0)
    assert not state_of(key_file).exists()


def test_state_for_another_channel_is_ignored(key_file: str, clock: Clock) -> None:
    ChargeSigner(key_file, CHAN).sign(1_000)
    other = ChargeSigner(key_file, OTHER_CHAN)
    assert (other.seqno, other.cumulative) == (0, 0)
    voucher = other.sign(10)  # less than on the first channel: a different channel
    assert (voucher.channel, voucher.cumulative) == (OTHER_CHAN, 10)
    verify_voucher(voucher, pubkey_of(key_file))
    assert json.loads(state_of(key_file).read_text())["channel"] == OTHER_CHAN


@pytest.mark.parametrize(
    "content",
    [b"not json", b"", b"\xff\xfe\x00", b'{"channel": "' + CHAN.encode() + b'"}',
     b'{"channel": "' + CHAN.encode() + b'", "seqno": "x", "cumulative": 1}',
     b'{"channel": "' + CHAN.encode() + b'", "seqno": null, "cumulative": 1}',
     b'{"channel": "' + CHAN.encode() + b'", "seqno": NaN, "cumulative": 1}'],
)
def test_corrupt_state_file_is_tolerated_and_logged(
    key_file: str, clock: Clock, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    ChargeSigner(key_file, CHAN)  # creates the key
    state_of(key_file).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger=payments.__name__):
        signer = ChargeSigner(key_file, CHAN)
    assert (signer.seqno, signer.cumulative) == (0, 0)
    assert any("ignoring unreadable" in r.getMessage() and str(state_of(key_file))
               in r.getMessage() for r in caplog.records)
    voucher = signer.sign(5)
    assert voucher.seqno == clock.ms
    verify_voucher(voucher, pubkey_of(key_file))
    assert json.loads(state_of(key_file).read_text())["cumulative"] == 5  # rewritten


def test_unreadable_state_path_is_tolerated(
    key_file: str, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    ChargeSigner(key_file, CHAN)
    state_of(key_file).mkdir()  # a directory where the file should be
    with caplog.at_level(logging.WARNING, logger=payments.__name__):
        signer = ChargeSigner(key_file, CHAN)
    assert (signer.seqno, signer.cumulative) == (0, 0)
    assert any("ignoring unreadable" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "content",
    [b"[]", b'"text"', b"42",
     b'{"channel": "' + CHAN.encode() + b'", "seqno": Infinity, "cumulative": 1}'],
)
def test_state_file_of_the_wrong_shape_is_tolerated(
    key_file: str, clock: Clock, content: bytes
) -> None:
    ChargeSigner(key_file, CHAN)
    state_of(key_file).write_bytes(content)
    signer = ChargeSigner(key_file, CHAN)
    assert (signer.seqno, signer.cumulative) == (0, 0)


def test_state_file_with_an_out_of_range_seqno_does_not_wedge_the_signer(
    key_file: str, clock: Clock
) -> None:
    ChargeSigner(key_file, CHAN)
    state_of(key_file).write_text(json.dumps({"channel": CHAN, "seqno": 2**64,
                                              "cumulative": 1}))
    ChargeSigner(key_file, CHAN).sign(2)
