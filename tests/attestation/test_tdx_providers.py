"""Providers: configfs-tsm emulated in a directory, the unavailable host, and none."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cocoon.attestation.evidence import Evidence
from cocoon.attestation.fake_tdx import FakeTdxAuthority, fake_measurements
from cocoon.attestation.providers import NoneProvider, TdxProvider
from cocoon.errors import AttestationError

AT = datetime(2026, 3, 1, tzinfo=UTC)


class EmulatedTsm(TdxProvider):
    """configfs-tsm in a plain directory: outblob is made from inblob by a fake TDX."""

    def __init__(self, base: Path, authority: FakeTdxAuthority) -> None:
        super().__init__(base)
        self.authority = authority
        self.seen: list[Path] = []

    def _read_outblob(self, entry: Path) -> bytes:
        self.seen.append(entry)
        assert entry.parent == self.base and entry.is_dir()
        report_data = (entry / "inblob").read_bytes()
        quote = self.authority.make_quote(report_data, fake_measurements(), AT)
        (entry / "outblob").write_bytes(quote)
        return super()._read_outblob(entry)

    def _remove(self, entry: Path) -> None:
        shutil.rmtree(entry)  # the kernel drops the attribute files on rmdir


def test_tdx_provider_against_emulated_configfs(tmp_path: Path) -> None:
    authority = FakeTdxAuthority.generate(AT)
    p = EmulatedTsm(tmp_path, authority)
    assert p.name == "tdx"
    rd = b"\x42" * 64
    ev = p.evidence(rd)
    assert ev.kind == "tdx"
    v = authority.verifier().verify(Evidence("fake-tdx", ev.quote), rd, AT)
    assert v.report_data == rd
    assert len(p.seen) == 1 and not p.seen[0].exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        p.evidence(b"short")


def test_tdx_provider_failure_cleans_up(tmp_path: Path) -> None:
    p = TdxProvider(tmp_path)  # plain directory: no outblob appears
    with pytest.raises(AttestationError) as e:
        p.evidence(bytes(64))
    assert e.value.rule == "tdx_unavailable"


def test_unavailable_host(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "tsm" / "report"
    with pytest.raises(AttestationError) as e:
        TdxProvider(missing)
    assert e.value.rule == "tdx_unavailable"
    assert "configfs-tsm not found at" in str(e.value)
    assert "--attestation fake or none" in str(e.value)


def test_none_provider() -> None:
    p = NoneProvider()
    assert p.name == "none"
    assert p.evidence(bytes(64)) == Evidence("none")
