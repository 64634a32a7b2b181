"""``cocoon doctor``: each check passes where the host has what is needed, and fails with
what to fix where it does not (a loose key file, a port in use, an unreachable or refused
proxy, a broken upstream, a file that is no model)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cocoon.attestation.config import AttestationConfig
from cocoon.cli import main
from cocoon.commands import doctor
from cocoon.config import ProxyConfig
from cocoon.nodes.proxy.node import ProxyNode
from lifecycle import running, unused


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["doctor", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def by_name(report: dict[str, Any], prefix: str) -> dict[str, Any]:
    [check] = [c for c in report["checks"] if c["name"].startswith(prefix)]
    return check


def test_what_cocoon_up_needs_here_passes(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "client.key").write_text("k")
    os.chmod(tmp_path / "client.key", 0o600)
    code, report = run(capsys, "--engine", "fake", "--chain", "none", "--port", "0",
                       "--data-dir", str(tmp_path))
    assert code == 0 and report["ok"]
    assert by_name(report, "python")["status"] == "ok"
    assert by_name(report, "key files")["detail"].startswith("1 in")
    assert by_name(report, "gpu")["status"] in ("ok", "warn")  # told, never needed


def test_a_key_file_others_can_read_fails_with_the_chmod_to_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "proxy-voucher.key"
    key.write_text("secret")
    os.chmod(key, 0o644)
    (tmp_path / "notes.txt").write_text("not a secret")
    os.chmod(tmp_path / "notes.txt", 0o644)
    code, report = run(capsys, "--engine", "fake", "--chain", "none", "--port", "0",
                       "--data-dir", str(tmp_path))
    assert code == 1 and not report["ok"]
    check = by_name(report, "key files")
    assert check["status"] == "fail" and "0644" in check["detail"]
    assert check["fix"] == f"chmod 600 {key}"
    assert "notes.txt" not in check["detail"]


def test_a_port_in_use_fails_naming_it(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, report = run(capsys, "--engine", "fake", "--chain", "none", "--port", str(port),
                           "--data-dir", str(tmp_path))
    assert code == 1
    check = by_name(report, f"port {port}")
    assert check["status"] == "fail" and "in use" in check["detail"]


def test_a_model_file_that_is_no_gguf_fails(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip, not a model")
    check = doctor.model_check(str(bad))
    assert check.status == "fail" and "not a GGUF" in check.detail
    assert doctor.model_check(str(tmp_path / "missing.gguf")).status == "fail"


def test_a_tdx_config_on_a_host_without_configfs_tsm_fails() -> None:
    check = doctor.tdx_check(needed=True)
    if Path("/sys/kernel/config/tsm/report").is_dir():
        assert check.status == "ok"
    else:
        assert check.status == "fail" and "configfs-tsm" in check.detail
        assert doctor.tdx_check(needed=False).status == "warn"


async def test_an_upstream_is_asked_for_its_models() -> None:
    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "smol"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        for url in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/v1"):
            ok = await doctor.upstream_check(url, 5.0, {})
            assert ok.status == "ok" and "smol" in ok.detail
        missing = await doctor.upstream_check(f"http://127.0.0.1:{port}/nothing/here", 5.0, {})
        assert missing.status == "fail" and "404" in missing.detail
    finally:
        await runner.cleanup()
    gone = await doctor.upstream_check(f"http://127.0.0.1:{port}", 5.0, {})
    assert gone.status == "fail" and gone.fix
    assert (await doctor.upstream_check("", 5.0, {})).status == "fail"


async def test_a_proxy_is_reached_and_its_attestation_checked_as_the_role_would(
        tmp_path: Path) -> None:
    fake = str(tmp_path / "fake-tdx")
    proxy = ProxyNode(ProxyConfig(listen="127.0.0.1:0", http="127.0.0.1:0",
                                  attestation=AttestationConfig(mode="fake", fake_dir=fake)))
    async with running(proxy):
        address = f"127.0.0.1:{proxy.port}"
        ok = await doctor.proxy_check(AttestationConfig(mode="fake", fake_dir=fake),
                                      "client", address, 5.0)
        assert ok.status == "ok" and "fake-tdx" in ok.detail
        refused = await doctor.proxy_check(
            AttestationConfig(mode="fake", fake_dir=fake, accept="tdx"), "client", address,
            5.0)
        assert refused.status == "fail" and "tier" in refused.detail
    closed = await doctor.proxy_check(AttestationConfig(), "client",
                                      f"127.0.0.1:{unused()}", 2.0)
    assert closed.status == "fail" and "cannot connect" in closed.detail
