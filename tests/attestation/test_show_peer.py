"""``cocoon attest show-peer HOST:PORT`` against a real proxy (LocalNetwork, fake TDX):
what it shows, the verdict under the policy its flags describe, and its exit status
(0 accepted, 1 refused by that policy, 2 no connection / evidence not verified)."""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cocoon.attestation.fake_tdx import FakeTdxAuthority, fake_measurements
from cocoon.commands.attest import add_attest_arguments, run_attest
from cocoon.commands.up import LocalNetwork, Role

pytestmark = pytest.mark.e2e

FAKE = fake_measurements("cocoon")
FAKE_IMAGE_HASH = FAKE.image_hash.hex()

DEBUG_TD_SCRIPT = """\
import dataclasses, sys
import cocoon.attestation.fake_tdx as fake_tdx
_measurements = fake_tdx.fake_measurements
def _debug_td(image="cocoon"):
    return dataclasses.replace(_measurements(image), td_attributes=bytes([1]) + bytes(7))
fake_tdx.fake_measurements = _debug_td
from cocoon.cli import main
sys.exit(main(sys.argv[1:]))
"""


def show_peer(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="cocoon")
    add_attest_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["attest", "show-peer", *argv])
    assert args.func is run_attest
    out = io.StringIO()
    rc = args.func(args, out)
    return rc, out.getvalue()


def show_peer_json(*argv: str) -> tuple[int, dict[str, Any]]:
    rc, out = show_peer(*argv, "--json")
    return rc, json.loads(out)


@pytest.fixture(scope="module")
def net(start_network: Any) -> LocalNetwork:
    return start_network(engine="fake", attestation="fake")


@pytest.fixture(scope="module")
def addr(net: LocalNetwork) -> str:
    assert net.proxy is not None
    return f"127.0.0.1:{net.proxy.info['listen_port']}"


@pytest.fixture(scope="module")
def fake_dir(net: LocalNetwork) -> str:
    d = net.data_dir / "fake-tdx"
    assert (d / "root_cert.pem").exists()
    return str(d)


def test_accepted_with_fake_dir_and_fake_tier(addr: str, fake_dir: str) -> None:
    rc, doc = show_peer_json(addr, "--fake-dir", fake_dir, "--accept", "fake-tdx")
    assert rc == 0, doc
    assert doc["connected"] and doc["verified"] and doc["error"] is None
    assert doc["claims"]["role"] == "proxy"
    assert doc["evidence_kind"] == "fake-tdx" and doc["tier"] == "fake-tdx"
    assert doc["image_hash"] == FAKE_IMAGE_HASH
    m = doc["measurements"]
    assert m["mrtd"] == FAKE.mrtd.hex() and m["rtmr3"] == FAKE.rtmr3.hex()
    assert m["mrconfigid"] == FAKE.mrconfigid.hex() and m["debug"] is False
    assert m["image_hash"] == FAKE_IMAGE_HASH
    names = [s["name"] for s in doc["steps"]]
    for step in ("cert_signature", "claims_key", "quote_signature", "qe_report_signature",
                 "pck_chain", "report_data_binding", "role"):
        assert step in names
    assert all(s["ok"] for s in doc["steps"])
    assert doc["tls"]["version"] == "TLSv1.3"
    assert doc["verdict"] == {"accepted": True, "tier": "fake-tdx", "reasons": [],
                              "explain": "accepted (fake-tdx)"}
    assert doc["policy"]["accept"] == ["fake-tdx"]


def test_accepted_text(addr: str, fake_dir: str) -> None:
    rc, out = show_peer(addr, "--fake-dir", fake_dir, "--accept", "tdx,fake-tdx")
    assert rc == 0, out
    assert "ACCEPTED" in out and "REJECTED" not in out
    assert FAKE_IMAGE_HASH in out and FAKE.rtmr0.hex() in out
    assert "✓ pck_chain" in out and "role             proxy" in out


def test_refused_by_the_default_tdx_policy(addr: str, fake_dir: str) -> None:
    rc, doc = show_peer_json(addr, "--fake-dir", fake_dir)
    assert rc == 1, doc
    assert doc["verified"] and doc["tier"] == "fake-tdx"
    assert doc["policy"]["accept"] == ["tdx"]
    v = doc["verdict"]
    assert not v["accepted"]
    assert [r["rule"] for r in v["reasons"]] == ["tier"]
    assert "tier fake-tdx is not accepted" in v["explain"]
    rc, out = show_peer(addr, "--fake-dir", fake_dir)
    assert rc == 1 and "REJECTED" in out and "tier" in out


def test_allow_list(addr: str, fake_dir: str, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text(f'image_hashes = ["{fake_measurements("evil").image_hash.hex()}"]\n')
    rc, doc = show_peer_json(addr, "--fake-dir", fake_dir, "--accept", "fake-tdx",
                             "--allow-list", str(other))
    assert rc == 1
    assert [r["rule"] for r in doc["verdict"]["reasons"]] == ["image_allowed"]
    ours = tmp_path / "ours.toml"
    ours.write_text(f'image_hashes = ["{FAKE_IMAGE_HASH}"]\n')
    rc, doc = show_peer_json(addr, "--fake-dir", fake_dir, "--accept", "fake-tdx",
                             "--allow-list", str(ours))
    assert rc == 0, doc["verdict"]


def test_unverifiable_without_fake_dir(addr: str) -> None:
    rc, doc = show_peer_json(addr)
    assert rc == 2
    assert doc["connected"] and not doc["verified"] and doc["verdict"] is None
    assert doc["error"]["rule"] == "evidence_kind"
    assert doc["claims"]["role"] == "proxy" and doc["evidence_kind"] == "fake-tdx"
    assert doc["measurements"]["mrtd"] == FAKE.mrtd.hex()  # shown, unverified
    assert doc["steps"][-1]["name"] == "evidence_kind" and not doc["steps"][-1]["ok"]
    rc, out = show_peer(addr)
    assert rc == 2 and "NOT VERIFIED (evidence_kind)" in out and "UNVERIFIED" in out


def test_other_authority_fails_pck_chain(addr: str, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    other = tmp_path / "other-fake-tdx"
    FakeTdxAuthority.load_or_generate(other, datetime.now(UTC))
    rc, doc = show_peer_json(addr, "--fake-dir", str(other), "--accept", "fake-tdx")
    assert rc == 2
    assert doc["error"]["rule"] == "pck_chain"
    steps = {s["name"]: s["ok"] for s in doc["steps"]}
    assert steps["quote_signature"] is True and steps["pck_chain"] is False


def test_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when we connect
    rc, doc = show_peer_json(f"127.0.0.1:{port}", "--timeout", "5")
    assert rc == 2
    assert not doc["connected"] and doc["verdict"] is None
    assert doc["error"]["rule"] == "connect"
    rc, out = show_peer(f"127.0.0.1:{port}")
    assert rc == 2 and "NOT CONNECTED (connect)" in out


@pytest.mark.parametrize("argv", [["not-an-address"], ["127.0.0.1:1", "--accept", "sgx"],
                                  ["127.0.0.1:1", "--fake-dir", "/nonexistent/fake"],
                                  ["127.0.0.1:1", "--allow-list", "/nonexistent.toml"]])
def test_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = show_peer(*argv)
    assert rc == 2 and out == ""
    assert "error:" in capsys.readouterr().err


def test_command_line(addr: str, fake_dir: str) -> None:
    cmd = [sys.executable, "-m", "cocoon", "attest", "show-peer", addr, "--fake-dir", fake_dir]
    ok = subprocess.run([*cmd, "--accept", "fake-tdx"], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ACCEPTED" in ok.stdout
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "tier" in refused.stdout


# --- a debug TD ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def debug_proxy(fake_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A proxy whose fake TD has TDATTRIBUTES.DEBUG set (fake_measurements patched in a
    wrapper script: the config has no knob for it); yields its listen address."""
    d = tmp_path_factory.mktemp("debug-proxy")
    (d / "debug_td.py").write_text(DEBUG_TD_SCRIPT)
    role = Role("debug-proxy", d / "proxy.log", d / "proxy.ready")
    with role.log_path.open("ab") as log:
        role.proc = subprocess.Popen(
            [sys.executable, str(d / "debug_td.py"), "proxy", "--listen", "127.0.0.1:0",
             "--http", "127.0.0.1:0", "--set", "attestation.mode=fake",
             "--set", f"attestation.fake_dir={fake_dir}", "--ready-file", str(role.ready_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    try:
        role.wait_until(role.read_ready, "ready", time.monotonic() + 30)
        yield f"127.0.0.1:{role.info['listen_port']}"
    finally:
        role.terminate()
        role.reap(time.monotonic() + 5)


def test_debug_td_needs_allow_debug(debug_proxy: str, fake_dir: str) -> None:
    rc, doc = show_peer_json(debug_proxy, "--fake-dir", fake_dir, "--accept", "fake-tdx")
    assert rc == 1
    assert doc["measurements"]["debug"] is True
    assert doc["measurements"]["td_attributes"] == "0100000000000000"
    assert doc["image_hash"] == FAKE_IMAGE_HASH  # td_attributes are not in the image hash
    assert [r["rule"] for r in doc["verdict"]["reasons"]] == ["debug"]
    rc, doc = show_peer_json(debug_proxy, "--fake-dir", fake_dir, "--accept", "fake-tdx",
                             "--allow-debug")
    assert rc == 0, doc["verdict"]
    assert doc["policy"]["allow_debug"] is True
