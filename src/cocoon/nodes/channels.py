"""Build a node's connector and listener from its ``[attestation]`` config.

This is where the pieces meet: the provider (what this node presents: ``none``, simulated
``fake`` TDX, or real ``tdx``), the verifiers (which evidence kinds this node can check), and
the policy (which verified peers it accepts, with allow-lists from an
:class:`~cocoon.attestation.policy.AllowListSource`). Clients are apps' gateways, not TEEs:
the proxy authenticates them by their key and accepts them unattested; every other peer
must pass the policy.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cocoon.attestation.config import AttestationConfig, split_tiers
from cocoon.attestation.evidence import Claims, EvidenceVerifier, Provider, VerifiedEvidence
from cocoon.attestation.fake_tdx import FakeTdxAuthority, FakeTdxProvider, fake_measurements
from cocoon.attestation.policy import (
    AllowLists,
    AllowListSource,
    Policy,
    StaticAllowLists,
    decide,
    enforce,
)
from cocoon.attestation.providers import NoneProvider, TdxProvider
from cocoon.attestation.ratls import check_certificate, read_certificate
from cocoon.attestation.tdx import TdxVerifier, parse_collateral
from cocoon.errors import AttestationError, ConfigError, EvidenceInvalid, PolicyRejected
from cocoon.transport.streams import Connector, Listener, TcpConnector, TcpListener
from cocoon.transport.tls import Clock, TlsConnector, TlsIdentity, TlsListener, utcnow

__all__ = ["Channels", "PeerCheck", "build_channels", "describe_evidence"]

PolicyCheck = Callable[[VerifiedEvidence, Claims, x509.Certificate], None]
_CHECK_TTL: Final = timedelta(minutes=10)
_CHECK_ENTRIES: Final = 4096


class PeerCheck:
    """Checks a certificate that reached this node other than in a handshake (a worker's,
    forwarded by a proxy to a client that seals to it; a receipt's signers): the same
    verifiers and policy as the node's own connections. What a certificate's evidence
    verified to is cached (10 minutes at most, never past the certificate's end): a worker's
    certificate comes with every request routed to it. The policy is applied every time.
    AttestationError naming the failed rule."""

    def __init__(self, verifiers: dict[str, EvidenceVerifier], policy: PolicyCheck,
                 clock: Clock) -> None:
        self._verifiers = verifiers
        self._policy = policy
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[datetime, x509.Certificate, Claims,
                                              VerifiedEvidence]] = OrderedDict()
        self.refused: Counter[str] = Counter()  # certificates refused, by rule

    def __call__(self, der: bytes, expect_role: str
                 ) -> tuple[x509.Certificate, Claims, VerifiedEvidence]:
        try:
            return self._checked(der, expect_role)
        except AttestationError as exc:
            self.refused[exc.rule] += 1
            raise

    def _checked(self, der: bytes, expect_role: str
                 ) -> tuple[x509.Certificate, Claims, VerifiedEvidence]:
        now = self._clock()
        hit = self._cache.get(der)
        if hit is not None and now < hit[0]:
            _, cert, claims, verified = hit
        else:
            try:
                cert = x509.load_der_x509_certificate(der)
            except (ValueError, x509.InvalidVersion):
                raise EvidenceInvalid("not a DER certificate", rule="cert_format") from None
            verified = check_certificate(cert, verifiers=self._verifiers, at=now,
                                         expect_role=None)
            claims = read_certificate(cert)[0]
            self._cache[der] = (min(now + _CHECK_TTL, cert.not_valid_after_utc), cert, claims,
                                verified)
            while len(self._cache) > _CHECK_ENTRIES:
                self._cache.popitem(last=False)
        if claims.role != expect_role:
            raise PolicyRejected(f"the certificate's role is {claims.role[:32]!r}, expected "
                                 f"{expect_role!r}", rule="role")
        self._policy(verified, claims, cert)
        return cert, claims, verified


@dataclass
class Channels:
    connector: Connector
    listener: Listener
    own: dict[str, Any]  # what this node presents, for stats
    identity: TlsIdentity
    """This node's certificate and key: its TLS identity over RA-TLS; over plain TCP, one
    of kind ``none`` made only to carry its claims (a worker's seal key) and sign receipts."""
    check: PeerCheck
    _der: tuple[int, bytes, str] | None = None

    def refusals(self) -> Counter[str]:
        """The peers and certificates this node refused, by attestation rule: at its TLS
        handshakes (both ways) and in forwarded certificates (workers', receipts')."""
        out = Counter(self.check.refused)
        for end in (self.connector, self.listener):
            refused = getattr(end, "refused", None)
            if refused is not None:
                out.update(refused)
        return out

    def certificate_der(self) -> bytes:
        """The current certificate's DER (encoded once per renewal)."""
        return self._current()[1]

    def certificate_sha256(self) -> str:
        """The SHA-256 (hex) of :meth:`certificate_der` (computed once per renewal)."""
        return self._current()[2]

    def _current(self) -> tuple[int, bytes, str]:
        generation = self.identity.generation
        if self._der is None or self._der[0] != generation:
            der = self.identity.certificate.public_bytes(serialization.Encoding.DER)
            self._der = (generation, der, hashlib.sha256(der).hexdigest())
        return self._der


def describe_evidence(verified: VerifiedEvidence | None) -> dict[str, Any]:
    if verified is None:
        return {"tier": "none (plain TCP)", "image_hash": None}
    image = verified.image_hash
    return {"tier": verified.tier, "image_hash": image.hex() if image else None,
            "tcb_status": verified.tcb_status}


def _provider(cfg: AttestationConfig, clock: Clock) -> Provider:
    if cfg.mode == "none":
        return NoneProvider()
    if cfg.mode == "fake":
        authority = FakeTdxAuthority.load_or_generate(Path(cfg.fake_dir), clock())
        return FakeTdxProvider(authority, fake_measurements(cfg.fake_image), now=clock)
    return TdxProvider()


def _verifiers(cfg: AttestationConfig) -> dict[str, EvidenceVerifier]:
    collateral = None
    if cfg.collateral_file:
        try:
            collateral = parse_collateral(Path(cfg.collateral_file).read_bytes())
        except OSError as exc:
            raise ConfigError(f"attestation.collateral_file: {exc}") from None
    out: dict[str, EvidenceVerifier] = {"tdx": TdxVerifier(collateral=collateral)}
    # A fake-tdx verifier whenever the authority is known, even if the tier is not accepted:
    # then the policy refuses such peers with the precise rule "tier".
    if Path(cfg.fake_dir).is_dir():
        out["fake-tdx"] = FakeTdxAuthority.load(Path(cfg.fake_dir)).verifier(collateral)
    elif "fake-tdx" in split_tiers(cfg.accept):
        raise ConfigError(f"attestation.accept includes fake-tdx but the fake authority "
                          f"directory {cfg.fake_dir} does not exist")
    return out


def build_policy(cfg: AttestationConfig, lists: AllowListSource,
                 clock: Clock) -> PolicyCheck:
    policy = Policy(
        accepted_tiers=frozenset(cfg.accepted_tiers()),  # type: ignore[arg-type]
        min_tcb_status=cfg.min_tcb_status,
        require_tcb_status=cfg.require_tcb_status,
        allow_debug=cfg.allow_debug,
        max_evidence_age=timedelta(seconds=cfg.max_evidence_age_s),
    )

    def check(verified: VerifiedEvidence, claims: Claims, cert: x509.Certificate) -> None:
        if claims.role == "client":
            return  # apps' gateways run outside TEEs; their key is their identity
        enforce(decide(policy, lists.allow_lists(), verified, claims,
                       issued_at=cert.not_valid_before_utc, now=clock()))

    return check


def build_channels(cfg: AttestationConfig, *, role: str, model: str = "",
                   model_hash: bytes = b"", seal_key: bytes = b"",
                   expect_peer_role: str | None = None,
                   key: ec.EllipticCurvePrivateKey | None = None,
                   clock: Clock = utcnow, lists: AllowListSource | None = None) -> Channels:
    """The connector and listener a node of ``role`` uses, per its config; ``lists``
    (e.g. the root registry's) replaces ``attestation.allow_list_file``. ``seal_key`` (a
    worker's) goes into its claims."""
    if lists is None:
        lists = (StaticAllowLists.from_file(cfg.allow_list_file)
                 if cfg.allow_list_file else StaticAllowLists(AllowLists()))
    lifetime = timedelta(seconds=cfg.cert_lifetime_s)
    if not cfg.tls:
        identity = TlsIdentity.create(NoneProvider(), role, model, model_hash=model_hash,
                                      seal_key=seal_key, key=key, lifetime=lifetime,
                                      now=clock())
        check = PeerCheck(_verifiers(cfg) if cfg.mode != "none" else {},
                          build_policy(cfg, lists, clock), clock)
        return Channels(TcpConnector(), TcpListener(), {"tier": "none (plain TCP)"},
                        identity, check)
    provider = _provider(cfg, clock)
    verifiers = _verifiers(cfg)
    policy = build_policy(cfg, lists, clock)
    identity = TlsIdentity.create(provider, role, model, model_hash=model_hash,
                                  seal_key=seal_key, key=key, lifetime=lifetime, now=clock())
    own: dict[str, Any] = {"mode": cfg.mode, "evidence": provider.name,
                           "accepts": list(cfg.accepted_tiers())}
    if cfg.mode != "none":
        own.update(describe_evidence(verifiers.get(provider.name, verifiers["tdx"]).verify(
            identity.evidence, identity.claims.report_data(), clock())
            if provider.name in verifiers else None))
    return Channels(
        TlsConnector(identity, verifiers, policy, expect_role=expect_peer_role, clock=clock),
        TlsListener(identity, verifiers, policy, clock=clock),
        own, identity, PeerCheck(verifiers, policy, clock),
    )
