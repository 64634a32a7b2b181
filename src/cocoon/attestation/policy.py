"""Attestation policy (pure): is this verified evidence acceptable, and why (not)?

A :class:`Policy` says which tiers are accepted, which image and model hashes are allowed,
the minimum TCB status, whether debug TDs pass, and how old evidence may be.
:func:`decide` returns a :class:`Verdict` that carries every reason; :func:`enforce` raises
:class:`~cocoon.errors.PolicyRejected` naming the first failed rule.

Allow-lists come from an :class:`AllowListSource`: a config file today
(:class:`StaticAllowLists`), the on-chain root registry later, behind the same one method.

:class:`VerificationCache` remembers verified evidence per certificate for a TTL, so a
reconnecting peer is not re-verified on every handshake; the clock is passed in.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Protocol

from cocoon.attestation.evidence import Claims, Tier, VerifiedEvidence
from cocoon.errors import ConfigError, PolicyRejected

__all__ = [
    "TCB_ORDER",
    "AllowListSource",
    "AllowLists",
    "Policy",
    "StaticAllowLists",
    "Verdict",
    "VerificationCache",
    "decide",
    "enforce",
]

# Intel's TCB statuses, best first. A policy's minimum admits it and everything better.
TCB_ORDER: Final = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)


@dataclass(frozen=True, slots=True)
class AllowLists:
    """``None`` means "any"; an empty set allows nothing."""

    image_hashes: frozenset[bytes] | None = None
    model_hashes: frozenset[bytes] | None = None
    version: int = 0


class AllowListSource(Protocol):
    def allow_lists(self) -> AllowLists: ...


class StaticAllowLists:
    """Allow-lists fixed at start-up, e.g. from a TOML file::

        image_hashes = ["04b3af...", ...]   # hex SHA-256 image hashes
        model_hashes = ["..."]
    """

    def __init__(self, lists: AllowLists) -> None:
        self._lists = lists

    def allow_lists(self) -> AllowLists:
        return self._lists

    @classmethod
    def from_file(cls, path: str) -> StaticAllowLists:
        try:
            with Path(path).open("rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"allow-list file {path}: {exc}") from None

        def hashes(key: str) -> frozenset[bytes] | None:
            if key not in data:
                return None
            values = data[key]
            if not isinstance(values, list):
                raise ConfigError(f"{path}: {key} must be a list of hex strings")
            out = set()
            for v in values:
                try:
                    h = bytes.fromhex(v) if isinstance(v, str) else b""
                except ValueError:
                    h = b""
                if len(h) != 32:
                    raise ConfigError(f"{path}: {key} entry {v!r} is not a 64-hex-digit hash")
                out.add(h)
            return frozenset(out)

        unknown = set(data) - {"image_hashes", "model_hashes"}
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(AllowLists(hashes("image_hashes"), hashes("model_hashes")))


@dataclass(frozen=True, slots=True)
class Policy:
    accepted_tiers: frozenset[Tier] = frozenset({"tdx"})
    min_tcb_status: str = "UpToDate"
    require_tcb_status: bool = False  # True: evidence without collateral-based status fails
    allow_debug: bool = False
    max_evidence_age: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if self.min_tcb_status not in TCB_ORDER:
            raise ConfigError(f"min_tcb_status must be one of {', '.join(TCB_ORDER)}")


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    tier: Tier
    image_hash: bytes | None
    reasons: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (rule, why) failed

    def explain(self) -> str:
        if self.accepted:
            return f"accepted ({self.tier})"
        return "; ".join(f"{rule}: {why}" for rule, why in self.reasons)


def decide(policy: Policy, lists: AllowLists, verified: VerifiedEvidence, claims: Claims,
           *, issued_at: datetime, now: datetime) -> Verdict:
    """Apply every rule; the verdict lists each one that failed, in a fixed order."""
    failed: list[tuple[str, str]] = []
    if verified.tier not in policy.accepted_tiers:
        failed.append(("tier", f"tier {verified.tier} is not accepted (accepted: "
                               f"{', '.join(sorted(policy.accepted_tiers))})"))
    m = verified.measurements
    if m is not None and m.debug and not policy.allow_debug:
        failed.append(("debug", "the TD runs in debug mode"))
    image = verified.image_hash
    images = lists.image_hashes
    if images is not None and verified.tier != "unattested" and (
        image is None or image not in images
    ):
        shown = image.hex() if image else "none"
        failed.append(("image_allowed", f"image hash {shown} is not allow-listed"))
    models = lists.model_hashes
    if models is not None and claims.role == "worker" and claims.model_hash not in models:
        shown = claims.model_hash.hex() or "none"
        failed.append(("model_allowed", f"model hash {shown} is not allow-listed"))
    status = verified.tcb_status
    if status is None:
        if policy.require_tcb_status and verified.tier == "tdx":
            failed.append(("tcb_status", "no TCB status: collateral required"))
    elif status not in TCB_ORDER or (
        TCB_ORDER.index(status) > TCB_ORDER.index(policy.min_tcb_status)
    ):
        failed.append(("tcb_status", f"TCB status {status} is below {policy.min_tcb_status}"))
    age = now - issued_at
    if age > policy.max_evidence_age:
        failed.append(("evidence_age", f"evidence is {age} old (limit "
                                       f"{policy.max_evidence_age})"))
    if age < -timedelta(minutes=5):
        failed.append(("evidence_age", "evidence is dated in the future"))
    return Verdict(not failed, verified.tier, image, tuple(failed))


def enforce(verdict: Verdict) -> None:
    """Raise PolicyRejected for the first failed rule (all of them in the message)."""
    if not verdict.accepted:
        raise PolicyRejected(verdict.explain(), rule=verdict.reasons[0][0])


class VerificationCache:
    """Verified evidence per certificate (by SHA-256 of its DER), for ``ttl``."""

    def __init__(self, ttl: timedelta = timedelta(minutes=10), max_entries: int = 4096) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[bytes, tuple[datetime, VerifiedEvidence]] = OrderedDict()

    @staticmethod
    def key(cert_der: bytes) -> bytes:
        return hashlib.sha256(cert_der).digest()

    def get(self, cert_der: bytes, now: datetime) -> VerifiedEvidence | None:
        k = self.key(cert_der)
        hit = self._entries.get(k)
        if hit is None:
            return None
        expires, verified = hit
        if now >= expires:
            del self._entries[k]
            return None
        self._entries.move_to_end(k)
        return verified

    def put(self, cert_der: bytes, verified: VerifiedEvidence, now: datetime) -> None:
        self._entries[self.key(cert_der)] = (now + self._ttl, verified)
        self._entries.move_to_end(self.key(cert_der))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
