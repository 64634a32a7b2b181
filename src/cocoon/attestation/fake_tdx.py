"""Simulated TDX: quotes in the real v4 byte layout, signed by a local test CA.

A :class:`FakeTdxAuthority` holds a test root CA (``cocoon fake SGX Root CA``), a PCK leaf
certificate it issued (ECDSA P-256) and a fresh attestation key. :meth:`make_quote` builds a
byte-exact quote v4: header, TD report 1.0 body, quote signature under the attestation key,
a QE report whose reportdata is SHA-256(attestation key || QE auth data) || 0^32 signed by the
PCK key, and the PEM chain (leaf, root) as certification data type 5 inside type 6. Such
quotes verify with the very same :func:`~cocoon.attestation.tdx.verify_quote` as real ones,
under :class:`FakeTdxVerifier` (roots = the fake root, tier ``fake-tdx``); they never verify
under the Intel-pinned :class:`~cocoon.attestation.tdx.TdxVerifier` (rule ``pck_chain``).

Default measurements come from an image name (:func:`fake_measurements`): register ``R`` is
SHA-384(``"cocoon-fake-tdx:" + image + ":" + R``) for R in mrtd, rtmr0..3, mrconfigid,
mrowner, mrownerconfig; td_attributes are zero (not debug). The image hash of a fake TD is
thus a stable function of the image name.

Key files written by :meth:`FakeTdxAuthority.save` (``root_key.pem``, ``pck_key.pem``) are
mode 0600 and :meth:`FakeTdxAuthority.load` refuses them otherwise.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cocoon.attestation.evidence import Evidence, EvidenceKind, Measurements, Tier
from cocoon.attestation.tdx import Collateral, TdxVerifier
from cocoon.errors import AttestationError

__all__ = [
    "FAKE_QE_VENDOR_ID",
    "FakeTdxAuthority",
    "FakeTdxProvider",
    "FakeTdxVerifier",
    "fake_measurements",
]

FAKE_QE_VENDOR_ID: Final = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
_ROOT_CN: Final = "cocoon fake SGX Root CA"
_PCK_CN: Final = "cocoon fake SGX PCK Certificate"
_FILES: Final = ("root_key.pem", "root_cert.pem", "pck_key.pem", "pck_cert.pem")


def fake_measurements(image: str = "cocoon") -> Measurements:
    """Deterministic measurements for a fake TD running ``image`` (see module docstring)."""

    def reg(name: str) -> bytes:
        return hashlib.sha384(f"cocoon-fake-tdx:{image}:{name}".encode()).digest()

    return Measurements(
        mrtd=reg("mrtd"), rtmr0=reg("rtmr0"), rtmr1=reg("rtmr1"), rtmr2=reg("rtmr2"),
        rtmr3=reg("rtmr3"), mrconfigid=reg("mrconfigid"), mrowner=reg("mrowner"),
        mrownerconfig=reg("mrownerconfig"), td_attributes=bytes(8))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cocoon test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _rs(sig_der: bytes) -> bytes:
    r, s = decode_dss_signature(sig_der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class FakeTdxAuthority:
    """A test CA, a PCK leaf it certified, and a fresh attestation key (per instance)."""

    def __init__(self, root_key: ec.EllipticCurvePrivateKey, root_cert: x509.Certificate,
                 pck_key: ec.EllipticCurvePrivateKey, pck_cert: x509.Certificate) -> None:
        self.root_key = root_key
        self.root_cert = root_cert
        self.pck_key = pck_key
        self.pck_cert = pck_cert
        self.attestation_key = ec.generate_private_key(ec.SECP256R1())
        self.qe_auth_data = hashlib.sha256(b"cocoon fake QE auth data").digest()

    @classmethod
    def generate(cls, at: datetime, *, days: int = 3650) -> FakeTdxAuthority:
        """A new CA and PCK certificate valid from ``at`` - 1 day for ``days`` days."""
        start, end = at - timedelta(days=1), at + timedelta(days=days)
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = (
            x509.CertificateBuilder().subject_name(_name(_ROOT_CN)).issuer_name(_name(_ROOT_CN))
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(root_key, hashes.SHA256()))
        pck_key = ec.generate_private_key(ec.SECP256R1())
        pck = (
            x509.CertificateBuilder().subject_name(_name(_PCK_CN)).issuer_name(root.subject)
            .public_key(pck_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False,
                                         False), critical=True)
            .sign(root_key, hashes.SHA256()))
        return cls(root_key, root, pck_key, pck)

    def save(self, directory: Path) -> None:
        """Write keys (mode 0600) and certificates to ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        blobs = (_pem_key(self.root_key), self.root_cert.public_bytes(pem),
                 _pem_key(self.pck_key), self.pck_cert.public_bytes(pem))
        for fname, blob in zip(_FILES, blobs, strict=True):
            path = directory / fname
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.chmod(path, 0o600)

    @classmethod
    def load(cls, directory: Path) -> FakeTdxAuthority:
        """Load what :meth:`save` wrote; key files must not be readable by others."""
        paths = [directory / f for f in _FILES]
        for p in (paths[0], paths[2]):
            mode = stat.S_IMODE(p.stat().st_mode)
            if mode & 0o077:
                raise AttestationError(f"{p} has mode {mode:04o}; key files must be 0600",
                                       rule="fake_tdx_keys")
        root_key = serialization.load_pem_private_key(paths[0].read_bytes(), None)
        pck_key = serialization.load_pem_private_key(paths[2].read_bytes(), None)
        if not isinstance(root_key, ec.EllipticCurvePrivateKey) or \
                not isinstance(pck_key, ec.EllipticCurvePrivateKey):
            raise AttestationError("fake TDX keys must be ECDSA P-256", rule="fake_tdx_keys")
        return cls(root_key, x509.load_pem_x509_certificate(paths[1].read_bytes()),
                   pck_key, x509.load_pem_x509_certificate(paths[3].read_bytes()))

    @classmethod
    def load_or_generate(cls, directory: Path, at: datetime) -> FakeTdxAuthority:
        if all((directory / f).exists() for f in _FILES):
            return cls.load(directory)
        auth = cls.generate(at)
        auth.save(directory)
        return auth

    def verifier(self, collateral: Collateral | None = None) -> FakeTdxVerifier:
        return FakeTdxVerifier([self.root_cert], collateral)

    def make_quote(self, report_data: bytes, measurements: Measurements, at: datetime) -> bytes:
        """A v4 quote for ``report_data`` (64 bytes) in the real layout."""
        if len(report_data) != 64:
            raise ValueError("report_data must be 64 bytes")
        for c in (self.root_cert, self.pck_cert):
            if not c.not_valid_before_utc <= at <= c.not_valid_after_utc:
                raise AttestationError(f"fake TDX certificate {c.subject.rfc4514_string()} "
                                       f"not valid at {at.isoformat()}", rule="cert_validity")
        m = measurements
        header = struct.pack("<HHI", 4, 2, 0x81) + bytes(4) + FAKE_QE_VENDOR_ID + bytes(20)
        body = b"".join((
            bytes(16), bytes(48), bytes(48), bytes(8), m.td_attributes, bytes(8), m.mrtd,
            m.mrconfigid, m.mrowner, m.mrownerconfig, m.rtmr0, m.rtmr1, m.rtmr2, m.rtmr3,
            report_data))
        if len(body) != 584:
            raise ValueError("measurements have wrong sizes")
        sign = ec.ECDSA(hashes.SHA256())
        signature = _rs(self.attestation_key.sign(header + body, sign))
        att_pub = self.attestation_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
        qe_reportdata = hashlib.sha256(att_pub + self.qe_auth_data).digest() + bytes(32)
        qe_report = bytes(320) + qe_reportdata
        qe_sig = _rs(self.pck_key.sign(qe_report, sign))
        pem = (self.pck_cert.public_bytes(serialization.Encoding.PEM)
               + self.root_cert.public_bytes(serialization.Encoding.PEM) + b"\0")
        cert5 = struct.pack("<HI", 5, len(pem)) + pem
        cert6_body = (qe_report + qe_sig + struct.pack("<H", len(self.qe_auth_data))
                      + self.qe_auth_data + cert5)
        sig_data = signature + att_pub + struct.pack("<HI", 6, len(cert6_body)) + cert6_body
        return header + body + struct.pack("<I", len(sig_data)) + sig_data


class FakeTdxVerifier(TdxVerifier):
    """The real quote verification, pinned to fake roots; kind and tier ``fake-tdx``."""

    kind: str = "fake-tdx"
    tier: Tier = "fake-tdx"

    def __init__(self, roots: Sequence[x509.Certificate],
                 collateral: Collateral | None = None) -> None:
        super().__init__(roots, collateral)


class FakeTdxProvider:
    """Provider of ``fake-tdx`` evidence; ``now`` is the clock (injected at the edge)."""

    name: EvidenceKind = "fake-tdx"

    def __init__(self, authority: FakeTdxAuthority, measurements: Measurements | None = None,
                 *, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.authority = authority
        self.measurements = measurements or fake_measurements()
        self.now = now

    def evidence(self, report_data: bytes) -> Evidence:
        return Evidence("fake-tdx",
                        self.authority.make_quote(report_data, self.measurements, self.now()))
