"""Attestation policy: each rule can fail on its own, and the verdict says which."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cocoon.attestation.evidence import Claims, Measurements, VerifiedEvidence
from cocoon.attestation.policy import (
    TCB_ORDER,
    AllowLists,
    Policy,
    StaticAllowLists,
    VerificationCache,
    decide,
    enforce,
)
from cocoon.errors import ConfigError, PolicyRejected

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def measurements(debug: bool = False, seed: int = 1) -> Measurements:
    b = bytes([seed]) * 48
    attrs = bytes([1 if debug else 0]) + bytes(7)
    return Measurements(b, b, b, b, b, b, b, b, attrs)


def verified(tier: str = "tdx", *, debug: bool = False, tcb: str | None = None,
             seed: int = 1) -> VerifiedEvidence:
    m = None if tier == "unattested" else measurements(debug, seed)
    return VerifiedEvidence(tier, bytes(64), m, tcb)  # type: ignore[arg-type]


WORKER = Claims(b"key", "worker", "m", b"", b"\x07" * 32)


DEFAULT_POLICY = Policy()
NO_LISTS = AllowLists()


def rules(v: VerifiedEvidence, policy: Policy = DEFAULT_POLICY, lists: AllowLists = NO_LISTS,
          claims: Claims = WORKER, issued: datetime = NOW) -> list[str]:
    verdict = decide(policy, lists, v, claims, issued_at=issued, now=NOW)
    assert verdict.accepted == (not verdict.reasons)
    return [r for r, _ in verdict.reasons]


def test_accepts_good_tdx_evidence() -> None:
    v = verified()
    lists = AllowLists(frozenset({v.image_hash}), frozenset({b"\x07" * 32}))  # type: ignore[arg-type]
    verdict = decide(Policy(), lists, v, WORKER, issued_at=NOW, now=NOW)
    assert verdict.accepted and verdict.image_hash == v.image_hash
    enforce(verdict)  # does not raise


def test_tier_rule() -> None:
    assert rules(verified("fake-tdx")) == ["tier"]
    assert rules(verified("fake-tdx"), Policy(accepted_tiers=frozenset({"fake-tdx"}))) == []
    assert rules(verified("unattested")) == ["tier"]


def test_debug_rule() -> None:
    assert rules(verified(debug=True)) == ["debug"]
    assert rules(verified(debug=True), Policy(allow_debug=True)) == []


def test_image_allow_list() -> None:
    good, bad = verified(seed=1), verified(seed=2)
    lists = AllowLists(image_hashes=frozenset({good.image_hash}))  # type: ignore[arg-type]
    assert rules(good, lists=lists) == []
    assert rules(bad, lists=lists) == ["image_allowed"]
    assert rules(bad, lists=AllowLists(image_hashes=frozenset())) == ["image_allowed"]


def test_model_allow_list_applies_to_workers_only() -> None:
    lists = AllowLists(model_hashes=frozenset({b"\x01" * 32}))
    assert rules(verified(), lists=lists) == ["model_allowed"]
    proxy = Claims(b"key", "proxy")
    assert rules(verified(), lists=lists, claims=proxy) == []


@pytest.mark.parametrize("status", TCB_ORDER)
def test_tcb_minimum(status: str) -> None:
    policy = Policy(min_tcb_status="SWHardeningNeeded")
    ok = TCB_ORDER.index(status) <= TCB_ORDER.index("SWHardeningNeeded")
    assert rules(verified(tcb=status), policy) == ([] if ok else ["tcb_status"])


def test_tcb_required_and_unknown() -> None:
    assert rules(verified(), Policy(require_tcb_status=True)) == ["tcb_status"]
    assert rules(verified(tcb="Whatever")) == ["tcb_status"]
    with pytest.raises(ConfigError):
        Policy(min_tcb_status="Fine")


def test_evidence_age() -> None:
    old = NOW - timedelta(hours=25)
    assert rules(verified(), issued=old) == ["evidence_age"]
    assert rules(verified(), issued=NOW + timedelta(hours=1)) == ["evidence_age"]


def test_all_failures_reported_and_first_raised() -> None:
    lists = AllowLists(image_hashes=frozenset())
    verdict = decide(Policy(), lists, verified("fake-tdx", debug=True), WORKER,
                     issued_at=NOW - timedelta(days=2), now=NOW)
    assert [r for r, _ in verdict.reasons] == ["tier", "debug", "image_allowed",
                                                 "evidence_age"]
    with pytest.raises(PolicyRejected) as ei:
        enforce(verdict)
    assert ei.value.rule == "tier" and "image hash" in str(ei.value)


def test_static_allow_lists_from_file(tmp_path: Path) -> None:
    h = "ab" * 32
    p = tmp_path / "allow.toml"
    p.write_text(f'image_hashes = ["{h}"]\n')
    lists = StaticAllowLists.from_file(str(p)).allow_lists()
    assert lists.image_hashes == frozenset({bytes.fromhex(h)}) and lists.model_hashes is None
    for bad in ('image_hashes = ["zz"]\n', "image_hashes = 3\n", "other = []\n", "= x"):
        p.write_text(bad)
        with pytest.raises(ConfigError):
            StaticAllowLists.from_file(str(p))
    with pytest.raises(ConfigError):
        StaticAllowLists.from_file(str(tmp_path / "missing.toml"))


def test_cache_ttl_and_bound() -> None:
    cache = VerificationCache(ttl=timedelta(seconds=10), max_entries=2)
    v = verified()
    cache.put(b"a", v, NOW)
    assert cache.get(b"a", NOW + timedelta(seconds=9)) is v
    assert cache.get(b"a", NOW + timedelta(seconds=10)) is None
    cache.put(b"a", v, NOW)
    cache.put(b"b", v, NOW)
    cache.get(b"a", NOW)  # a is now most recent
    cache.put(b"c", v, NOW)
    assert cache.get(b"b", NOW) is None and cache.get(b"a", NOW) is v and len(cache) == 2


@given(st.sampled_from(["tdx", "fake-tdx", "unattested"]), st.booleans(),
       st.sampled_from([None, *TCB_ORDER]), st.integers(0, 48))
def test_verdict_consistent(tier: str, debug: bool, tcb: str | None, hours: int) -> None:
    """Property: accepted iff no reasons; reasons are distinct known rules."""
    v = verified(tier, debug=debug, tcb=tcb)
    verdict = decide(Policy(accepted_tiers=frozenset({"tdx", "fake-tdx"})), AllowLists(), v,
                     WORKER, issued_at=NOW - timedelta(hours=hours), now=NOW)
    names = [r for r, _ in verdict.reasons]
    assert verdict.accepted == (names == [])
    assert set(names) <= {"tier", "debug", "tcb_status", "evidence_age"}
    assert ("tier" in names) == (tier == "unattested")
    assert ("evidence_age" in names) == (hours > 24)
